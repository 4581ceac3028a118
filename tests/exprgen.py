"""Seeded generator of expression/fact cases for the differential test against PeekabooAV 2.1.

Expressions are built from typed pieces (strings, numbers, booleans, lists, sets, results, regexes) so
that most of them evaluate to something rather than fail on the first operator, with a share of
mismatched types, PeekabooAV's odd forms and unknown names mixed in. Every operator, literal kind,
escape and attribute of PeekabooAV's reports occurs; layout (spaces, newlines, tabs) varies too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ATTRIBUTES: dict[str, dict[str, str]] = {
    "sample": {"filename": "str", "name_declared": "str", "type_declared": "str", "content_disposition": "str",
               "file_extension": "str", "file_size": "int", "sha256sum": "str"},
    "filereport": {"type_by_content": "str", "type_by_name": "str", "type_as_text": "str", "mime_types": "set"},
    "olereport": {"has_office_macros": "bool", "vba_code": "str", "has_autoexec": "bool", "detected_autoexec": "str",
                  "is_suspicious": "bool", "detected_suspicious": "str"},
    "knownreport": {"known": "bool", "last_result": "result", "result": "result", "worst_result": "result",
                    "first": "int", "last": "int"},
}
RESULTS = ["bad", "fail", "good", "ignore", "unknown"]
RESULT_NAMES = ["unchecked", "unknown", "ignored", "good", "failed", "bad"]
WORDS = ["exe", "xe", "doc", "docx", "MS-DOS executable", "application/x-dosexec", "text/plain", "PE32", "a.exe",
         "inline", "attachment", "", "a", "AutoOpen", "[]", "smime.p7s", "x y", "e"]
REGEXES = ["exe", "^exe$", "doc", "PE32", "^MS-DOS", "e.e", "\\\\.exe$", "\\.exe", "[a-z]+", "", "x\\/y", "text/.*",
           "application/x-.*", "smime.p7[mcs]", "Auto(Open|Close)", ".*", "MZ", "\\\\d", "a|b", "(?i)EXE"]
ESCAPED = ["\\n", "\\t", "\\\\n", "\\\\t", "\\\\", "\\'", '\\"', "\\.", "\\x", "\\r", "\\f", "\t"]


#: the facts cases start from, by name (realistic: an executable, a macro document, a text file, no name)
PROFILES: dict[str, dict[str, dict[str, Any]]] = json.loads((Path(__file__).parent / "data/expr/profiles.json").read_text())


class Generator:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def pick(self, items: list[Any]) -> Any:
        return self.r.choice(items)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # literals
    def string(self) -> str:
        body = self.pick(WORDS)
        if self.chance(0.25):
            cut = self.r.randint(0, len(body))
            body = body[:cut] + self.pick(ESCAPED) + body[cut:]
        quote = self.pick(["'", '"'])
        return quote + body + quote

    def regex(self) -> str:
        body = self.pick(REGEXES)
        if self.chance(0.1):
            body += self.pick(["\\n", "\\t", "\t", "\\\\"])
        return f"/{body}/"

    def int_literal(self) -> str:
        return str(self.pick([0, 1, 2, 3, 5, 7, 14, 256, 257, 1000, 4096, 10**20]))

    def real(self) -> str:
        return self.pick(["0.5", "1.0", "2.5", "3.14", "0.0", "1000.0"])

    def attribute(self, kind: str | None = None) -> str:
        choices = [(report, name) for report, attrs in ATTRIBUTES.items() for name, k in attrs.items()
                   if kind is None or k == kind]
        report, name = self.pick(choices)
        if self.chance(0.05):
            return self.pick([f"({report}).{name}", f"{report} . {name}", f"({report}.{name})", f"{report}.({name})"])
        return f"{report}.{name}"

    # typed expressions
    def of(self, kind: str, depth: int) -> str:
        maker: Callable[[int], str] = getattr(self, f"_{kind}")
        return maker(depth)

    def any(self, depth: int) -> str:
        return self.of(self.pick(["str", "int", "bool", "list", "set", "result", "regex", "num", "none"]), depth)

    def _none(self, depth: int) -> str:
        return "None"

    def _str(self, depth: int) -> str:
        if depth > 2 or self.chance(0.5):
            return self.string() if self.chance(0.5) else self.attribute("str")
        left = self._str(depth + 1)
        # never '%s' % a regex: its text is an object's address in PeekabooAV (docs/rules.md)
        formatted = self.of(self.pick(["str", "int", "set", "result", "none"]), depth + 1)
        return self.pick([f"{left} + {self._str(depth + 1)}", f"{left} * {self._int(depth + 1)}",
                          f"'%s' % {formatted}", f"'x%sy' % {self._str(depth + 1)}", f"({left})",
                          f"{self.attribute('str')}.upper" if self.chance(0.1) else left])

    def _int(self, depth: int) -> str:
        if depth > 2 or self.chance(0.45):
            return self.int_literal() if self.chance(0.5) else self.attribute("int")
        op = self.pick(["+", "-", "*", "//", "%", "**", "<<", ">>", "&", "|", "^", "/"])
        if op in ("**", "<<"):
            return f"{self._int(depth + 1)} {op} {self.pick(['0', '1', '2', '3'])}"
        if self.chance(0.2):
            return f"{self.pick(['-', '+', '~', '- -'])}{self._int(depth + 1)}"
        return f"{self._int(depth + 1)} {op} {self._int(depth + 1)}"

    def _num(self, depth: int) -> str:
        return self.pick([self.real(), f"{self._int(depth + 1)} / {self.pick(['2', '3', '0.5'])}",
                          f"{self.real()} * {self._int(depth + 1)}", "sample.file_size.real"])

    def _regex(self, depth: int) -> str:
        return self.regex()

    def _result(self, depth: int) -> str:
        if self.chance(0.6):
            return self.pick(RESULTS)
        return self.attribute("result") + (".name" if self.chance(0.1) else "")

    def _list(self, depth: int) -> str:
        if depth > 2 or self.chance(0.6):
            items = [self.pick([self.string, self.regex, self.int_literal, lambda: self.attribute("str"),
                                lambda: self.pick(RESULTS + ["None", "True", "False"])])()
                     for _ in range(self.r.randint(0, 3))]
            return "[" + ", ".join(items) + "]"
        return self.pick([f"{self._list(depth + 1)} + {self.pick([self._list, self._str, self._set])(depth + 1)}",
                          f"{self._list(depth + 1)} * {self.pick(['0', '2'])}"])

    def _set(self, depth: int) -> str:
        if depth > 2 or self.chance(0.6):
            if self.chance(0.6):
                items = [self.pick([self.string, self.int_literal, lambda: self.attribute("str"),
                                    lambda: self.pick(RESULTS + ["None", "True"])])()
                         for _ in range(self.r.randint(0, 3))]
                if self.chance(0.03):
                    items.append(self.regex())
                return "{" + ", ".join(items) + "}"
            return self.attribute("set")
        return f"{self._set(depth + 1)} {self.pick(['|', '&', '-', '^'])} {self._set(depth + 1)}"

    def comparison(self, depth: int) -> str:
        op = self.pick(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not", "isdisjoint"])
        kinds = {"in": ["str", "regex", "list"], "not in": ["str", "regex"], "isdisjoint": ["set", "list"],
                 "is": ["none", "bool", "result"], "is not": ["none", "result"]}.get(op, [])
        left = self.of(self.pick(kinds), depth + 1) if kinds and self.chance(0.7) else self.any(depth + 1)
        right_kind = {"in": ["str", "list", "set", "regex", "none"], "not in": ["str", "list", "set", "none"],
                      "isdisjoint": ["set", "list"]}.get(op, ["str", "regex", "int", "list", "set", "result", "none"])
        right = self.of(self.pick(right_kind), depth + 1)
        text = f"{left} {op} {right}"
        if self.chance(0.1):
            text += f" {self.pick(['==', '<', '<=', '!=', 'in'])} {self.any(depth + 1)}"
        return text

    def _bool(self, depth: int) -> str:
        if depth > 3 or self.chance(0.2):
            return self.pick(["True", "False", self.attribute("bool"), self.attribute("bool")])
        choice = self.r.random()
        if choice < 0.45:
            return self.comparison(depth)
        if choice < 0.6:
            return f"not {self._bool(depth + 1)}"
        if choice < 0.85:
            joined = f" {self.pick(['and', 'or'])} ".join(self._bool(depth + 1) for _ in range(self.r.randint(2, 3)))
            return f"({joined})" if self.chance(0.3) else joined
        return self.pick([f"({self._bool(depth + 1)})", self.any(depth + 1), self.odd()])

    def odd(self) -> str:
        """Forms PeekabooAV accepts that a stricter parser would not, and names that do not exist."""
        return self.pick(["filereport", "sample", "(sample).filename", "not", "in", "and", "(True)", "nosuchreport",
                          "sample.nosuch", "sample.(file_size)", "sample.(a.b)", "knownreport.result.value",
                          "True or sample.nosuch", "False and nosuch.x", "+True is True", "good < good",
                          "bad == 6", "{bad, 6} == {6, bad}", "[1] + 'ab' == [1, 'a', 'b']"])

    def rhs(self) -> str:
        return self.pick(RESULTS * 4 + ["knownreport.result", "knownreport.worst_result", "None", "5", "(bad)",
                                        f"({self._bool(2)} -> bad)"])

    def expression(self) -> str:
        condition = self._bool(0)
        if self.chance(0.35):
            # false on PeekabooAV's 5-byte start-up dummy only: the rest is checked by running it, not at start-up
            condition = f"sample.file_size != 5 and ({condition})"
        text = f"{condition} -> {self.rhs()}"
        if self.chance(0.05):
            text = f"{self._bool(1)} -> {text}" if self.chance(0.5) else f"({text}) -> {self.rhs()}"
        return self.layout(text)

    def layout(self, text: str) -> str:
        """Vary whitespace outside literals: none, newlines, tabs."""
        if self.chance(0.7):
            return text
        out, quote = [], ""
        for char in text:
            if quote:
                quote = "" if char == quote and out[-1] != "\\" else quote
            elif char in "'\"/":
                quote = char
            elif char == " " and self.chance(0.3):
                char = self.pick(["", "\n", "\t", "  ", "\n\t"])
            out.append(char)
        return "".join(out)

    def facts(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """A profile's name and the attributes changed from it."""
        changes: dict[str, dict[str, Any]] = {}
        if self.chance(0.3):
            report = self.pick(list(ATTRIBUTES))
            name, kind = self.pick(list(ATTRIBUTES[report].items()))
            changes[report] = {name: self.pick({"str": [None, "", "exe", "MS-DOS executable", "a\tb", "a\nb"],
                                                "int": [0, 5, 300], "bool": [True, False],
                                                "set": [[], ["text/plain"], ["application/x-dosexec", "text/plain"]],
                                                "result": RESULT_NAMES}[kind])}
        return self.pick(sorted(PROFILES)), changes

    def case(self) -> dict[str, Any]:
        profile, changes = self.facts()
        return {"expression": self.expression(), "profile": profile, "changes": changes}

    def cases(self, count: int) -> list[dict[str, Any]]:
        return [self.case() for _ in range(count)]


