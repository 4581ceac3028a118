"""`mailowl expr eval --batch` end to end: 10,000 cases in one file, the command run as users run it
(process start, ruleset-free load, one answer per line), a few rounds.

usage: .venv/bin/python bench/expr_batch.py [--cases 10000] [--rounds 3]

Two corpora: the differential test's generator (tests/exprgen.py, seed 1: every operator, literal kind,
escape and attribute, facts of every report) and 10,000 distinct simple expressions on small facts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from tests.exprgen import _lines, cases  # noqa: E402

MAILOWL = ROOT / ".venv" / "bin" / "mailowl"


def simple(count: int) -> str:
    return "".join(json.dumps({"expression": f"sample.file_size == {i} and sample.file_extension == 'exe' -> bad",
                               "facts": {"sample": {"file_size": i, "file_extension": "exe"}}}) + "\n"
                   for i in range(count))


def run(path: Path, count: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([str(MAILOWL), "expr", "eval", "--batch", str(path)], capture_output=True, check=True)
    took = time.perf_counter() - started
    answers = done.stdout.count(b"\n")
    if answers != count:
        raise SystemExit(f"{path.name}: {answers} answers for {count} cases")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report: dict[str, object] = run_header()
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {"generated": _lines(cases(1, args.cases)), "simple": simple(args.cases)}
        for name, text in corpora.items():
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text(text)
            seconds = [round(run(path, args.cases), 2) for _ in range(args.rounds)]
            report[name] = {"cases": args.cases, "seconds": seconds,
                            "cases_per_s": [round(args.cases / s) for s in seconds]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
