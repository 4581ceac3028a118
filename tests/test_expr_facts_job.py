"""`mailowl expr facts JOB_ID` shows every fact the rules saw: the reports they read are kept with the job
(``jobs.facts``, migration 0006), recorded in the analysis thread or the worker process without computing
what no rule read (libmagic's description, olevba's reveal), and read back from the store."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailowl.analysis.archive import Budget
from mailowl.analysis.contract import Resources
from mailowl.analysis.filetype import FileReport, type_as_text
from mailowl.analysis.ole import ole_report
from mailowl.analysis.sample import Sample
from mailowl.core.service import AnalysisService
from mailowl.core.workers import needs_isolation
from mailowl.expr.facts import missing, of_job
from mailowl.expr.tool import Evaluator
from mailowl.results import Result, RuleResult
from mailowl.rules.context import AnalysisContext
from mailowl.rules.loader import build_engine
from mailowl.store import Job, Store
from mailowl.store.journal import KnownReport
from mailowl.store.models import jobs

from .server import Server
from .test_expr_cli import mailowl

DOCM = Path(__file__).parent / "data" / "office" / "oleform-PR314.docm"


def engine(expressions: list[str]) -> Any:
    raw = {"rules": ["known", "expressions", "final_rule"], "expressions": {"expression": expressions}}
    return build_engine(raw, "test", Resources())


async def analysed(service: AnalysisService, sample: Sample) -> Job:
    job = await service.submit(sample)
    await job.wait(60)
    assert job.finished, "no verdict within 60 s"
    return job


async def test_the_facts_the_rules_read_are_kept_lazy_ones_only_when_read(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    await store.open()
    expressions = ["sample.file_extension == 'exe' -> bad",
                   "sample.file_extension == 'dat' and filereport.type_as_text == 'no such type' -> bad",
                   "filereport.type_by_content == 'no such type' -> bad"]
    service = AnalysisService(engine(expressions), store, workers=1)
    await service.start()
    try:
        # analysed in the service's thread: the rules read the type by content, not the description
        text = Sample(b"just some words of plain text\n" * 4, filename="note.txt")
        assert not needs_isolation(text.content)
        in_thread = await analysed(service, text)
        # analysed in a worker process, the description read: the facts come back over the pipe
        mz = Sample(b"MZ" + b"\0" * 200, filename="tool.dat")
        assert needs_isolation(mz.content)
        in_worker = await analysed(service, mz)
        # decided before anything reads the file type: nothing of filereport is computed
        exe = Sample(b"MZ" + b"\1" * 200, filename="tool.exe")
        early = await analysed(service, exe)
    finally:
        await service.stop()
        await store.flush()
        await store.close()
    assert early.result is Result.bad and in_thread.result is in_worker.result is Result.unknown

    store = Store(url)  # a fresh process's view: every job is read from its row
    await store.open()
    try:
        rows = {job.id: await store.get_job(job.id) for job in (in_thread, in_worker, early)}
    finally:
        await store.close()
    facts = {job_id: of_job(job, []) for job_id, job in rows.items() if job is not None}
    assert len(facts) == 3

    thread_facts = facts[in_thread.id]
    assert "type_as_text" not in thread_facts["filereport"]
    report = text.reports["filereport"]
    assert isinstance(report, FileReport) and report._text is None  # recording did not run libmagic for it
    assert thread_facts["filereport"]["mime_types"] == ["text/plain"]
    assert thread_facts["knownreport"] == {"known": False, "last_result": "unknown", "result": "unknown",
                                           "worst_result": "unchecked", "first": 0, "last": 0}
    assert "olereport" not in thread_facts  # no rule read it
    job = rows[in_thread.id]
    assert job is not None
    why, absent = missing(job, thread_facts)
    assert why.startswith("not computed") and {"olereport.vba_code", "filereport.type_as_text"} <= set(absent)
    assert "filereport.mime_types" not in absent

    worker_facts = facts[in_worker.id]
    assert worker_facts["filereport"]["type_as_text"] == type_as_text(mz.content)
    # the parent's own file report never ran libmagic's description: the child's facts crossed the pipe
    parent_report = mz.reports["filereport"]
    assert isinstance(parent_report, FileReport) and parent_report.content == b""

    early_facts = facts[early.id]
    assert "type_as_text" not in early_facts["filereport"]
    early_job = rows[early.id]
    assert early_job is not None and "filereport.type_as_text" in missing(early_job, early_facts)[1]
    # and an expression tried on them gives what the ruleset gave
    answer = Evaluator().answer(expressions[2], thread_facts)
    assert answer == {"result": None, "error": None, "phase": None}
    answer = Evaluator().answer(expressions[1], worker_facts)
    assert answer == {"result": None, "error": None, "phase": None}


def test_recording_facts_never_runs_olevba_reveal_or_its_keyword_scans() -> None:
    sample = Sample(DOCM.read_bytes(), filename=DOCM.name)
    report = ole_report(sample)
    assert report.has_office_macros and report.macros  # a real parser, with the costly parts left to do
    sample.reports["olereport"] = report
    eng = engine(["olereport.has_office_macros -> bad"])
    ctx = AnalysisContext(sample, eng, lambda identity: KnownReport(), Budget(eng.resources.archive_limits,
                                                                              sample.size))
    seen = ctx.seen()
    assert seen is not None and json.loads(seen) == {"olereport": {"has_office_macros": True}}
    assert not {"_revealed", "autoexec", "suspicious"} & set(vars(report))  # nothing computed to record it

    assert isinstance(report.vba_code, str) and report.has_autoexec is not None  # a rule reads them
    again = json.loads(ctx.seen() or "{}")["olereport"]
    assert again["vba_code"] == report.vba_code and "detected_autoexec" in again
    assert "is_suspicious" not in again and "suspicious" not in vars(report)


async def test_old_jobs_upgrade_and_new_jobs_keep_their_facts(store_url: str) -> None:
    """Migration 0006 on every backend: jobs from before have no facts (and say so), new ones keep them,
    whether their row is written finished (insert) or finished later (update); large ones too (MariaDB's
    TEXT would end at 64 KiB)."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from mailowl.store.migrate import alembic_config

    db = create_async_engine(store_url)
    old_facts = Sample(b"judged before 0006", "old.bin").facts()
    try:
        async with db.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0005"))
            now = datetime.now(UTC)
            result = await conn.execute(jobs.insert().values(
                **{k: old_facts[k] for k in ("identity", "sha256", "size", "filename")},
                state="done", result="good", reason="judged by 0005", created_at=now, finished_at=now))
            old_id = result.inserted_primary_key[0]
    finally:
        await db.dispose()
    big = json.dumps({"pereport": {"imports": [f"kernel32.dll!Function{i:06d}" for i in range(4000)]}})
    assert len(big) > 100_000
    store = Store(store_url)
    await store.open()
    try:
        pending = await store.new_job(Sample(b"finished after its insert", "late.bin").facts())
        at_once = store.add_job(Sample(b"finished before its insert", "early.bin").facts())
        for job, facts in ((pending, big), (at_once, '{"knownreport":{}}')):
            job.rule_facts = facts
            job.finish(Result.good, "fine", [RuleResult("final_rule", Result.good, "fine", True)], datetime.now(UTC))
            store.job_finished(job)
        await store.committed(at_once)
        await store.flush()
    finally:
        await store.close()
    store = Store(store_url)
    await store.open()
    try:
        old, late, early = [await store.get_job(i) for i in (old_id, pending.id, at_once.id)]
    finally:
        await store.close()
    assert old is not None and old.rule_facts is None
    old_view = of_job(old, [])
    assert missing(old, old_view)[0] == "not kept with a job" and old_view["sample"]["filename"] == "old.bin"
    assert late is not None and late.rule_facts == big
    assert of_job(late, [])["pereport"]["imports"][-1] == "kernel32.dll!Function003999"
    assert early is not None and of_job(early, [])["knownreport"]["known"] is False


