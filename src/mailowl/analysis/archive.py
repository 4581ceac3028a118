"""Unpacking archives into member samples, within limits that stop decompression bombs.

Supported: zip, 7z, rar (through the unrar or bsdtar tool), tar, and single-stream gzip, bzip2 and xz.
Every read is bounded by what is left of the total size budget, so a bomb is detected while
decompressing, never after.
"""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from mailowl.analysis.sample import Sample

_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_depth: int = 3
    max_members: int = 1000
    max_total_size: int = 256 * 1024 * 1024
    max_ratio: float = 100.0
    #: ratios are only judged for members at least this large, so tiny well-compressed files pass
    ratio_min_size: int = 1024 * 1024


class LimitHit(Exception):
    """An archive exceeds a configured limit; the message says which and by how much."""


class Encrypted(Exception):
    pass


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


class _Budget:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.total = 0
        self.count = 0

    def member(self) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise LimitHit(f"more than {self.limits.max_members} members")

    def read(self, stream: IO[bytes], compressed_size: int | None, name: str) -> bytes:
        out = bytearray()
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            out += chunk
            self._check(len(out), compressed_size, name)
        self.total += len(out)
        return bytes(out)

    def _check(self, size: int, compressed_size: int | None, name: str) -> None:
        lim = self.limits
        if self.total + size > lim.max_total_size:
            raise LimitHit(f"unpacked size exceeds {lim.max_total_size} bytes (at member {name!r})")
        if compressed_size is not None and size >= lim.ratio_min_size:
            ratio = size / max(compressed_size, 1)
            if ratio > lim.max_ratio:
                raise LimitHit(f"member {name!r} compression ratio above {lim.max_ratio:g}:1")

    def declared(self, size: int, compressed_size: int | None, name: str) -> None:
        self._check(size, compressed_size, name)


def _zip(data: bytes, budget: _Budget) -> list[tuple[str, bytes]]:
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            budget.member()
            if info.flag_bits & 0x1:
                raise Encrypted(info.filename)
            budget.declared(info.file_size, info.compress_size, info.filename)
            with zf.open(info) as stream:
                out.append((info.filename, budget.read(stream, info.compress_size, info.filename)))
    return out


def _tar(data: bytes, budget: _Budget) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            if not info.isfile():
                continue
            budget.member()
            budget.declared(info.size, None, info.name)
            stream = tf.extractfile(info)
            if stream is not None:
                out.append((info.name, budget.read(stream, None, info.name)))
    return out


def _7z(data: bytes, budget: _Budget) -> list[tuple[str, bytes]]:
    import py7zr
    from py7zr.exceptions import PasswordRequired
    from py7zr.io import BytesIOFactory

    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data))
    except PasswordRequired:
        raise Encrypted("7z") from None  # the member list itself is encrypted
    with archive as zf:
        if zf.needs_password():
            raise Encrypted("7z")
        infos = [i for i in zf.list() if not i.is_directory]
        packed = max(len(data), 1)
        total = 0
        for info in infos:
            budget.member()
            total += info.uncompressed
            budget.declared(info.uncompressed, packed, info.filename)
        if total > budget.limits.max_total_size - budget.total:
            raise LimitHit(f"unpacked size exceeds {budget.limits.max_total_size} bytes")
        factory = BytesIOFactory(limit=budget.limits.max_total_size - budget.total + 1)
        zf.extractall(factory=factory)
    out = []
    for info in infos:
        buf = factory.products.get(info.filename)
        if buf is not None:
            buf.seek(0)
            content = buf.read()
            budget.total += len(content)
            out.append((info.filename, content))
    return out


def _rar(data: bytes, budget: _Budget) -> list[tuple[str, bytes]]:
    import rarfile

    out = []
    with rarfile.RarFile(io.BytesIO(data)) as rf:
        if rf.needs_password():
            raise Encrypted("rar")
        for info in rf.infolist():
            if info.is_dir():
                continue
            budget.member()
            budget.declared(info.file_size, info.compress_size, info.filename)
            with rf.open(info) as stream:
                out.append((info.filename, budget.read(stream, info.compress_size, info.filename)))
    return out


def _stream(make: Callable[[], Any], data: bytes, budget: _Budget, name: str) -> list[tuple[str, bytes]]:
    budget.member()
    dec = make()
    room = budget.limits.max_total_size - budget.total
    content = dec.decompress(data, room + 1)
    budget.declared(len(content), len(data), name)
    budget.total += len(content)
    return [(name, content)]


def _inner_name(sample: Sample, suffixes: tuple[str, ...]) -> str:
    name = sample.filename or "stream"
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


_READERS: dict[str, Callable[[bytes, _Budget, Sample], list[tuple[str, bytes]]]] = {
    "zip": lambda d, b, s: _zip(d, b),
    "tar": lambda d, b, s: _tar(d, b),
    "7z": lambda d, b, s: _7z(d, b),
    "rar": lambda d, b, s: _rar(d, b),
    "gzip": lambda d, b, s: _stream(lambda: zlib.decompressobj(wbits=47), d, b, _inner_name(s, (".gz", ".tgz"))),
    "bzip2": lambda d, b, s: _stream(bz2.BZ2Decompressor, d, b, _inner_name(s, (".bz2",))),
    "xz": lambda d, b, s: _stream(lzma.LZMADecompressor, d, b, _inner_name(s, (".xz",))),
}


def unpack(sample: Sample, limits: ArchiveLimits) -> ArchiveReport:
    """List and read an archive's members as samples one level deeper; never raises for bad input."""
    fmt = detect_format(sample.content)
    report = ArchiveReport(format=fmt, is_archive=fmt is not None)
    if fmt is None:
        return report
    if sample.depth >= limits.max_depth:
        report.limit_hit = f"nested deeper than {limits.max_depth} archives"
        return report
    budget = _Budget(limits)
    try:
        members = _READERS[fmt](bytes(sample.content), budget, sample)
    except LimitHit as exc:
        report.limit_hit = str(exc)
        return report
    except Encrypted:
        report.encrypted = True
        return report
    except Exception as exc:  # damaged archive: say so, the rules decide what that means
        report.error = f"{fmt} archive could not be read: {exc}"
        return report
    if fmt == "gzip" and detect_format(members[0][1]) == "tar":
        # .tar.gz is one archive to users: unpack the tar in the same step.
        try:
            members = _tar(members[0][1], _Budget(limits))
            report.format = "tar.gz"
        except LimitHit as exc:
            report.limit_hit = str(exc)
            return report
        except Exception as exc:
            report.error = f"tar archive could not be read: {exc}"
            return report
    report.total_size = sum(len(c) for _, c in members)
    for name, content in members:
        report.members.append(name)
        report.contents.append(Sample(content, filename=name, depth=sample.depth + 1))
    return report
