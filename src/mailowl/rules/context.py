"""Everything one analysis of one sample can see: the sample, its lazily computed reports, the store's memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mailowl.analysis import activity
from mailowl.analysis.archive import Budget
from mailowl.analysis.sample import Sample
from mailowl.analysis.table import ANALYSERS
from mailowl.expr.evaluate import fact
from mailowl.expr.schema import REPORTS, to_json
from mailowl.store.journal import KnownReport

if TYPE_CHECKING:
    from mailowl.rules.engine import Engine

JournalLookup = Callable[[str], KnownReport]


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
    def __init__(self, sample: Sample, engine: Engine, journal: JournalLookup, budget: Budget) -> None:
        self.sample = sample
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
            value = analyser.run(self.sample, self.engine.resources, self.budget)
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