def test_expr_facts_of_a_served_job(tmp_path: Path) -> None:
    ruleset = tmp_path / "ruleset.toml"
    ruleset.write_text('rules = ["known", "expressions", "final_rule"]\n[expressions]\n'
                       'expression = ["filereport.type_as_text == /ASCII text.*/ -> bad"]\n')
    srv = Server(tmp_path, ruleset=str(ruleset))
    try:
        job = srv.verdict(srv.scan(b"plain words, nothing else\n", "words.txt")[1]["job_id"])
        again = srv.verdict(srv.scan(b"plain words, nothing else\n", "words.txt")[1]["job_id"])
    finally:
        srv.stop()
    assert job["result"] == again["result"] == "bad"
    config = tmp_path / "expr.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    done = mailowl("expr", "facts", str(job["job_id"]), "--config", str(config))
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["filereport"]["type_as_text"].startswith("ASCII text")
    assert "not computed during the analysis (no rule read them): olereport." in done.stderr
    assert "filereport.type_as_text" not in done.stderr
    answer = mailowl("expr", "eval", "--facts", "-", "filereport.type_as_text == /ASCII.*/ -> bad", stdin=done.stdout)
    assert json.loads(answer.stdout)["result"] == "bad"
    # the repeat was answered by the verdict cache: the known report it read is rebuilt, nothing was stored
    cached = mailowl("expr", "facts", str(again["job_id"]), "--config", str(config))
    assert cached.returncode == 0, cached.stderr
    known = json.loads(cached.stdout)["knownreport"]
    assert known["known"] is True and known["worst_result"] == "bad"
    with sqlite3.connect(tmp_path / "data" / "mailowl.db") as db:
        stored = dict(db.execute("SELECT id, facts FROM jobs").fetchall())
    assert stored[job["job_id"]] is not None and stored[again["job_id"]] is None


