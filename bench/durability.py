"""Durability costs: group-commit throughput of new jobs, and memory per job kept in the server's cache.

usage: .venv/bin/python bench/durability.py commits [--jobs 6000] [--clients 16] [--url URL]
       .venv/bin/python bench/durability.py memory [--jobs 20000]

`commits` runs the store in-process: CLIENTS tasks each create a job (waiting for its commit, as
`POST /v1/scan` does), finish it and create the next; it reports jobs/s and the commit latency for SQLite
with synchronous=normal and =full (or the one URL given). `memory` starts a real `mailowl serve`, posts
JOBS distinct samples, waits for every verdict, and reports RSS growth per job.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rest import ROOT, free_port, stop, wait_http  # noqa: E402

from mailowl.analysis.sample import Sample  # noqa: E402
from mailowl.results import Result, RuleResult  # noqa: E402
from mailowl.store import Store  # noqa: E402


async def _commits(url: str, n: int, clients: int, synchronous: str) -> dict[str, object]:
    store = Store(url, sqlite_synchronous=synchronous)
    await store.open()
    latencies: list[float] = []
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            sample = Sample(f"durability bench sample {i}".encode(), f"s{i}.bin")
            started = time.perf_counter()
            job = await store.new_job(sample.facts(light=True))
            latencies.append(time.perf_counter() - started)
            job.finish(Result.unknown, "bench", [RuleResult("final_rule", Result.unknown, "bench", True)],
                       datetime.now(UTC))
            store.job_finished(job)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    await store.flush()
    elapsed = time.perf_counter() - started
    await store.close()
    latencies.sort()
    return {"synchronous": synchronous, "jobs_per_s": round(n / elapsed, 1),
            "commit_wait_p50_ms": round(statistics.median(latencies) * 1e3, 2),
            "commit_wait_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2)}


def commits(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # the data directory's file system, not tmpfs
        if args.url:
            results.append(asyncio.run(_commits(args.url, args.jobs, args.clients, "normal")))
        else:
            for i, synchronous in enumerate(["normal", "full", "normal", "full"]):
                url = f"sqlite+aiosqlite:///{tmp}/bench-{i}.db"
                results.append(asyncio.run(_commits(url, args.jobs, args.clients, synchronous)))
    print(json.dumps({"jobs": args.jobs, "clients": args.clients, "runs": results}, indent=2))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _post(conn: http.client.HTTPConnection, name: str, data: bytes) -> int:
    boundary = "durabilitybench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn.request("POST", "/v2/scan", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return int(json.loads(conn.getresponse().read())["job_id"])


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "MAILOWL_MILTER_LISTEN": ""}
        if args.memory_jobs:
            env["MAILOWL_STORE_MEMORY_JOBS"] = str(args.memory_jobs)
        proc = subprocess.Popen([sys.executable, "-m", "mailowl.cli", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--data-dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_http(port, proc)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in range(200):  # warm up: imports, first analyses, allocator arenas
                _post(conn, f"warm{i}.bat", f"@echo warm {i}\r\n".encode())
            time.sleep(1)
            idle = _rss_mib(proc.pid)
            last = 0
            for i in range(args.jobs):
                last = _post(conn, f"s{i}.bat", f"@echo off\r\nrem sample {i}\r\n".encode())
            conn.request("GET", f"/v2/jobs/{last}?wait=60")
            conn.getresponse().read()
            time.sleep(1)
            full = _rss_mib(proc.pid)
        finally:
            stop(proc)
    cached = min(args.jobs, args.memory_jobs or 10_000)
    print(json.dumps({"jobs": args.jobs, "memory_jobs": args.memory_jobs or "default", "idle_rss_mib": round(idle, 1),
                      "rss_after_mib": round(full, 1),
                      "kib_per_cached_job": round((full - idle) * 1024 / cached, 2)}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("commits")
    c.add_argument("--jobs", type=int, default=6000)
    c.add_argument("--clients", type=int, default=16)
    c.add_argument("--url", default="")
    c.set_defaults(func=commits)
    m = sub.add_parser("memory")
    m.add_argument("--jobs", type=int, default=20_000)
    m.add_argument("--memory-jobs", type=int, default=0)
    m.set_defaults(func=memory)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
