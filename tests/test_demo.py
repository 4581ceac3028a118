"""`mailowl demo --once`: every demo mail ends as narrated; the generated Word document is a real macro carrier."""

from __future__ import annotations

import email
import json
import mailbox
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from email.policy import default
from pathlib import Path
from typing import Any

import magic
import pytest
from oletools.olevba import VBA_Parser

from mailowl.demo.office import MACRO, word_document_with_macro

from .server import free_port

EXPECTED = {
    # key: (final state, deciding rule of its attachment, words of the reason)
    "downloader": ("bounced", "expressions", "classified the sample as Result.bad"),
    "eicar": ("bounced", "yara", "EICAR_test_file"),
    "macro": ("bounced", "office_macro", "Office macro"),
    "pdf": ("delivered", "final_rule", "recognizable malicious behaviour"),
    "zip": ("bounced", "archive", "member 'cat.png.bat'"),
    "forwarded": ("bounced", "known", "classified the sample as Result.bad"),
    "inline": ("delivered", "expressions", "Result.ignored"),
    "plain": ("delivered", None, None),
}


def run_demo(directory: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mailowl.cli", "demo", "--once", "--dir", str(directory),
                           "--port", str(free_port()), *extra], capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


@pytest.fixture(params=["smtp", "postfix"])
def ingress(request: pytest.FixtureRequest) -> Iterator[tuple[Path, list[str]]]:
    """mailowl's own SMTP ingress, or a private real Postfix with mailowl's milter (as root, which the tests
    are: Postfix's daemons must reach the folder, so it is not pytest's private one)."""
    top = Path(tempfile.mkdtemp(prefix="mailowl-demo-test-"))
    top.chmod(0o755)
    try:
        yield top, ["--postfix"] if request.param == "postfix" else []
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_demo_mails_end_as_narrated(ingress: tuple[Path, list[str]]) -> None:
    tmp_path, extra = ingress
    done, wall = run_demo(tmp_path / "demo", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    story = json.loads((tmp_path / "demo" / "demo.json").read_text())
    mails: dict[str, Any] = {m["key"]: m for m in story["mails"]}
    assert set(mails) == set(EXPECTED)
    out = " ".join(done.stdout.split())  # the narration, without the terminal's line breaks
    for key, (state, rule, reason) in EXPECTED.items():
        mail = mails[key]
        assert mail["state"] == state, mail
        for reply, support_id in zip(mail["replies"], mail["support_ids"], strict=True):
            # Postfix's "250 Ok: queued as ..." names no support id: the delivered mail's header has it
            assert f"(support-id: {support_id})" in reply or (extra and reply.startswith("250 "))
            assert support_id in out
        if rule is None:
            assert mail["parts"] == [] and len(mail["replies"]) == 1
            continue
        part = mail["parts"][0]
        assert part["rule"] == rule and reason in part["reason"], part
        assert f"by rule {rule}" in out
        if key == "forwarded":  # its attachment was judged an earlier mail: answered at once, from the cache
            assert len(mail["replies"]) == 1 and mail["replies"][0].startswith("554 5.7.1")
        else:  # a new attachment: deferred while it is analysed, then the retry is answered from the cache
            assert mail["replies"][0].startswith("451 4.7.1") and len(mail["replies"]) >= 2
            assert "retry 1 ←" in out
        final = mail["replies"][-1]
        assert final.startswith("554 5.7.1 Message rejected") if state == "bounced" else final.startswith("250 2.0.0")

    # the Maildir holds the delivered mails only, each with mailowl's header
    delivered = [email.message_from_bytes(m.as_bytes(), policy=default)
                 for m in mailbox.Maildir(tmp_path / "demo" / "Maildir", create=False)]
    assert sorted(str(m["Subject"]) for m in delivered) == ["Lunch?", "Our new logo", "Quarterly report"]
    for delivered_mail in delivered:
        result = str(delivered_mail["X-Mailowl-Result"])
        assert result.split(";")[0] in ("unknown", "ignored", "clean") and "support-id=mo-" in result
        assert result.partition("support-id=")[2] in [m["support_ids"][-1] for m in mails.values()]
        if extra:  # relayed by Postfix after its milter, mailowl, let it through
            assert "by postfix.demo (Postfix)" in str(delivered_mail["Received"])
    # the verdict log has a line for every decision, deferred ones included
    log = (tmp_path / "demo" / "verdicts.log").read_text()
    for mail in mails.values():
        for support_id in mail["support_ids"]:
            assert f'support-id="{support_id}"' in log
    assert log.count('action="Rejected"') == 5 and log.count('action="Deferred"') >= 6
    # everything went under the one directory; the run took no longer than the wall clock says it did
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"Maildir", "data", "demo.json", "ruleset.toml",
                                                              "verdicts.log", "yara", *(["postfix"] if extra else [])}
    assert {p.name for p in tmp_path.iterdir()} == {"demo"}
    assert 0 < story["seconds"] <= wall and f"Done in {story['seconds']:.1f} s" in out
    assert "Where to look" in out and story["web"] in out


def test_postfix_that_cannot_reach_the_folder_is_refused_with_the_reason(tmp_path: Path) -> None:
    hidden = Path(tempfile.mkdtemp(prefix="mailowl-demo-test-"))  # 0700: Postfix's daemons cannot enter
    try:
        done, _ = run_demo(hidden / "inner" / "demo", "--postfix")
        assert done.returncode == 2 and "cannot enter" in done.stderr and "Traceback" not in done.stderr
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def test_the_generated_word_document_carries_an_autoopen_macro() -> None:
    document = word_document_with_macro()
    assert magic.from_buffer(document, mime=True) == "application/msword"
    parser = VBA_Parser("invoice.doc", data=document)
    try:
        assert parser.detect_vba_macros()
        found = [(stream, source) for _, stream, _, source in parser.extract_all_macros()]
        assert found == [("Macros/VBA/NewMacros", MACRO)]
        assert ("AutoExec", "AutoOpen") in [(kind, keyword) for kind, keyword, _ in parser.analyze_macros()]
    finally:
        parser.close()
    other = word_document_with_macro('Attribute VB_Name = "NewMacros"\r\nSub Document_Close()\r\nEnd Sub\r\n')
    parser = VBA_Parser("other.doc", data=other)
    try:
        assert "Document_Close" in parser.extract_all_macros()[0][3]
    finally:
        parser.close()
