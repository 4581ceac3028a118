"""File typing with libmagic (by content) and the mimetypes table (by name)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import magic

from mailowl.analysis import analyzer
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


def type_by_content(content: bytes) -> tuple[str | None, str | None]:
    """(MIME type, human description) by content, as `file --mime-type` and `file` say."""
    mime, text = _magics()
    head = content[:_MAGIC_WINDOW]
    return (mime.from_buffer(head) or None, text.from_buffer(head) or None)


@dataclass(frozen=True, slots=True)
class FileReport:
    FIELDS = frozenset({"type_by_content", "type_by_name", "type_as_text", "mime_types"})

    type_by_content: str | None
    type_by_name: str | None
    type_as_text: str | None

    @property
    def mime_types(self) -> set[str]:
        return {t for t in (self.type_by_name, self.type_by_content) if t}


@analyzer("filereport")
def file_report(sample: Sample, env: object = None) -> FileReport:
    mime, text = type_by_content(sample.content)
    return FileReport(type_by_content=mime, type_by_name=sample.type_by_name, type_as_text=text)
