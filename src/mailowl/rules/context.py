"""Everything one analysis of one sample can see: the sample, its lazily computed reports, the store's memory."""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from mailowl.analysis import activity
from mailowl.analysis.archive import Budget
from mailowl.analysis.cortex import ANALYZER_FIELDS, AnalyzerReport, CortexReport, expression_name
from mailowl.analysis.sample import Sample
from mailowl.analysis.table import ANALYSERS
from mailowl.expr.evaluate import fact
from mailowl.expr.schema import REPORTS, to_json
from mailowl.store.journal import KnownReport

if TYPE_CHECKING:
    from mailowl.rules.engine import Engine

JournalLookup = Callable[[str], KnownReport]
#: one analyser run: (report, backend, seconds, whether it raised), for the metrics of the parent process
Timing = tuple[str, str, float, bool]
#: a Cortex report's ``full`` above this many bytes of JSON is not kept with the job (sandboxes send megabytes)
_FULL_KEPT = 64 * 1024


class SampleView:
    """What expressions see as ``sample``."""

    FIELDS = frozenset({"filename", "name_declared", "type_declared", "content_disposition", "file_extension",
                        "file_size", "sha256sum", "sha1sum", "md5sum", "identity"})

    def __init__(self, sample: Sample) -> None:
        self.filename = self.name_declared = sample.filename
        self.type_declared = sample.type_declared
        self.content_disposition = sample.content_disposition
        self.file_extension = sample.file_extension
        self._sample = sample

    @property
    def file_size(self) -> int:
        # computed on every read, as PeekabooAV does: `sample.file_size is sample.file_size` agrees too
        return self._sample.size

    @property
    def sha256sum(self) -> str:
        return self._sample.sha256

    @property
    def sha1sum(self) -> str:
        return self._sample.sha1

    @property
    def md5sum(self) -> str:
        return self._sample.md5

    @property
    def identity(self) -> str:
        return self._sample.identity


class AnalysisContext:
    def __init__(self, sample: Sample, engine: Engine, journal: JournalLookup, budget: Budget,
                 timings: list[Timing] | None = None) -> None:
        self.sample = sample
        #: every analyser run of this analysis (archive members' included, the engine shares the list)
        self.timings: list[Timing] = [] if timings is None else timings
        self.engine = engine
        self.journal = journal
        #: the top-level sample's archive budget, shared by every member analysed below it
        self.budget = budget
        #: the rule being evaluated, for naming where an analysis hung
        self.rule = ""

    def report(self, name: str) -> Any:
        reports = self.sample.reports
        if name in reports:
            return reports[name]
        value: Any
        activity.doing(f"{name} (rule {self.rule})" if self.rule else name)
        if name == "sample":
            value = SampleView(self.sample)
        elif name == "knownreport":
            value = self.journal(self.sample.identity)
        elif name in ANALYSERS:
            analyser = ANALYSERS[name]
            missing = analyser.unavailable(self.engine.resources)
            if missing is not None:
                raise LookupError(f"{name}: {missing}")
            started = time.perf_counter()
            try:
                value = analyser.run(self.sample, self.engine.resources, self.budget)
            except Exception:
                self.timings.append((name, analyser.backend, time.perf_counter() - started, True))
                raise
            if analyser.runs == "worker":  # a remote one is timed where it waits (core/parking.py)
                self.timings.append((name, analyser.backend, time.perf_counter() - started, False))
        else:
            raise LookupError(f"no analyser provides '{name}'")
        reports[name] = value
        if self.rule:
            activity.doing(f"rule {self.rule}")
        return value

    def facts(self, names: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """What expressions can read about the sample, in the shape of ``mailowl expr eval --facts``:
        the reports computed so far, and those named (computed now, if they can be here)."""
        names = [name for name in names if name != "cortexreport"]  # reading it would submit to Cortex
        for name in names:
            with contextlib.suppress(LookupError):  # e.g. clamavreport without a clamd
                self.report(name)
        reports = {"sample": SampleView(self.sample), **self.sample.reports}
        return {name: {attr: to_json(fact(getattr(reports[name], attr))) for attr in sorted(attrs)}
                for name, attrs in REPORTS.items() if name in reports and name != "cortexreport"}

    def seen(self) -> str | None:
        """The reports the rules read, as compact JSON for the job's ``facts`` column (expr/facts.py reads
        it): each report's attributes that differ from an empty report's, lazy ones only if a rule made
        them computed, so recording costs no libmagic or olevba run. The sample is not here: the job's row
        keeps its facts."""
        seen: dict[str, Any] = {}
        for name, report in self.sample.reports.items():
            if name == "cortexreport":
                if isinstance(report, CortexReport) and report.reports:
                    seen[name] = {expression_name(a): _analyzer_facts(report, a) for a in report.reports}
                continue
            plan = _PLAN.get(name)
            if plan is None:
                continue
            values = {}
            for attr, empty, lazy in plan:
                if lazy and not report.computed(attr):
                    continue
                value = _json(getattr(report, attr))
                # a lazy one is kept even when empty: that it is there says it was computed
                if lazy or type(value) is not type(empty) or value != empty:
                    values[attr] = value
            seen[name] = values
        return orjson.dumps(seen, default=str).decode() if seen else None


def _json(value: Any) -> Any:
    """``to_json(fact(value))``, quicker for the plain values most attributes are (this runs for every job)."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    return to_json(fact(value))


#: report -> (attribute, its empty value in JSON form, lazy) of what seen() records; not the sample (the job
#: row keeps it) nor Cortex's (per analyzer)
def _lazy(report: str, attr: str) -> bool:
    field = ANALYSERS[report].fields.get(attr) if report in ANALYSERS else None
    return field is not None and field.lazy


_PLAN = {name: [(attr, _json(empty), _lazy(name, attr)) for attr, (_, empty) in attrs.items()]
         for name, attrs in REPORTS.items() if name not in ("sample", "cortexreport")}


def _analyzer_facts(report: CortexReport, analyzer: str) -> dict[str, Any]:
    read = AnalyzerReport(analyzer, report.reports[analyzer])  # not getattr: a later failure would raise
    values = {attr: to_json(getattr(read, attr)) for attr in ANALYZER_FIELDS}
    if len(orjson.dumps(values["full"], default=str)) > _FULL_KEPT:
        del values["full"]
    return values
