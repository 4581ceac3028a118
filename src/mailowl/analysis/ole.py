"""Office macros with oletools' olevba."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from oletools.olevba import VBA_Parser, detect_autoexec, detect_suspicious

from mailowl.analysis import analyzer
from mailowl.analysis.sample import Sample

log = logging.getLogger(__name__)
logging.getLogger("olevba").setLevel(logging.CRITICAL)


@dataclass(slots=True)
class OleReport:
    FIELDS = frozenset({"has_office_macros", "vba_code", "has_autoexec", "detected_autoexec",
                        "is_suspicious", "detected_suspicious"})

    has_office_macros: bool = False
    vba_code: str = ""
    autoexec: list[tuple[str, str]] = field(default_factory=list)
    suspicious: list[tuple[str, str]] = field(default_factory=list)
    vba_found: bool = False

    @property
    def has_autoexec(self) -> bool:
        return bool(self.autoexec)

    @property
    def detected_autoexec(self) -> str:
        return str(self.autoexec)

    @property
    def is_suspicious(self) -> bool:
        return bool(self.suspicious)

    @property
    def detected_suspicious(self) -> str:
        return str(self.suspicious)




@analyzer("olereport")
def ole_report(sample: Sample, env: object = None) -> OleReport:
    report = OleReport()
    name = sample.filename
    try:
        parser = VBA_Parser(name, data=bytes(sample.content))
    except Exception:
        # Not an Office file olevba understands: no macros, as PeekabooAV treats it.
        return report
    try:
        report.has_office_macros = bool(parser.detect_vba_macros() or parser.detect_xlm_macros())
        try:
            report.vba_code = parser.reveal()
            report.vba_found = True
        except TypeError:
            pass
        macros = parser.extract_all_macros()
        # olevba reads plain text as VBA source; a lone "macro" that is the file itself is no macro.
        if report.has_office_macros and len(macros) == 1 and len(macros[0]) >= 3 and macros[0][2] == name:
            report.has_office_macros = False
        if parser.detect_vba_macros():
            for macro in macros:
                code = macro[3]
                report.autoexec.extend(detect_autoexec(code))
                report.suspicious.extend(detect_suspicious(code))
    except Exception as exc:  # olevba raises many kinds on damaged files
        log.info("olevba could not finish on %s: %s", sample.sha256, exc)
    finally:
        parser.close()
    return report
