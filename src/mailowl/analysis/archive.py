"""Unpacking archives into member samples, within one budget per top-level sample.

Supported: zip, 7z, rar (through the unrar, unar or bsdtar tool), tar, single-stream gzip, bzip2 and
xz, and tar inside those. The budget (bytes unpacked, members, compression ratio) covers every nesting
level of one top-level sample and is charged chunk by chunk while decompressing, so a bomb is stopped
after at most ``max_total_size`` unpacked bytes, never after filling memory.

An archive counts as read only if its reader reached its end: a reader that stops early without an
error (a RAR whose headers turn to garbage, a tar with a bad header after the first member, a
truncated gzip) makes the archive damaged, not an archive with fewer members.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from mailowl.analysis.sample import Sample

_CHUNK = 1 << 16
_TAR_BLOCK = 512


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_depth: int = 3
    #: archive entries (files, directories, links) across all nesting levels
    max_members: int = 1000
    #: bytes unpacked across all nesting levels of one top-level sample
    max_total_size: int = 128 * 1024 * 1024
    #: bytes unpacked across all levels per byte of the top-level sample
    max_ratio: float = 100.0
    #: the ratio is judged once this much was unpacked, so small well-compressed archives pass
    ratio_min_size: int = 1024 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class LimitHit(Exception):
    """An archive exceeds a configured limit; the message says which."""


class Encrypted(Exception):
    pass


class Damaged(Exception):
    """The archive's reader stopped before the archive's end."""


class Budget:
    """What one top-level sample may unpack, shared by every nesting level below it."""

    def __init__(self, limits: ArchiveLimits, packed_size: int) -> None:
        self.limits = limits
        self.packed = max(packed_size, 1)
        self.unpacked = 0
        self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise LimitHit(f"more than {self.limits.max_members} members in all nested archives together")

    def expect(self, size: int, name: str) -> None:
        """Refuse early what a member's declared size says will not fit; sizes may lie, reads are charged too."""
        self._check(self.unpacked + max(size, 0), name)

    def charge(self, size: int, name: str) -> None:
        self.unpacked += size
        self._check(self.unpacked, name)

    def _check(self, total: int, name: str) -> None:
        lim = self.limits
        if total > lim.max_total_size:
            raise LimitHit(f"unpacked size exceeds {lim.max_total_size} bytes in all nested archives together "
                           f"(at member {name!r})")
        if total >= lim.ratio_min_size and total / self.packed > lim.max_ratio:
            raise LimitHit(f"compression ratio above {lim.max_ratio:g}:1 ({total} bytes unpacked from a "
                           f"{self.packed}-byte sample, at member {name!r})")

    def read(self, stream: Readable, name: str) -> bytes:
        # BytesIO hands over its buffer without copying, so a member costs its size once, not twice
        out = io.BytesIO()
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            self.charge(len(chunk), name)
            out.write(chunk)
        return out.getvalue()


@dataclass(slots=True)
class ArchiveReport:
    FIELDS = frozenset({"is_archive", "format", "members", "member_count", "encrypted", "total_size",
                        "limit_hit", "error"})

    is_archive: bool = False
    format: str | None = None
    members: list[str] = field(default_factory=list)
    total_size: int = 0
    encrypted: bool = False
    limit_hit: str | None = None
    error: str | None = None
    contents: list[Sample] = field(default_factory=list, repr=False)

    @property
    def member_count(self) -> int:
        return len(self.members)


