"""PeekabooAV 2.1 and mailowl, both talking to the Cortex stand-in, with the same ruleset.conf and the same
analyzers.conf: the verdicts must agree, including Cortex jobs that fail, are deleted or send malformed
reports, and a hash analyzer (VirusTotal) next to a file analyzer (FileInfo). The expressions read only
attributes PeekabooAV 2.1 has (not the taxonomies' worst ``level`` mailowl adds)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cortex_server import CortexStandIn, Job, fileinfo, running
from tests.server import Process, Server, free_port
from tests.test_differential import PEEKABOO, peekaboo_with, verdict_v1

TOKEN = "differential-key"

RULESET = """\
[rules]
rule.1 : expressions
rule.2 : final_rule

[expressions]
expression.1 : sample.file_extension == 'txt' -> ignore
expression.2 : 'evil.example' in cortexreport.FileInfoReport.domain_artifacts -> bad
expression.3 : cortexreport.FileInfoReport.sha256sum != sample.sha256sum -> bad
expression.4 : cortexreport.FileInfoReport.md5sum != '' and sample.file_extension == 'ok' -> good
expression.5 : sample.file_extension == 'vt' and cortexreport.VirusTotalQueryReport.n_of_all > 7 -> bad
expression.6 : sample.file_extension == 'vt' -> good
"""


def report(job: Job) -> dict[str, Any]:
    if job.analyzer == "VirusTotal_GetReport_3_0":  # n of 70 by the hash: some bad, some good
        n = int((job.data or "0")[0], 16)
        return {"summary": {"taxonomies": [{"level": "malicious" if n > 7 else "safe", "namespace": "VT",
                                            "predicate": "GetReport", "value": f"{n}/70"}]},
                "full": {"response_code": 1, "resource": job.data, "verbose_msg": "Scan finished"},
                "success": True, "artifacts": [], "operations": []}
    if b"MALFORMED" in job.content:
        return {"summary": {"taxonomies": [{"level": "purple", "namespace": "FileInfo"}]}, "full": {}}
    if b"OTHERHASH" in job.content:  # FileInfo saw other bytes than were sent
        raw = fileinfo(job)
        raw["full"]["results"][0]["results"][0]["submodule_section_content"]["sha256"] = "0" * 64
        return raw
    raw = fileinfo(job)
    if b"EVIL" in job.content:
        raw["artifacts"].append({"dataType": "domain", "data": "evil.example"})
    return raw


def final(job: Job) -> str:
    return "Failure" if b"FAILJOB" in job.content else "Deleted" if b"DELJOB" in job.content else "Success"


def corpus() -> list[tuple[str, bytes, str]]:
    files = [
        ("notes.txt", b"EVIL but a text file, decided before Cortex", "text/plain"),
        ("evil.bin", b"EVIL payload", "application/octet-stream"),
        ("safe.ok", b"SAFE payload", "application/octet-stream"),
        ("plain.bin", b"nothing special", "application/octet-stream"),
        ("other.bin", b"OTHERHASH", "application/octet-stream"),
        ("failure.bin", b"FAILJOB", "application/octet-stream"),
        ("deleted.bin", b"DELJOB", "application/octet-stream"),
        ("malformed.bin", b"MALFORMED", "application/octet-stream"),
        ("Invoice 2024.pdf", b"%PDF-1.4 EVIL", "application/pdf"),
    ]
    # hash analyzer: contents whose sha256 starts high (bad) and low (good)
    for i in range(200):
        content = b"vt sample %d" % i
        first = int(hashlib.sha256(content).hexdigest()[0], 16)
        if first > 7 and not any(n.startswith("high") for n, _, _ in files):
            files.append(("high.vt", content, "application/octet-stream"))
        if first <= 7 and not any(n.startswith("low") for n, _, _ in files):
            files.append(("low.vt", content, "application/octet-stream"))
    return files


def mailowl(tmp: Path, ruleset: Path, analyzers: Path) -> Process:
    """``mailowl serve --ruleset ruleset.conf --analyzers analyzers.conf``"""
    port = free_port()
    (tmp / "mailowl.toml").write_text("")
    args = [sys.executable, "-m", "mailowl.cli", "serve", "--config", str(tmp / "mailowl.toml"), "--listen",
            f"127.0.0.1:{port}", "--data-dir", str(tmp / "data"), "--ruleset", str(ruleset), "--analyzers",
            str(analyzers)]
    env = {**os.environ, "MAILOWL_MILTER_LISTEN": f"127.0.0.1:{free_port()}"}
    env = {k: v for k, v in env.items() if not k.startswith("MAILOWL_") or k == "MAILOWL_MILTER_LISTEN"}
    return Process(tmp, args, port, "/healthz", env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, CortexStandIn]]:
    assert PEEKABOO.exists(), "PeekabooAV 2.1 is not installed in .venv-peekaboo (scripts/bootstrap --test)"
    with running(token=TOKEN, delay=0.3, report=report, final_for=final) as cortex:
        shared = tmp_path_factory.mktemp("shared")
        ruleset, analyzers = shared / "ruleset.conf", shared / "analyzers.conf"
        ruleset.write_text(RULESET)
        analyzers.write_text(f"[cortex]\nurl : {cortex.url}\napi_token : {TOKEN}\npoll_interval : 1\n"
                             "tlp : amber\nsubmit_original_filename : yes\nmaximum_job_age : 120\n")
        theirs = peekaboo_with(tmp_path_factory.mktemp("peekaboo"), ruleset, analyzers)
        try:
            ours = mailowl(tmp_path_factory.mktemp("mailowl"), ruleset, analyzers)
            try:
                yield theirs.client, ours.client, cortex
            finally:
                ours.stop()
        finally:
            theirs.stop()


def test_same_verdicts_as_peekaboo_with_cortex(setup: tuple[Server, Server, CortexStandIn]) -> None:
    theirs_api, owl, cortex = setup
    files = corpus()
    assert any(n == "high.vt" for n, _, _ in files) and any(n == "low.vt" for n, _, _ in files)
    theirs = {name: verdict_v1(theirs_api, name, content, ctype, None) for name, content, ctype in files}
    submitted_by_peekaboo = len(cortex.submissions())
    ours = {name: verdict_v1(owl, name, content, ctype, None) for name, content, ctype in files}
    differing = {n: (theirs[n], ours[n]) for n in theirs if theirs[n] != ours[n]}
    assert not differing, f"(peekaboo, mailowl) differ: {json.dumps(differing)}"
    assert {"bad", "good", "unknown", "failed", "ignored"} <= set(ours.values()), ours
    # the same Cortex jobs: one per sample and analyzer, the text file never submitted
    assert len(cortex.submissions()) == 2 * submitted_by_peekaboo
    assert all(job.filename != "notes.txt" for job in cortex.submissions())