def test_expr_eval_reads_cortex_reports_from_facts() -> None:
    facts = {"sample": {"file_extension": "bin"},
             "cortexreport": {"FileInfoReport": {"level": "malicious", "md5sum": "0" * 32,
                                                 "taxonomies": [{"level": "malicious", "namespace": "FileInfo",
                                                                 "predicate": "x", "value": 1}]},
                              "MISP_2_1Report": {"level": None}}}
    for expression, result in (("cortexreport.FileInfoReport.level == 'malicious' -> bad", "bad"),
                               ("cortexreport.MISP_2_1Report.level in ['suspicious', 'malicious'] -> bad", None),
                               ("cortexreport.FileInfoReport.md5sum == sample.file_extension -> bad", None)):
        code, answer = _eval(expression, facts)
        assert (code, answer) == (0, {"result": result, "error": None, "phase": None}), expression
    code, answer = _eval("cortexreport.VirusTotalQueryReport.n_of_all > 5 -> bad", facts)
    assert (code, answer["phase"]) == (1, "eval")
    assert answer["error"] == "no fact cortexreport.VirusTotalQueryReport given"
    code, answer = _eval("cortexreport.FileInfoReport.ssdeepsum -> bad", facts)
    assert answer["error"] == "no fact cortexreport.FileInfoReport.ssdeepsum given"
    code, answer = _eval("cortexreport.FileInfoReport.level == 'x' -> bad", facts, "--dialect", "mailowl")
    assert (code, answer["phase"]) == (2, "load")  # the strict dialect reads one level of attributes only


def _eval(expression: str, facts: dict[str, Any], *extra: str) -> tuple[int, dict[str, Any]]:
    done = mailowl("expr", "eval", "--facts", "-", *extra, expression, stdin=json.dumps(facts))
    return done.returncode, json.loads(done.stdout)
