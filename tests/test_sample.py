import pytest

from mailowl.analysis.sample import Sample, basename, compute_identity, file_extension


def test_identity_matches_peekaboo_test_vector() -> None:
    sample = Sample(b"test", "test.py", "text/x-python", "inline")
    assert sample.identity == "39296b9e8c2ce1fba38a60fd9cc97ccf45464cf11bbc174f92658f213381229f"


def test_identity_leaves_out_what_is_missing() -> None:
    sha = Sample(b"x").sha256
    assert Sample(b"x").identity == compute_identity(sha, None, None, None)
    assert Sample(b"x", "a.txt").identity == compute_identity(sha, "a.txt", None, None)
    assert Sample(b"x", "a.txt").identity != Sample(b"x", "a.txt", "text/plain").identity


@pytest.mark.parametrize(("name", "ext"), [
    ("a.docx", "docx"), ("a.tar.gz", "gz"), ("noext", ""), ("a.docx$", "docx$"), ("a.docx~", "docx~"),
    ("a.foo1%", "foo1%"), ("a.jpg?resize=1", None), ("a.x;y", None), ("a.x&y", None), ("a.dö", None),
    ("a.d x", None), (".bashrc", ""), (None, None),
])
def test_file_extension_rules(name: str | None, ext: str | None) -> None:
    assert file_extension(name) == ext


@pytest.mark.parametrize(("raw", "clean"), [
    ("../../etc/passwd", "passwd"), ("C:\\Users\\x\\evil.exe", "evil.exe"), ("/abs/path.pdf", "path.pdf"),
    ("..", None), ("dir/", None), ("", None), ("a\x00b.txt", "ab.txt"),
])
def test_filename_never_becomes_a_path(raw: str, clean: str | None) -> None:
    assert basename(raw) == clean
    assert Sample(b"x", raw).filename == clean


def test_facts_carry_hashes_and_types() -> None:
    facts = Sample(b"hello", "notes.txt", "text/plain", "attachment").facts()
    assert facts["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert facts["md5"] == "5d41402abc4b2a76b9719d911017c592"
    assert facts["sha1"] == "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
    assert facts["size"] == 5
    assert facts["type_by_name"] == "text/plain"
    assert facts["file_extension"] == "txt"
