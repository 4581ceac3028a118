"""Peak memory of the worker process analysing hostile archives stays below the bound (issue 7, point 3).

The corpus is analysed by a real worker process with the built-in ruleset, as the service runs it; its
peak RSS (VmHWM, reset before each sample through /proc/PID/clear_refs) is compared with its RSS when
idle, after a warm-up that loaded every archive library."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import py7zr
import pytest

from mailowl.analysis.sample import Sample
from mailowl.core.workers import Worker
from mailowl.results import Result
from mailowl.rules.engine import Verdict
from mailowl.rules.loader import load_engine
from mailowl.store.journal import KnownReport

MiB = 2**20
BOUND = 256 * MiB
RAR = Path(__file__).parent / "data" / "rar"


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sparse_block(seed: int = 7) -> bytes:
    """1 MiB that deflate packs only about 15:1 (2 % random bytes), so a member built from it reaches
    the size limit before the ratio limit."""
    rnd = random.Random(seed)
    block = bytearray(MiB)
    for pos in rnd.sample(range(MiB), MiB // 50):
        block[pos] = rnd.randrange(1, 256)
    return bytes(block)


def tar_of(count: int, member: bytes, mode: str) -> bytes:
    buf = io.BytesIO()
    level = {"w:xz": {"preset": 0}}.get(mode, {"compresslevel": 1})
    with tarfile.open(fileobj=buf, mode=mode, **level) as tf:  # type: ignore[call-overload]
        for i in range(count):
            info = tarfile.TarInfo(f"m{i}.bin")
            info.size = len(member)
            tf.addfile(info, io.BytesIO(member))
    return buf.getvalue()


def gzip_of_zeros(size: int) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = b"\x00" * (16 * MiB)
    return b"".join(comp.compress(zeros) for _ in range(size // len(zeros))) + comp.flush()


def overlapping_zip(entries: int, member: bytes) -> bytes:
    """One local file, many central directory entries pointing at it (a "quoted overlap" bomb)."""
    single = zip_of({"a.bin": member})
    cd_at = struct.unpack("<I", single[-6:-2])[0]
    record = single[cd_at:-22]
    records = record * entries  # the same name each time: zipfile checks names against the local header
    eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, entries, entries, len(records), cd_at, 0)
    return single[:cd_at] + records + eocd


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[bytes, str]]:
    sparse = sparse_block()
    member = sparse * 60  # 60 MiB: two fit the 128 MiB budget, the third does not
    zeros = b"\x00" * (60 * MiB)
    inner = zip_of({f"m{j}.bin": b"\x00" * 1_000_000 for j in range(100)})
    wide = zip_of({f"i{i}.zip": inner for i in range(100)})
    layer = zip_of({"zeros.bin": b"\x00" * (20 * MiB)})
    for depth in range(5):
        layer = zip_of({f"layer{depth}-{i}.zip": layer for i in range(4)})
    seven = io.BytesIO()
    with py7zr.SevenZipFile(seven, "w") as sz:
        for i in range(3):
            sz.writestr(zeros, f"z{i}.bin")
    return {
        "wide nested zip bomb (100 x 100 x 1 MB)": (wide, "wide.zip"),
        "deep nested zip bomb (42.zip style)": (layer, "deep.zip"),
        "zip of 20,000 members": (zip_of({f"{i}.txt": b"x" for i in range(20_000)}), "many.zip"),
        "zip of 3 x 60 MiB members packing 15:1": (zip_of({f"b{i}.bin": member for i in range(3)}), "big.zip"),
        "overlapping zip entries": (overlapping_zip(40, sparse * 20), "overlap.zip"),
        "7z of 3 x 60 MiB zeros": (seven.getvalue(), "big.7z"),
        "tar.gz of 3 x 60 MiB packing 15:1": (tar_of(3, member, "w:gz"), "big.tar.gz"),
        "tar.bz2 of 3 x 60 MiB zeros": (tar_of(3, zeros, "w:bz2"), "big.tar.bz2"),
        "tar.xz of 3 x 60 MiB zeros": (tar_of(3, zeros, "w:xz"), "big.tar.xz"),
        "gzip of 1 GiB of zeros": (gzip_of_zeros(1024 * MiB), "zeros.bin.gz"),
        "corrupt rar": (b"Rar!\x1a\x07\x01\x00" + random.Random(1).randbytes(5000), "bad.rar"),
        "rar": ((RAR / "rar3-subdirs.rar").read_bytes(), "ok.rar"),
    }


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(key)


def warm_up() -> list[tuple[bytes, str]]:
    """One small valid sample of every format, so library imports and caches count as idle memory."""
    small = b"hello world " * 100
    out = [(zip_of({"a.txt": small}), "a.zip"), (gzip.compress(small), "a.txt.gz"), (bz2.compress(small), "a.bz2"),
           (lzma.compress(small), "a.xz"), ((RAR / "rar5-blake.rar").read_bytes(), "a.rar")]
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as sz:
        sz.writestr(small, "a.txt")
    out.append((buf.getvalue(), "a.7z"))
    for mode in ("w:gz", "w:bz2", "w:xz"):
        out.append((tar_of(1, small, mode), f"a.tar.{mode[2:]}"))
    return out


@pytest.fixture
def worker() -> Iterator[Worker]:
    engine = load_engine()
    # the service's limit: max_memory, or three times the archive budget if that is larger
    limit = max(BOUND, 3 * engine.resources.archive_limits.max_total_size)
    w = Worker(lambda sample, lookup: engine.run(sample, lookup).to_wire(), "memory-test", limit)
    w.start()
    yield w
    w.kill()


def analyse(worker: Worker, data: bytes, name: str) -> tuple[Result, str]:
    outcome = worker.analyse(Sample(data, name), KnownReport(), lambda identity, timeout: KnownReport(), 300)
    verdict = Verdict.from_wire(outcome.verdict)
    return verdict.result, verdict.reason


def test_peak_memory_of_hostile_archives_stays_below_the_bound(worker: Worker,
                                                                corpus: dict[str, tuple[bytes, str]]) -> None:
    for data, name in warm_up():
        analyse(worker, data, name)
    idle = status(worker.pid, "VmRSS")
    peaks = {}
    for label, (data, name) in corpus.items():
        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        result, reason = analyse(worker, data, name)
        peaks[label] = status(worker.pid, "VmHWM") - idle
        print(f"{label}: {len(data)} bytes, peak +{peaks[label] / MiB:.1f} MiB, {result.name}: {reason[:150]}")
        if label != "rar":
            assert result in (Result.bad, Result.failed), (label, reason)  # a limit or damage, never unknown
    assert max(peaks.values()) < BOUND, peaks
    # memory is given back after the analyses, not kept at the peak
    assert status(worker.pid, "VmRSS") - idle < 64 * MiB
