"""Parse rate of `mailowl logs parse` against the single-regex grok approach, same lines, one core, one run.

Three figures for mailowl: the parser in this process (lines/s of ``parse``, one dict per line), the klms
NDJSON writer in this process (``to_ndjson`` from bytes in memory to bytes in memory), and the whole command
end to end (``mailowl logs parse --schema klms`` reading a file and writing NDJSON to a file, process start
included, with PYTHONUNBUFFERED=1 as in most container images), each against the grok port in-process.

usage: .venv/bin/python bench/logparse.py [--lines 200000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grok_port import grok  # noqa: E402
from header import run_header  # noqa: E402

from mailowl.logs.klms import parse, to_ndjson  # noqa: E402

THREATS = ["HEUR:Exploit.MSOffice.CVE-2018-0802.gen", "UDS:DangerousObject.Multi.Generic", "HEUR:Trojan.Script.Generic",
           "yara:EICAR_Test_File", "mailowl:expressions"]


def lines(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        prefix = f"Nov {rnd.randint(10, 28)} {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00 mx{i % 3} klms[{1000 + i % 50}]: "
        rcpts = ", ".join(f"user{rnd.randint(1, 999)}@firma.ru" for _ in range(rnd.randint(1, 4)))
        head = (f'message-id="<{rnd.getrandbits(48):x}@mail.example>": relay-ip="10.{i % 256}.{rnd.randint(0, 255)}.7": '
                f'action="{rnd.choice(["Skipped", "Rejected", "Skipped, Put in backup"])}": rules="{rnd.randint(1, 9)}": '
                f'size={rnd.randint(500, 900000)}: mail-from="{rnd.choice(["", "boss@firma.ru", "x@from.hell"])}": '
                f'rcpt-to="{rcpts}": kt-status="NotScanned, disabled by settings", av-status="Clean", '
                f'ap-status="Clean", as-status="Clean", ma-status="NotScanned, disabled by settings", '
                f'cf-status="NotScanned, disabled by settings"')
        if i % 3 == 0:
            parts = ": ".join(f'part "Invoice_{rnd.randint(1, 99999)}.doc", av-status="Infected", '
                              f'threats="{", ".join(rnd.sample(THREATS, rnd.randint(1, 3)))}"'
                              for _ in range(rnd.randint(1, 3)))
            out.append(f"{prefix}infected: {head}: {parts}")
        else:
            out.append(f"{prefix}clean: {head}")
    return out


def rate(func: object, data: list[str], rounds: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best lines/s of ``rounds`` passes, by wall-clock time (or by ``clock``, e.g. time.process_time)."""
    best = 0.0
    for _ in range(rounds):
        started = clock()
        for line in data:
            func(line)  # type: ignore[operator]
        best = max(best, len(data) / (clock() - started))
    return best


def ndjson_rate(data: list[str], rounds: int = 3) -> float:
    """Lines/s of to_ndjson (klms schema), file reading and writing left out."""
    source = "".join(line + "\n" for line in data).encode()
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        to_ndjson(io.BytesIO(source), io.BytesIO(), ecs=False)
        best = max(best, len(data) / (time.perf_counter() - started))
    return best


def command_rate(data: list[str], schema: str, rounds: int = 3) -> tuple[float, float]:
    """Lines/s of the CLI, file in and file out, process start included: by wall-clock time and by the
    child's CPU time (user + system, steadier on a shared machine); the best of ``rounds`` runs each."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    best_wall = best_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.log", Path(tmp) / "out.ndjson"
        source.write_text("".join(line + "\n" for line in data))
        for _ in range(rounds):
            with target.open("wb") as out:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", "--schema", schema, str(source)],
                               stdout=out, env=env, check=True)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
            with target.open("rb") as written:
                assert sum(1 for _ in written) == len(data)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            best_wall, best_cpu = max(best_wall, len(data) / wall), max(best_cpu, len(data) / cpu)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    data = lines(args.lines)
    failures = sum(1 for line in data if "tags" in parse(line))
    ours, regex, ndjson = rate(parse, data), rate(grok, data), ndjson_rate(data)
    (command, command_cpu), (ecs, ecs_cpu) = command_rate(data, "klms"), command_rate(data, "ecs")
    ours_cpu, regex_cpu = rate(parse, data, clock=time.process_time), rate(grok, data, clock=time.process_time)
    print(json.dumps({
        **run_header(), "lines": len(data), "with_parts": sum(1 for line in data if 'part "' in line),
        "parse_failures": failures, "mailowl_lines_per_s": round(ours), "grok_regex_lines_per_s": round(regex),
        "speedup": round(ours / regex, 2),
        "ndjson_klms_lines_per_s": round(ndjson), "ndjson_speedup": round(ndjson / regex, 2),
        "command_klms_lines_per_s": round(command), "command_speedup": round(command / regex, 2),
        "command_ecs_lines_per_s": round(ecs), "command_ecs_speedup": round(ecs / regex, 2),
        "by_cpu_time": {"mailowl_lines_per_s": round(ours_cpu), "grok_regex_lines_per_s": round(regex_cpu),
                        "speedup": round(ours_cpu / regex_cpu, 2), "command_klms_lines_per_s": round(command_cpu),
                        "command_speedup": round(command_cpu / regex_cpu, 2),
                        "command_ecs_lines_per_s": round(ecs_cpu), "command_ecs_speedup": round(ecs_cpu / regex_cpu, 2)},
    }, indent=2))

if __name__ == "__main__":
    main()
