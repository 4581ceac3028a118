"""A sample: one attachment's content plus what the sender declared about it."""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import string
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

_EXT_ALLOWED = string.ascii_letters + string.digits + string.punctuation.translate(str.maketrans("", "", "?;&"))

if not mimetypes.inited:
    mimetypes.init()
mimetypes.add_type("application/javascript", ".jse")


def basename(name: str | None) -> str | None:
    """Only the last path component of a declared name; never usable as a path."""
    if name is None:
        return None
    name = name.replace("\\", "/")
    base = posixpath.basename(name).replace("\x00", "")
    if base in ("", ".", ".."):
        return None
    return base


def compute_identity(sha256: str, filename: str | None, type_declared: str | None,
                     disposition: str | None) -> str:
    material = sha256 + "".join(x for x in (filename, type_declared, disposition) if x)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def file_extension(filename: str | None) -> str | None:
    if filename is None:
        return None
    ext = posixpath.splitext(filename)[1][1:]
    if ext.strip(_EXT_ALLOWED):
        return None
    return ext


@dataclass(eq=False)
class Sample:
    content: bytes
    filename: str | None = None
    type_declared: str | None = None
    content_disposition: str | None = None
    #: analysers' reports, filled lazily by the rule engine
    reports: dict[str, Any] = field(default_factory=dict, repr=False)
    #: nesting depth when the sample was unpacked from an archive
    depth: int = 0

    def __post_init__(self) -> None:
        self.filename = basename(self.filename)
        # a sender's NUL in a MIME header would reach every table the sample's facts are written to, and
        # PostgreSQL refuses it in text (as basename drops it from file names)
        if self.type_declared is not None and "\x00" in self.type_declared:
            self.type_declared = self.type_declared.replace("\x00", "")
        if self.content_disposition is not None and "\x00" in self.content_disposition:
            self.content_disposition = self.content_disposition.replace("\x00", "")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @cached_property
    def sha1(self) -> str:
        return hashlib.sha1(self.content).hexdigest()

    @cached_property
    def md5(self) -> str:
        return hashlib.md5(self.content).hexdigest()

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property
    def identity(self) -> str:
        return compute_identity(self.sha256, self.filename, self.type_declared, self.content_disposition)

    @cached_property
    def file_extension(self) -> str | None:
        return file_extension(self.filename)

    @cached_property
    def type_by_name(self) -> str | None:
        if not self.filename:
            return None
        return mimetypes.guess_type(self.filename)[0]

    def facts(self, light: bool = False) -> dict[str, Any]:
        """What the API reports about the sample itself; ``light`` leaves out what costs hashing beyond
        the identity (it is filled in by the analysis, off the event loop)."""
        if light:
            return {"filename": self.filename, "type_declared": self.type_declared,
                    "content_disposition": self.content_disposition, "size": self.size, "sha256": self.sha256,
                    "identity": self.identity}
        return {
            "filename": self.filename,
            "type_declared": self.type_declared,
            "content_disposition": self.content_disposition,
            "file_extension": self.file_extension,
            "type_by_name": self.type_by_name,
            "type_by_content": None,
            "size": self.size,
            "sha256": self.sha256,
            "sha1": self.sha1,
            "md5": self.md5,
            "identity": self.identity,
        }
