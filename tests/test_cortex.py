"""Cortex: configuration (analyzers.conf, [cortex]), the client against the stand-in, report attributes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mailowl.analysis import cortex as cortex_module
from mailowl.analysis.cortex import (
    AnalyzerReport,
    CortexClient,
    CortexError,
    CortexSettings,
    Malformed,
    validate,
)
from mailowl.analyzers_conf import read_analyzers_conf
from mailowl.cli import main
from mailowl.config import ConfigError, load_config
from mailowl.rules import RulesetError
from mailowl.rules.loader import engine_for
from tests.cortex_server import Job, fileinfo, running

EXPR = "cortexreport.FileInfoReport.level == 'malicious' -> bad"


def _settings(url: str, **kw: Any) -> CortexSettings:
    return CortexSettings(url=url, api_token=kw.pop("api_token", "cortex-key"), backoff=0.01, **kw)


# configuration -------------------------------------------------------------------------------------------
def test_analyzers_conf_is_read_unchanged(tmp_path: Path) -> None:
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cortex]\nurl : http://cortex:9001\ntlp : red\napi_token : k\npoll_interval : 2\n"
                    "submit_original_filename : no\nmaximum_job_age : 60\n")
    settings = read_analyzers_conf(conf)
    config = load_config(None, environ={}, overrides={"cortex": settings})
    assert (config.cortex.url, config.cortex.tlp, config.cortex.api_token, config.cortex.poll_interval,
            config.cortex.submit_original_filename, config.cortex.maximum_job_age) == (
        "http://cortex:9001", "red", "k", 2.0, False, 60.0)


def test_analyzers_conf_defaults_enable_cortex(tmp_path: Path) -> None:
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cortex]\n")
    assert read_analyzers_conf(conf)["url"] == "http://127.0.0.1:9001"


def test_cuckoo_section_is_refused_with_a_reason(tmp_path: Path) -> None:
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cuckoo]\nurl : http://127.0.0.1:8090\n\n[cortex]\n")
    with pytest.raises(ConfigError, match=r"\[cuckoo\]: Cuckoo is not supported by mailowl"):
        read_analyzers_conf(conf)


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[cortex\] tlp"):
        load_config(None, environ={}, overrides={"cortex": {"url": "http://x:1", "tlp": "purple"}})
    with pytest.raises(ConfigError, match=r"\[cortex\] url"):
        load_config(None, environ={"MAILOWL_CORTEX_URL": "cortex:9001"})
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cortex]\nurl : http://x:1\nbogus : 1\n")
    with pytest.raises(ConfigError, match="bogus: unknown setting"):
        read_analyzers_conf(conf)


def _ruleset(tmp_path: Path, expression: str = EXPR) -> Path:
    ruleset = tmp_path / "ruleset.conf"
    ruleset.write_text(f"[rules]\nrule.1 : expressions\nrule.2 : final_rule\n\n[expressions]\nexpression.1 : {expression}\n")
    return ruleset


def test_cortexreport_needs_cortex_configured(tmp_path: Path) -> None:
    config = load_config(None, environ={}, overrides={"analysis": {"ruleset": str(_ruleset(tmp_path))}})
    with pytest.raises(RulesetError, match=r"'cortexreport': Cortex is not configured \(\[cortex\] url"):
        engine_for(config)
    config = load_config(None, environ={}, overrides={"analysis": {"ruleset": str(_ruleset(tmp_path))},
                                                      "cortex": {"url": "http://127.0.0.1:9001"}})
    assert engine_for(config).resources.cortex is not None


def test_check_config_reads_analyzers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cortex]\nurl : http://127.0.0.1:9001\n")
    ruleset = _ruleset(tmp_path, "cortexreport.MISP_2_1Report.level in ['suspicious', 'malicious'] -> bad")
    assert main(["check-config", "--ruleset", str(ruleset), "--analyzers", str(conf)]) == 0
    conf.write_text("[cuckoo]\n")
    assert main(["check-config", "--ruleset", str(ruleset), "--analyzers", str(conf)]) != 0
    assert "Cuckoo is not supported" in capsys.readouterr().err


# reports -------------------------------------------------------------------------------------------------
def _job(content: bytes = b"hello") -> Job:
    return Job("j", "FileInfo_8_0", "file", 2, "a.txt", "text/plain", content, None, 0.0, 0.0, "Success")


def test_fileinfo_attributes() -> None:
    raw = validate("FileInfo_8_0", fileinfo(_job(), "malicious"))
    report = AnalyzerReport("FileInfo_8_0", raw)
    assert report.sha256sum == hashlib.sha256(b"hello").hexdigest()
    assert report.md5sum == hashlib.md5(b"hello").hexdigest()
    assert report.ssdeepsum == "3:abc:def"
    assert report.level == "malicious"
    assert report.hash_artifacts == [hashlib.sha256(b"hello").hexdigest()]
    assert report.taxonomies[0]["namespace"] == "FileInfo"
    assert report.artifacts == [{"dataType": "hash", "data": hashlib.sha256(b"hello").hexdigest()}]


def test_virustotal_cuckoo_cape_attributes() -> None:
    vt = AnalyzerReport("VirusTotal_GetReport_3_0", {"summary": {"taxonomies": [
        {"level": "suspicious", "namespace": "VT", "predicate": "GetReport", "value": "12/70"}]}})
    assert (vt.n_of_all, vt.level) == (12, "suspicious")
    assert AnalyzerReport("VirusTotal_GetReport_3_0", {}).n_of_all == -1
    cape = AnalyzerReport("CAPESandbox_File_Analysis_Inet_0_1", {"summary": {"taxonomies": [
        {"level": "malicious", "namespace": "CAPE", "predicate": "Malscore", "value": "7.5"}]},
        "full": {"signatures": ["injection"]}})
    assert (cape.malscore, cape.signatures, cape.level) == (7.5, ["injection"], "malicious")
    assert AnalyzerReport("X", {}).malscore == -1
    assert AnalyzerReport("X", {"summary": {"taxonomies": [
        {"level": "safe", "namespace": "a", "predicate": "b", "value": 1},
        {"level": "suspicious", "namespace": "a", "predicate": "b", "value": 1}]}}).level == "suspicious"


@pytest.mark.parametrize("raw, problem", [
    ([], "not an object"),
    ({"summary": {"taxonomies": [{"level": "evil", "namespace": "a", "predicate": "b", "value": "c"}]}}, "level"),
    ({"summary": {"taxonomies": "x"}}, "taxonomies"),
    ({"artifacts": [{"dataType": 1}]}, "artifact"),
])
def test_malformed_reports(raw: Any, problem: str) -> None:
    with pytest.raises(Malformed, match=problem):
        validate("MISP_2_1", raw)


def test_fileinfo_with_bad_hash_is_malformed() -> None:
    raw = fileinfo(_job())
    raw["full"]["results"][0]["results"][0]["submodule_section_content"]["md5"] = "XYZ"
    with pytest.raises(Malformed, match="md5"):
        validate("FileInfo_8_0", raw)


# the client against the stand-in ---------------------------------------------------------------------------
async def test_search_run_and_waitreport() -> None:
    with running(delay=0.5) as cortex:
        client = CortexClient(_settings(cortex.url, tlp="red", submit_original_filename=False))
        try:
            job = await client.submit("FileInfo_8_0", "file", b"EVIL", hashlib.sha256(b"EVIL").hexdigest(),
                                      "x.exe", "exe", "application/x-msdownload")
            status, _ = await client.status(job, 0)
            assert status in ("Waiting", "InProgress")
            status, report = await client.status(job, 30)
            assert status == "Success" and report["summary"]["taxonomies"][0]["level"] == "malicious"
            submitted = cortex.jobs[job]
            assert (submitted.tlp, submitted.filename, submitted.content) == (
                3, f"{hashlib.sha256(b'EVIL').hexdigest()}.exe", b"EVIL")
            assert submitted.content_type == "application/x-msdownload"
            vt = await client.submit("VirusTotal_GetReport_3_0", "hash", b"EVIL", "ab" * 32, "x.exe", "exe", None)
            assert (cortex.jobs[vt].data_type, cortex.jobs[vt].data, cortex.jobs[vt].content) == ("hash", "ab" * 32, b"")
        finally:
            await client.close()


async def test_missing_and_duplicate_analyzers() -> None:
    with running(analyzers={"FileInfo_8_0": [], "MISP_2_1": ["a", "b"]}) as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            with pytest.raises(CortexError, match="FileInfo_8_0 is not enabled"):
                await client.analyzer_id("FileInfo_8_0")
            with pytest.raises(CortexError, match="more than one analyzer named MISP_2_1"):
                await client.analyzer_id("MISP_2_1")
        finally:
            await client.close()


async def test_5xx_bursts_are_retried_and_a_long_one_fails() -> None:
    errors: list[str] = []
    with running(errors_5xx=3) as cortex:
        client = CortexClient(_settings(cortex.url), on_error=errors.append)
        try:
            assert await client.analyzer_id("FileInfo_8_0") == "fi-1"
            assert errors == ["http_5xx"] * 3
            cortex.errors_5xx = 100
            with pytest.raises(CortexError, match="HTTP 503") as exc:
                await client.analyzer_id("MISP_2_1")
            assert exc.value.kind == "http_5xx"
        finally:
            await client.close()


async def test_connection_errors_are_retried_then_fail() -> None:
    with running() as cortex:
        url = cortex.url
    client = CortexClient(_settings(url, retries=2))
    try:
        with pytest.raises(CortexError, match="unreachable") as exc:
            await client.analyzer_id("FileInfo_8_0")
        assert exc.value.kind == "connection"
    finally:
        await client.close()


async def test_wrong_token_is_a_configuration_error() -> None:
    with running() as cortex:
        client = CortexClient(_settings(cortex.url, api_token="wrong"))
        try:
            with pytest.raises(CortexError, match=r"refused the api_token.*HTTP 401") as exc:
                await client.analyzer_id("FileInfo_8_0")
            assert exc.value.kind == "auth" and client.problem is not None
            assert len(cortex.requests) == 1  # not retried
        finally:
            await client.close()


@pytest.mark.parametrize("final", ["Failure", "Deleted"])
async def test_ended_states(final: str) -> None:
    with running(final=final, delay=0.2) as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            job = await client.submit("MISP_2_1", "file", b"x", "00" * 32, "x", None, None)
            status, report = await client.status(job, 30)
            assert status == final and report["errorMessage"]
        finally:
            await client.close()


async def test_waitreport_returns_at_most_after_its_time() -> None:
    with running(final="never") as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            job = await client.submit("MISP_2_1", "file", b"x", "00" * 32, "x", None, None)
            status, _ = await client.status(job, 1)
            assert status in ("Waiting", "InProgress")
        finally:
            await client.close()


def test_scan_does_not_wait_for_cortex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mailowl scan` runs the ruleset in-process, with nobody to park a sample: the rule fails, saying so."""
    conf = tmp_path / "analyzers.conf"
    conf.write_text("[cortex]\nurl : http://127.0.0.1:9\n")
    sample = tmp_path / "a.bin"
    sample.write_bytes(b"EVIL")
    main(["scan", str(sample), "--json", "--ruleset", str(_ruleset(tmp_path)), "--analyzers", str(conf)])
    out = capsys.readouterr().out
    assert "failed" in out and "only mailowl serve waits for Cortex" in out