def detect_format(data: bytes) -> str | None:
    head = data[:512]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith((b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")):
        return "rar"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "tar"
    return None


Members = list[tuple[str, bytes]]


def _zip(data: bytes, budget: Budget) -> Members:
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            budget.member()
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise Encrypted(info.filename)
            budget.expect(info.file_size, info.filename)
            with zf.open(info) as stream:
                out.append((info.filename, budget.read(stream, info.filename)))
    return out


class _LastRead:
    """Remembers the last block tarfile read: the header its iteration ended on."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.last = b""

    def read(self, size: int = -1) -> bytes:
        self.last = self.raw.read(size)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _tar(raw: IO[bytes], budget: Budget) -> Members:
    out = []
    fileobj = _LastRead(raw)
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:  # type: ignore[call-overload]
        for info in tf:
            budget.member()
            if not info.isfile():
                continue
            budget.expect(info.size, info.name)
            stream = tf.extractfile(info)
            if stream is not None:
                out.append((info.name, budget.read(stream, info.name)))
        # tarfile ends its iteration silently at a bad header after the first member: only an
        # end-of-archive block (or the data's end) means every member was seen. The block is taken
        # from what tarfile read, not read again: in a compressed tar, seeking back decompresses
        # everything once more.
        if fileobj.last and fileobj.last != b"\x00" * _TAR_BLOCK:
            raise Damaged(f"bad tar header at offset {tf.offset}")
    return out


class _Charged:
    """A py7zr output that charges the budget for every write, so extraction stops at the limit."""

    def __init__(self, name: str, budget: Budget) -> None:
        self.name = name
        self.budget = budget
        self.out = io.BytesIO()

    def write(self, s: bytes | bytearray) -> int:
        self.budget.charge(len(s), self.name)
        return self.out.write(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.out.tell()

    def close(self) -> None:
        pass


def _7z(data: bytes, budget: Budget) -> Members:
    import py7zr
    from py7zr.exceptions import PasswordRequired
    from py7zr.io import Py7zIO, WriterFactory

    outputs: list[_Charged] = []

    class Factory(WriterFactory):
        def create(self, filename: str) -> Py7zIO:
            product = _Charged(filename, budget)
            outputs.append(product)
            return product  # type: ignore[return-value]

    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data))
    except PasswordRequired:
        raise Encrypted("7z") from None  # the member list itself is encrypted
    with archive as zf:
        if zf.needs_password():
            raise Encrypted("7z")
        infos = zf.list()
        for info in infos:
            budget.member()
            if not info.is_directory:
                budget.expect(info.uncompressed, info.filename)
        zf.extractall(factory=Factory())
    files = {i.filename for i in infos if not i.is_directory}
    return [(o.name, o.out.getvalue()) for o in outputs if o.name in files]


def _rar(data: bytes, budget: Budget) -> Members:
    import rarfile

    out = []
    # errors="strict": the default stops at the first unreadable header and reports what came before
    # as the whole archive (0 members for garbage after the signature).
    with rarfile.RarFile(io.BytesIO(data), errors="strict") as rf:
        if rf.needs_password():
            raise Encrypted("rar")
        for info in rf.infolist():
            budget.member()
            if info.is_dir():
                continue
            budget.expect(info.file_size, info.filename)
            with rf.open(info) as stream:
                out.append((info.filename, budget.read(stream, info.filename)))
    return out


#: stream format -> (tarfile's compression name, filename suffixes the inner file's name drops)
_STREAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gzip": ("gz", (".gz", ".tgz")),
    "bzip2": ("bz2", (".bz2", ".tbz2")),
    "xz": ("xz", (".xz", ".txz")),
}


def _decompressing(fmt: str, data: bytes) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    raw = io.BytesIO(data)
    if fmt == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "bzip2":
        return bz2.BZ2File(raw)
    return lzma.LZMAFile(raw)


def _stream(fmt: str, data: bytes, budget: Budget, sample: Sample) -> tuple[str, Members]:
    tar_mode, suffixes = _STREAMS[fmt]
    with _decompressing(fmt, data) as stream:
        head = stream.read(_TAR_BLOCK)
    if detect_format(head) == "tar":
        # .tar.gz is one archive to users: the tar is read straight from the decompressing stream
        with _decompressing(fmt, data) as stream:
            return f"tar.{tar_mode}", _tar(stream, budget)  # type: ignore[arg-type]
    budget.member()
    name = _inner_name(sample, suffixes)
    # the readers raise EOFError for a stream cut short, so a truncated file is damaged
    with _decompressing(fmt, data) as stream:
        return fmt, [(name, budget.read(stream, name))]


def _inner_name(sample: Sample, suffixes: tuple[str, ...]) -> str:
    name = sample.filename or "stream"
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


_READERS: dict[str, Callable[[bytes, Budget], Members]] = {
    "zip": _zip,
    "tar": lambda d, b: _tar(io.BytesIO(d), b),
    "7z": _7z,
    "rar": _rar,
}


def unpack(sample: Sample, budget: Budget | ArchiveLimits) -> ArchiveReport:
    """Read an archive's members as samples one level deeper, charging ``budget`` (the top-level
    sample's; given limits start a fresh one). Never raises for bad input."""
    if isinstance(budget, ArchiveLimits):
        budget = Budget(budget, sample.size)
    limits = budget.limits
    fmt = detect_format(sample.content)
    report = ArchiveReport(format=fmt, is_archive=fmt is not None)
    if fmt is None:
        return report
    if sample.depth >= limits.max_depth:
        report.limit_hit = f"nested deeper than {limits.max_depth} archives"
        return report
    data = bytes(sample.content)
    try:
        if fmt in _STREAMS:
            report.format, members = _stream(fmt, data, budget, sample)
        else:
            members = _READERS[fmt](data, budget)
    except LimitHit as exc:
        report.limit_hit = str(exc)
        return report
    except Encrypted:
        report.encrypted = True
        return report
    except Exception as exc:  # damaged archive: say so, the rules decide what that means
        report.error = f"{report.format} archive could not be read: {type(exc).__name__}: {exc}"
        return report
    report.total_size = sum(len(c) for _, c in members)
    for name, content in members:
        report.members.append(name)
        report.contents.append(Sample(content, filename=name, depth=sample.depth + 1))
    return report
