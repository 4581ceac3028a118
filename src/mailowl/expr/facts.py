"""Facts for ``mailowl expr facts``: of a finished job, from the store, or of a file, analysed now.

A job row keeps the sample's facts and its type by content and by name, and (since migration 0006) the
reports the rules read, in its ``facts`` column (``AnalysisContext.seen``): each report's attributes that
differ from an empty report's, and the lazy ones (``filereport.type_as_text``, ``olereport.vba_code`` ...)
only if a rule had them computed. The known report is the one the rules read, else it is rebuilt from
the verdicts the store remembers for the same identity, as they stood when the job was created.
Whatever no rule computed is missing (``missing``); a file gives every fact.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from mailowl.analysis.table import ANALYSERS
from mailowl.expr.schema import REPORTS, to_json

if TYPE_CHECKING:
    from mailowl.analysis.sample import Sample
    from mailowl.rules.engine import Engine
    from mailowl.store.jobs import Job
    from mailowl.store.journal import JournalEntry

Facts = dict[str, dict[str, Any]]
_KEPT = {"sample": set(REPORTS["sample"]), "filereport": {"type_by_content", "type_by_name", "mime_types"},
         "knownreport": set(REPORTS["knownreport"])}
#: attributes a job from before migration 0006 (or one that failed before a verdict) does not keep
NOT_KEPT = [f"{report}.{attr}" for report, attrs in REPORTS.items() for attr in sorted(attrs)
            if attr not in _KEPT.get(report, ()) and report != "cortexreport"]


def of_job(job: Job, journal: Iterable[JournalEntry]) -> Facts:
    """``journal``: the store's verdicts for the job's identity; those from before the job count."""
    kept = job.facts
    sample = {"filename": kept.get("filename"), "name_declared": kept.get("filename"),
              "type_declared": kept.get("type_declared"), "content_disposition": kept.get("content_disposition"),
              "file_extension": kept.get("file_extension"), "file_size": kept.get("size"),
              "sha256sum": kept.get("sha256"), "sha1sum": kept.get("sha1"), "md5sum": kept.get("md5"),
              "identity": kept.get("identity")}
    types = [kept.get("type_by_name"), kept.get("type_by_content")]
    filereport = {"type_by_content": types[1], "type_by_name": types[0], "mime_types": sorted({t for t in types if t})}
    facts = {"sample": sample, "filereport": filereport, "knownreport": known_then(journal, job.created_at)}
    for name, values in read_by_rules(job).items():
        facts[name] = {**facts.get(name, {}), **values}  # what the rules read wins over what was rebuilt
    return {name: facts[name] for name in REPORTS if name in facts}  # in the order of the documentation


def read_by_rules(job: Job) -> Facts:
    """The reports the rules read during the job's analysis, every attribute they had computed."""
    if not job.rule_facts:
        return {}
    stored: Facts = orjson.loads(job.rule_facts)
    out: Facts = {}
    for name, values in stored.items():
        fields = ANALYSERS[name].fields if name in ANALYSERS else {}
        if name == "cortexreport":
            out[name] = values  # per analyzer, as the rules read them
            continue
        # only attributes that differ from an empty report's are stored; lazy ones whenever computed
        empty = {attr: to_json(value) for attr, (_, value) in REPORTS.get(name, {}).items()
                 if not (attr in fields and fields[attr].lazy)}
        out[name] = {**empty, **values}
    return out


def missing(job: Job, facts: Facts) -> tuple[str, list[str]]:
    """What ``facts`` (``of_job``) lacks: ("not kept with a job", NOT_KEPT) for a job without stored
    facts, else ("not computed during the analysis", the attributes no rule had computed). A job the
    verdict cache answered keeps none because its rule read only the known report, which is rebuilt."""
    if not job.rule_facts and not job.answered_by_cache:
        return "not kept with a job", NOT_KEPT
    absent = [f"{name}.{attr}" for name, attrs in REPORTS.items() if name != "cortexreport"
              for attr in sorted(attrs) if attr not in facts.get(name, {})]
    return "not computed during the analysis (no rule read them)", absent


def known_then(journal: Iterable[JournalEntry], when: datetime) -> dict[str, Any]:
    earlier = [entry for entry in journal if entry.analysis_time < when]
    if not earlier:
        return {"known": False, "last_result": "unknown", "result": "unknown", "worst_result": "unchecked",
                "first": 0, "last": 0}
    worst = max(earlier, key=lambda entry: entry.result).result  # the first of equally bad ones, as knownreport
    return {"known": True, "last_result": earlier[-1].result.name, "result": earlier[-1].result.name,
            "worst_result": worst.name, "first": (when - earlier[0].analysis_time).days,
            "last": (when - earlier[-1].analysis_time).days}


def of_sample(sample: Sample, engine: Engine) -> Facts:
    """Every report of a sample, computed now; knownreport as for a sample never seen."""
    from mailowl.analysis.archive import Budget
    from mailowl.rules.context import AnalysisContext
    from mailowl.store.journal import KnownReport

    context = AnalysisContext(sample, engine, lambda identity: KnownReport(),
                              Budget(engine.resources.archive_limits, sample.size))
    return context.facts(REPORTS)