async def test_every_parked_sample_waits_at_once_while_submissions_queue() -> None:
    """A thousand samples parked on Cortex are a thousand open waitreport requests: none may queue behind
    another (a sample's report would come late by the others' waits), while a burst of submissions
    shares SHORT_REQUESTS connections."""
    from mailowl.analysis.cortex import SHORT_REQUESTS

    waits = 3 * SHORT_REQUESTS + 5
    with running(delay=3.0) as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            jobs = await asyncio.gather(*[client.submit("FileInfo_8_0", "file", b"x%d" % i,
                                                        hashlib.sha256(b"x%d" % i).hexdigest(), None, None, None)
                                          for i in range(waits)])
            assert len(set(jobs)) == waits
            results = await asyncio.gather(*[client.status(job, 30) for job in jobs])
            assert [status for status, _ in results] == ["Success"] * waits
            assert cortex.most_waiting == waits
        finally:
            await client.close()


async def test_a_report_larger_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailowl.analysis import cortex as module

    monkeypatch.setattr(module, "MAX_ANSWER", 300)  # a FileInfo report is about 1 KB
    with running() as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            job = await client.submit("FileInfo_8_0", "file", b"x", hashlib.sha256(b"x").hexdigest(), None, None, None)
            with pytest.raises(CortexError, match="larger than") as exc:
                await client.status(job, 30)
            assert exc.value.kind == "too_large"
        finally:
            await client.close()


