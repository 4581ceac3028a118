"""Two or more versions of mailowl, alternately, under the REST benchmark's load: the only fair comparison
on a shared, noisy machine.

usage: .venv/bin/python bench/rest_ab.py SAMPLES PAIRS NAME=SRC_DIR [NAME=SRC_DIR ...]

Each NAME=SRC_DIR runs `mailowl serve` (embedded SQLite, fresh data directory) with PYTHONPATH=SRC_DIR, e.g.
a `git worktree` of an older commit's src/; an empty SRC_DIR means this checkout. Prints one JSON line per
round: fresh and cached samples/s, p99, and the CPU time per sample of the server's process tree
(worker processes included) (bench/load.py's rounds, 16 clients).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import make_samples, run_round  # noqa: E402
from milter import _cpu_seconds  # noqa: E402
from rest import ROOT, RULESET, free_port, stop, wait_http  # noqa: E402


def one_round(src: str, samples: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "MAILOWL_MILTER_LISTEN": ""}
        if src:
            env["PYTHONPATH"] = src
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "mailowl.cli", "serve",
                                 "--ruleset", str(RULESET), "--listen", f"127.0.0.1:{port}", "--data-dir",
                                 f"{tmp}/data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_http(port, proc)
        try:
            items = make_samples(samples, 1)
            out: dict[str, object] = {}
            for name in ("fresh", "cached"):
                cpu = tree_cpu_seconds(proc.pid)
                out[name] = asyncio.run(run_round("127.0.0.1", port, items, 16))
                out[f"{name}_cpu_us"] = round((tree_cpu_seconds(proc.pid) - cpu) * 1e6 / samples, 1)
            return out
        finally:
            stop(proc)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its living descendants (the server and its worker processes)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += _cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return total


def main() -> None:
    samples, pairs = int(sys.argv[1]), int(sys.argv[2])
    versions = [arg.split("=", 1) for arg in sys.argv[3:]]
    for _ in range(pairs):
        for name, src in versions:
            result = one_round(src, samples)
            fresh, cached = result["fresh"], result["cached"]
            assert isinstance(fresh, dict) and isinstance(cached, dict)
            print(name, json.dumps({"fresh": fresh.get("samples_per_s"), "cached": cached.get("samples_per_s"),
                                    "fresh_p99_ms": fresh.get("p99_ms"), "cached_p99_ms": cached.get("p99_ms"),
                                    "fresh_cpu_us": result["fresh_cpu_us"], "cached_cpu_us": result["cached_cpu_us"],
                                    "load": round(os.getloadavg()[0], 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
