"""Cortex parking: samples the ruleset decides without Cortex, with and without 1,000 samples parked on Cortex.

usage: .venv/bin/python bench/cortex.py [--parked 1000] [--samples 8000] [--clients 16] [--rounds 2] [--storm]

The Cortex stand-in of the tests (tests/cortex_server.py) runs as its own process and answers every job
after --delay seconds (10). `mailowl serve --analyzers` runs bench/ruleset.conf with one expression
added in front, which reads Cortex for `.cortex` files only. Each round, on a fresh server:
  A. no Cortex traffic: 16 clients (bench/load.py) submit --samples samples the ruleset decides alone;
  B. after a warm-up of --parked samples decided alone, --parked `.cortex` samples are submitted and
     parked (RSS read before and after, from /proc/<pid>/status), then the same kind of load runs
     while they wait (how many are parked is sampled during the load); finally every parked sample must
     get its verdict. With --storm the load starts when the first answers are due instead of right
     after parking, so that all of them arrive while it runs.
Rounds alternate A and B (the machine is shared). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from header import run_header  # noqa: E402
from load import BOUNDARY, make_samples, run_round  # noqa: E402
from rest import free_port, stop, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RULESET = ROOT / "bench" / "ruleset.conf"
CORTEX_EXPRESSION = "expression.0 : sample.file_extension == 'cortex' and cortexreport.FileInfoReport.md5sum != '' -> bad\n"
STAND_IN = """
import sys, time
sys.path.insert(0, {root!r})
from tests.cortex_server import CortexStandIn
server = CortexStandIn(token="bench", delay={delay}).start()
print(server.port, flush=True)
while True:
    time.sleep(3600)
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_load(port: int, samples: int, clients: int, seed: int, pids: dict[str, int]) -> dict[str, object]:
    """One load round, with the CPU seconds each of ``pids`` spent during it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load = asyncio.run(run_round("127.0.0.1", port, make_samples(samples, seed), clients))
    load["cpu_s"] = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()}
    return load


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def health(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")
    answer: dict[str, object] = json.loads(conn.getresponse().read())
    conn.close()
    return answer


def serve(tmp: Path, cortex_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    ruleset = tmp / f"ruleset-{port}.conf"
    ruleset.write_text(RULESET.read_text().replace("[expressions]\n", "[expressions]\n" + CORTEX_EXPRESSION))
    analyzers = tmp / "analyzers.conf"
    analyzers.write_text(f"[cortex]\nurl : http://127.0.0.1:{cortex_port}\napi_token : bench\npoll_interval : 5\n"
                         "maximum_job_age : 900\n")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailowl"), "serve", "--ruleset", str(ruleset),
                             "--analyzers", str(analyzers), "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(tmp / f"data-{port}")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MAILOWL_MILTER_LISTEN": ""})
    wait_http(port, proc, "/healthz")
    return proc, port


def park(port: int, n: int, connections: int = 8) -> list[int]:
    """Submit n `.cortex` samples over several connections at once; their job ids."""

    def some(part: range) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        ids = []
        for i in part:
            body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="parked{i}.cortex"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"parked %d " % i * 20 \
                + f"\r\n--{BOUNDARY}--\r\n".encode()
            conn.request("POST", "/v1/scan", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            ids.append(json.loads(conn.getresponse().read())["job_id"])
        conn.close()
        return ids

    with ThreadPoolExecutor(connections) as pool:
        return [i for ids in pool.map(some, [range(k, n, connections) for k in range(connections)]) for i in ids]


def verdicts(port: int, jobs: list[int], timeout: float) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for job in jobs:
        while True:
            conn.request("GET", f"/v1/report/{job}")
            response = conn.getresponse()
            raw = response.read()
            if response.status == 200:
                result = json.loads(raw)["result"]
                counts[result] = counts.get(result, 0) + 1
                break
            if time.monotonic() > deadline:
                counts["timeout"] = counts.get("timeout", 0) + 1
                break
            time.sleep(0.2)
    conn.close()
    return counts


def _parked(port: int) -> int:
    cortex = health(port).get("cortex")
    return int(cortex.get("parked", 0)) if isinstance(cortex, dict) else 0


def round_a(tmp: Path, cortex_port: int, samples: int, clients: int, seed: int,
            stand_in: int) -> dict[str, object]:
    proc, port = serve(tmp, cortex_port)
    try:
        load = timed_load(port, samples, clients, seed, {"server": proc.pid, "stand_in": stand_in, "client": os.getpid()})
        return {"load": load, "loadavg": loadavg()}
    finally:
        stop(proc)


def round_b(tmp: Path, cortex_port: int, parked: int, samples: int, clients: int, seed: int,
            delay: float, stand_in: int, storm: bool = False) -> dict[str, object]:
    proc, port = serve(tmp, cortex_port)
    try:
        # warm up first (allocator arenas, the store's caches, worker processes), so the RSS growth is
        # what the parked samples hold
        asyncio.run(run_round("127.0.0.1", port, make_samples(parked, seed + 1000), clients))
        time.sleep(1.0)
        before = rss(proc.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(1) as background:
            submitted = background.submit(park, port, parked)
            counts: list[int] = []
            while not submitted.done() or (counts and counts[-1] < parked and time.monotonic() - started < delay):
                counts.append(_parked(port))
                if counts[-1] >= parked:
                    break
                time.sleep(0.05)
            jobs = submitted.result()
        parked_after = time.monotonic() - started
        if storm:  # the load starts as the first answers are due, so that every answer lands inside it
            time.sleep(max(0.0, started + delay - 0.5 - time.monotonic()))
        at_start = _parked(port)
        after = rss(proc.pid)
        during: list[int] = []
        stop_watch = threading.Event()

        def watch() -> None:
            while not stop_watch.wait(0.25):
                during.append(_parked(port))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            load = timed_load(port, samples, clients, seed, {"server": proc.pid, "stand_in": stand_in, "client": os.getpid()})
        finally:
            stop_watch.set()
            watcher.join()
        outcome = verdicts(port, jobs, timeout=120)
        return {"load": load, "parked": parked, "parked_when_load_started": at_start,
                "parked_during_load_min_max": [min(during, default=0), max(during, default=0)],
                "seconds_to_park": round(parked_after, 2), "rss_before_mib": round(before / 2**20, 1),
                "rss_parked_mib": round(after / 2**20, 1),
                "bytes_per_parked_sample": round((after - before) / max(at_start, 1)),
                "parked_verdicts": outcome, "loadavg": loadavg()}
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parked", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--delay", type=float, default=10.0)
    parser.add_argument("--storm", action="store_true",
                        help="start B's load half a second before the first Cortex answer is due, not right "
                             "after parking: all answers arrive during the load (the worst case)")
    args = parser.parse_args()
    report: dict[str, object] = {
        **run_header(), "loadavg_at_start": loadavg(),
    }
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN.format(root=str(ROOT), delay=args.delay)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert stand_in.stdout is not None
        cortex_port = int(stand_in.stdout.readline())
        rounds = []
        with tempfile.TemporaryDirectory() as tmpdir:
            for i in range(args.rounds):
                a = round_a(Path(tmpdir), cortex_port, args.samples, args.clients, seed=100 + i,
                            stand_in=stand_in.pid)
                b = round_b(Path(tmpdir), cortex_port, args.parked, args.samples, args.clients, seed=200 + i,
                            delay=args.delay, stand_in=stand_in.pid, storm=args.storm)
                rounds.append({"A_without_cortex": a, "B_with_parked": b})
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        report["rounds"] = rounds
    finally:
        stop(stand_in)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
