"""The one contract every analyser follows, and what analysers are given to run.

An analyser turns a sample into one report, computed when a rule or an expression first asks for it and
at most once per sample. Its entry in the table (``analysis/table.py``) says everything the rest of mailowl
needs to know about it: the report's name in expressions, the fields expressions may read, where it runs,
what bounds one run, and what configuration it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mailowl.analysis.archive import ArchiveLimits, Budget
from mailowl.analysis.clamav import Clamd
from mailowl.analysis.cortex import CortexSettings
from mailowl.analysis.sample import Sample

#: how a field looks in JSON (``mailowl expr``): as it is, a set as a list, a result by its name
Kind = Literal["plain", "set", "result"]


@dataclass(frozen=True)
class Field:
    kind: Kind
    #: the field of an empty report: PeekabooAV checks expressions at start-up on empty reports, and so
    #: does mailowl, with these values
    empty: Any
    #: reading it may do costly work the report left for later (libmagic's description, olevba's reveal);
    #: the report's ``computed(name)`` says whether that is done. The facts kept with a job record such a
    #: field only once a rule has read it: recording must never force the work.
    lazy: bool = False


@dataclass
class Resources:
    """What analysers share, built once at start-up from the configuration and the ruleset."""

    yara_rules: Any = None
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    clamd: Clamd | None = None
    #: [cortex] (or serve --analyzers); None: expressions reading cortexreport are refused
    cortex: CortexSettings | None = None


#: one run: the sample, the shared resources, and the archive budget of the top-level sample
Run = Callable[[Sample, Resources, Budget], Any]


@dataclass(frozen=True)
class Analyser:
    #: the report's name in expressions and in ``ctx.report()``
    report: str
    fields: Mapping[str, Field]
    run: Run
    #: "worker": CPU work in the analysis threads and killable worker processes; "loop": network I/O on the
    #: event loop, where a sample may be parked while a remote service works
    runs: Literal["worker", "loop"]
    #: the setting that bounds one run, for the documentation and error messages
    limit: str
    #: what does the work (library, service), the ``backend`` label of the analyser metrics
    backend: str
    #: why it cannot run with these resources (missing configuration), or None
    unavailable: Callable[[Resources], str | None] = field(default=lambda resources: None)
    #: one line for the documentation
    summary: str = ""