async def test_a_burst_of_submissions_queues_without_timing_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests waiting for one of the SHORT_REQUESTS slots have not started their timeout: a burst of
    slow submissions all get through (aiohttp's own limit would count the queueing as time taken)."""
    from mailowl.analysis.cortex import SHORT_REQUESTS

    burst = 3 * SHORT_REQUESTS
    monkeypatch.setattr(cortex_module, "SHORT_TIMEOUT", 2.0)  # each request takes 0.5 s, the burst 1.5 s or more
    with running(run_delay=0.5) as cortex:
        client = CortexClient(_settings(cortex.url, retries=0))
        await client.analyzer_id("FileInfo_8_0")
        try:
            jobs = await asyncio.gather(*[client.submit("FileInfo_8_0", "file", b"b%d" % i,
                                                        hashlib.sha256(b"b%d" % i).hexdigest(), None, None, None)
                                          for i in range(burst)])
            assert len(set(jobs)) == burst
        finally:
            await client.close()


async def test_file_names_reach_cortex_as_written() -> None:
    with running() as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            name = 'Rechnung März "final".pdf'
            job = await client.submit("FileInfo_8_0", "file", b"%PDF-1.4", "00" * 32, name, "pdf", "application/pdf")
            assert cortex.jobs[job].filename == name
        finally:
            await client.close()


async def test_answers_nested_too_deep_are_malformed() -> None:
    """Deeper than orjson's 1,024 levels: refused as malformed, not a RecursionError out of the client."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # for the stand-in's own json.dumps of the answer
    with running(report=lambda job: {"full": json.loads("[" * 1100 + "]" * 1100)}) as cortex:
        client = CortexClient(_settings(cortex.url))
        try:
            job = await client.submit("FileInfo_8_0", "file", b"x", "00" * 32, None, None, None)
            with pytest.raises(CortexError) as exc:
                await client.status(job, 30)
            assert exc.value.kind == "malformed"
        finally:
            await client.close()
            sys.setrecursionlimit(limit)


def test_one_client_serves_one_event_loop_after_another() -> None:
    """Tests and embedders run the client in several asyncio.run()s: each loop gets its own sessions."""
    with running() as cortex:
        client = CortexClient(_settings(cortex.url))
        for _ in range(2):
            assert asyncio.run(client.analyzer_id("FileInfo_8_0")) == "fi-1"
            client._analyzers.clear()
        asyncio.run(client.close())
