"""Every analyser, one row each. Adding an analyser is one module and one row here: the rule context,
the expression language, ``check-config`` and the documentation's attribute list all read this table."""

from __future__ import annotations

from mailowl.analysis.archive import Budget, unpack
from mailowl.analysis.clamav import ClamavError, ClamavReport, clamav_report
from mailowl.analysis.contract import Analyser, Field, Kind, Resources
from mailowl.analysis.cortex import KNOWN, CortexReport, empty_report
from mailowl.analysis.filetype import file_report
from mailowl.analysis.ole import ole_report
from mailowl.analysis.pe import pe_report
from mailowl.analysis.sample import Sample
from mailowl.analysis.yara import yara_report

P: Kind = "plain"
S: Kind = "set"


def _clamd_missing(resources: Resources) -> str | None:
    return None if resources.clamd is not None else "clamd is not configured ([clamav] socket)"


def _cortex_missing(resources: Resources) -> str | None:
    return None if resources.cortex is not None else "Cortex is not configured ([cortex] url, or serve --analyzers)"


def _clamav(sample: Sample, resources: Resources, budget: Budget) -> ClamavReport:
    if resources.clamd is None:
        raise ClamavError("clamd is not configured ([clamav] socket)")
    return clamav_report(sample, resources.clamd)


ANALYSERS: dict[str, Analyser] = {a.report: a for a in (
    Analyser("filereport", {
        "type_by_content": Field(P, None), "type_by_name": Field(P, None), "type_as_text": Field(P, None, lazy=True),
        "mime_types": Field(S, set()),
    }, lambda sample, resources, budget: file_report(sample), "worker", "analysis.timeout", "libmagic",
        summary="file type by content (libmagic) and by name (mimetypes)"),
    Analyser("olereport", {
        "has_office_macros": Field(P, False), "vba_code": Field(P, "", lazy=True),
        "has_autoexec": Field(P, False, lazy=True), "detected_autoexec": Field(P, "[]", lazy=True),
        "is_suspicious": Field(P, False, lazy=True), "detected_suspicious": Field(P, "[]", lazy=True),
    }, lambda sample, resources, budget: ole_report(sample), "worker", "analysis.timeout", "olevba",
        summary="Office macros (oletools' olevba)"),
    Analyser("pereport", {
        "is_pe": Field(P, False), "is_dll": Field(P, False), "is_64bit": Field(P, False), "imports": Field(P, []),
        "dlls": Field(P, []), "sections": Field(P, []), "max_entropy": Field(P, 0.0), "has_signature": Field(P, False),
        "packed": Field(P, False), "packer_hints": Field(P, []), "error": Field(P, None),
    }, lambda sample, resources, budget: pe_report(sample), "worker", "analysis.timeout", "pefile",
        summary="Windows executables (pefile)"),
    Analyser("yarareport", {
        "matched": Field(P, False), "rules": Field(P, []), "tags": Field(P, []),
    }, lambda sample, resources, budget: yara_report(sample, resources.yara_rules), "worker", "analysis.timeout",
        "yara",
        summary="YARA rules of the yara rule's directory (yara-python)"),
    Analyser("archivereport", {
        "is_archive": Field(P, False), "format": Field(P, None), "members": Field(P, []), "member_count": Field(P, 0),
        "encrypted": Field(P, False), "total_size": Field(P, 0), "limit_hit": Field(P, None), "error": Field(P, None),
    }, lambda sample, resources, budget: unpack(sample, budget), "worker", "analysis.timeout and [archive] limits",
        "unpack",
        summary="archive members: zip, 7z, rar, tar, gzip, bzip2, xz"),
    Analyser("clamavreport", {
        "infected": Field(P, False), "signatures": Field(P, []),
    }, _clamav, "worker", "[clamav] timeout", "clamd", _clamd_missing, summary="ClamAV (clamd, INSTREAM)"),
    # the fields are PeekabooAV's five analyzers; any other analyzer is read as <AnalyzerName>Report
    Analyser("cortexreport", {name: Field(P, empty_report(name)) for name in KNOWN},
             lambda sample, resources, budget: CortexReport(), "loop", "[cortex] maximum_job_age", "cortex",
             _cortex_missing,
             summary="Cortex analyzers (FileInfo, VirusTotal, ...): the sample waits parked, holding no worker"),
)}
