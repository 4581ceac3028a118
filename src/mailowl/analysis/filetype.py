"""File typing with libmagic (by content) and the mimetypes table (by name)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import magic

from mailowl.analysis.sample import Sample

# libmagic never looks past its bytes_max (7 MiB by default); handing it more only costs a copy.
_MAGIC_WINDOW = 8 * 1024 * 1024
_local = threading.local()


def _magics() -> tuple[magic.Magic, magic.Magic]:
    pair = getattr(_local, "pair", None)
    if pair is None:
        pair = (magic.Magic(mime=True), magic.Magic())
        _local.pair = pair
    return pair


def type_by_content(content: bytes) -> str | None:
    """MIME type by content, as `file --mime-type` says."""
    return _magics()[0].from_buffer(content[:_MAGIC_WINDOW]) or None


def type_as_text(content: bytes) -> str | None:
    """Human description by content, as `file` says."""
    return _magics()[1].from_buffer(content[:_MAGIC_WINDOW]) or None


@dataclass(slots=True)
class FileReport:
    FIELDS = frozenset({"type_by_content", "type_by_name", "type_as_text", "mime_types"})

    type_by_content: str | None
    type_by_name: str | None
    content: bytes = field(repr=False, default=b"")
    _text: str | None = field(repr=False, default=None)

    @property
    def type_as_text(self) -> str | None:
        # libmagic's description costs as much as the MIME type: only when an expression reads it
        if self._text is None and self.content:
            self._text = type_as_text(self.content)
        return self._text

    def computed(self, name: str) -> bool:
        """False while reading ``name`` would still run libmagic (``type_as_text`` before anyone read it)."""
        return name != "type_as_text" or self._text is not None or not self.content

    @property
    def mime_types(self) -> set[str]:
        return {t for t in (self.type_by_name, self.type_by_content) if t}


def file_report(sample: Sample) -> FileReport:
    return FileReport(type_by_content(sample.content), sample.type_by_name, sample.content)
