"""Office macros with oletools' olevba.

Detection is cheap; olevba's ``reveal()`` (deobfuscated source) and its keyword scans are not, so they
run only when a rule or expression asks for them.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from oletools.olevba import VBA_Parser, detect_autoexec, detect_suspicious

from mailowl.analysis.sample import Sample

log = logging.getLogger(__name__)
logging.getLogger("olevba").setLevel(logging.CRITICAL)


#: lazy attribute -> the cached property it computes
_LAZY = {"vba_code": "_revealed", "has_autoexec": "autoexec", "detected_autoexec": "autoexec",
         "is_suspicious": "suspicious", "detected_suspicious": "suspicious"}


class OleReport:
    FIELDS = frozenset({"has_office_macros", "vba_code", "has_autoexec", "detected_autoexec",
                        "is_suspicious", "detected_suspicious"})

    def __init__(self, parser: Any = None, has_office_macros: bool = False, macros: list[str] | None = None) -> None:
        self._parser = parser
        self.has_office_macros = has_office_macros
        #: VBA source of each macro olevba found (empty unless it found VBA)
        self.macros = macros or []

    def computed(self, name: str) -> bool:
        """False while reading ``name`` would still run olevba's reveal or its keyword scans."""
        cache = _LAZY.get(name)
        if cache is None or cache in self.__dict__:
            return True
        return self._parser is None if cache == "_revealed" else not self.macros

    @cached_property
    def _revealed(self) -> str | None:
        if self._parser is None:
            return None
        try:
            return str(self._parser.reveal())
        except TypeError:
            return None
        except Exception as exc:
            log.info("olevba reveal failed: %s", exc)
            return None
        finally:
            self._parser.close()

    @property
    def vba_found(self) -> bool:
        return self._revealed is not None

    @property
    def vba_code(self) -> str:
        return self._revealed or ""

    @cached_property
    def autoexec(self) -> list[tuple[str, str]]:
        return [hit for code in self.macros for hit in detect_autoexec(code)]

    @cached_property
    def suspicious(self) -> list[tuple[str, str]]:
        return [hit for code in self.macros for hit in detect_suspicious(code)]

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


# Containers olevba can find macros in: OLE, zip (OOXML), Word 2003 XML / flat OPC, MHTML.
_OFFICE_MAGIC = (b"\xd0\xcf\x11\xe0", b"PK\x03\x04")
_OFFICE_MARKERS = (b"<?xml", b"<?mso-application", b"mime-version", b"<pkg:package")
# olevba copies the whole content when it falls back to reading it as text; above this size, content
# that is no Office container skips olevba (it could not hold a macro, only VBA-looking text).
_TEXT_FALLBACK_LIMIT = 16 * 2**20


def could_hold_macros(content: bytes) -> bool:
    if content.startswith(_OFFICE_MAGIC):
        return True
    head = content[:4096].lower()
    return any(marker in head for marker in _OFFICE_MARKERS)


def ole_report(sample: Sample) -> OleReport:
    name = sample.filename
    if sample.size > _TEXT_FALLBACK_LIMIT and not could_hold_macros(sample.content):
        return OleReport()
    try:
        parser = VBA_Parser(name, data=bytes(sample.content))
    except Exception:
        # Not an Office file olevba understands: no macros, as PeekabooAV treats it.
        return OleReport()
    try:
        has_macros = bool(parser.detect_vba_macros() or parser.detect_xlm_macros())
        found = parser.extract_all_macros()
        # olevba reads plain text as VBA source; a lone "macro" that is the file itself is no macro.
        if has_macros and len(found) == 1 and len(found[0]) >= 3 and found[0][2] == name:
            has_macros = False
        macros = [m[3] for m in found] if parser.detect_vba_macros() else []
    except Exception as exc:  # olevba raises many kinds on damaged files
        log.info("olevba could not finish on %s: %s", sample.sha256, exc)
        parser.close()
        return OleReport()
    return OleReport(parser, has_macros, macros)