def facts_of(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The full facts of a case given as a profile and changes."""
    base = PROFILES[case["profile"]]
    changes = case.get("changes", {})
    return {report: {**values, **changes.get(report, {})} for report, values in base.items()}


def cases(seed: int, count: int) -> list[dict[str, Any]]:
    return Generator(seed).cases(count)


# running both sides ---------------------------------------------------------------------------------------

ROOT = Path(__file__).parent.parent
PEEKABOO_PYTHON = ROOT / ".venv-peekaboo" / "bin" / "python"
DRIVER = Path(__file__).parent / "peekaboo_expr.py"
CORPUS = Path(__file__).parent / "data" / "expr" / "corpus.jsonl"
# Set iteration order follows string hashes, and PeekabooAV's outcome can depend on it (a regex tested
# against a set with mixed members): both sides run with the same hash seed.
ENV = {**os.environ, "PYTHONHASHSEED": "0"}
#: mailowl refuses these at start-up although PeekabooAV starts with them (docs/rules.md says why)
REFUSALS = ("a set cannot hold a regex", "is an internal of PeekabooAV", "nested more than")


def _lines(cases: list[dict[str, Any]]) -> str:
    return "".join(json.dumps({"expression": c["expression"], "facts": facts_of(c) if "profile" in c else c["facts"]})
                   + "\n" for c in cases)


def run_peekaboo(cases: list[dict[str, Any]], processes: int = 2) -> list[str | None]:
    """PeekabooAV's outcome of each case: "load", "failed", a result name or None."""
    chunks = [cases[i::processes] for i in range(processes)]
    with contextlib.ExitStack() as stack:  # files, not pipes: the processes run side by side, unblocked
        procs = []
        for chunk in chunks:
            given, taken = (stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            given.write(_lines(chunk))
            given.seek(0)
            procs.append((subprocess.Popen([str(PEEKABOO_PYTHON), str(DRIVER)], stdin=given, stdout=taken,
                                           text=True, env=ENV), taken))
        answers = []
        for proc, taken in procs:
            if proc.wait(timeout=1800) != 0:
                raise RuntimeError("the PeekabooAV driver failed")
            taken.seek(0)
            answers.append(taken.read().splitlines())
    merged: list[str | None] = [None] * len(cases)
    for index, lines in enumerate(answers):
        for position, line in enumerate(lines):
            answer = json.loads(line)
            merged[index + position * processes] = (
                "recursion" if "RecursionError" in (answer["error"] or "") else
                "load" if answer["outcome"] == "load" else answer["result"])
    return merged


def run_mailowl(cases: list[dict[str, Any]], dialect: str = "peekaboo") -> list[dict[str, Any]]:
    """mailowl's answers, from `mailowl expr eval --batch` as shipped."""
    done = subprocess.run([sys.executable, "-m", "mailowl.cli", "expr", "eval", "--batch", "-", "--dialect", dialect],
                          input=_lines(cases), capture_output=True, text=True, env=ENV, timeout=600, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def differences(cases: list[dict[str, Any]], peekaboo: list[str | None],
                answers: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None, str | None]]:
    """(expression, PeekabooAV's outcome, mailowl's, mailowl's error) of every silent difference."""
    found = []
    for case, theirs, answer in zip(cases, peekaboo, answers, strict=True):
        ours = "load" if answer["phase"] == "load" else answer["result"]
        if theirs == "recursion":  # PeekabooAV's parser ran out of stack: it refuses, mailowl may accept
            continue
        if ours == "load" and theirs != "load" and any(r in answer["error"] for r in REFUSALS):
            continue  # refused at start-up with a reason, never silently different
        if ours != theirs:
            found.append((case["expression"], theirs, ours, answer["error"]))
    return found


def record(seeds: list[int], count: int, keep_load: float = 0.2) -> None:
    """Append to the corpus the generated cases on which both sides agree, with PeekabooAV's outcome
    (most start-up refusals are left out: they are many and alike)."""
    picked = random.Random(0)
    with CORPUS.open("a") as out:
        for seed in seeds:
            cases = Generator(seed).cases(count)
            theirs = run_peekaboo(cases)
            ours = run_mailowl(cases)
            bad = {c[0] for c in differences(cases, theirs, ours)}
            for case, outcome in zip(cases, theirs, strict=True):
                if case["expression"] in bad or outcome == "recursion":
                    continue
                if outcome == "load" and picked.random() > keep_load:
                    continue
                out.write(json.dumps({**case, "peekaboo": outcome}) + "\n")
            print(f"seed {seed}: {count} cases, {len(bad)} differences", file=sys.stderr)


if __name__ == "__main__":
    # python tests/exprgen.py SEED... COUNT: record agreeing cases of these seeds into the corpus
    record([int(s) for s in sys.argv[1:-1]], int(sys.argv[-1]))
