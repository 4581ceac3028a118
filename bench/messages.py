"""POST /v2/messages throughput: 16 keep-alive clients post the same 4 KB message with one attachment (its
verdict cached) to a real `mailowl serve`; every answer must be a decision (200, action accept).

usage: .venv/bin/python bench/messages.py [--messages 20000] [--clients 16] [--rounds 3] [--against SRC]
                                         [--unique-boundaries]

Run it with ``PYTHONPATH=<checkout>/src`` to measure that checkout's code. With ``--against SRC`` (the
``src`` folder of another checkout, e.g. a ``git worktree`` of the commit
before a change) a second server runs that code, and the two are measured in alternating rounds in the
same sitting, so load from elsewhere on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from bench.load import Connection  # noqa: E402
from bench.milter import _cpu_seconds, message_file  # noqa: E402
from tests.server import Server  # noqa: E402

PATH = "/v2/messages?from=bench%40example.org&rcpt=sink%40example.net&ip=127.0.0.1"


async def _client(port: int, body: bytes, todo: list[int], latencies: list[float], bad: dict[str, int],
                  unique: bool) -> None:
    conn = Connection("127.0.0.1", port)
    try:
        while todo:
            number = todo.pop()
            # as in real mail, each message its own MIME boundary (the attachment, and so its verdict, the same)
            message = body.replace(b"XyZ", b"=_%012d" % number) if unique else body
            started = time.perf_counter()
            status, data = await conn.request("POST", PATH, message, "message/rfc822")
            latencies.append(time.perf_counter() - started)
            action = json.loads(data).get("action") if status == 200 else f"http {status}"
            if action != "accept":
                bad[str(action)] = bad.get(str(action), 0) + 1
    finally:
        conn.close()


async def run_round(port: int, body: bytes, count: int, clients: int, unique: bool = False) -> dict[str, object]:
    todo = list(range(count))
    latencies: list[float] = []
    bad: dict[str, int] = {}
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, body, todo, latencies, bad, unique) for _ in range(clients)))
    seconds = time.perf_counter() - started
    lat = sorted(latencies)
    return {"messages": count, "seconds": round(seconds, 2), "msgs_per_s": round(count / seconds, 1),
            "not_accepted": bad, "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2)}


def _start(tmp: Path, body: bytes, src: str | None) -> Server:
    env = {"PYTHONPATH": src} if src else None
    owl = Server(tmp, env=env)
    # prime the verdict cache with the very message the clients send
    status, answer, _ = owl.request("POST", PATH + "&wait=60", body, {"Content-Type": "message/rfc822"})
    assert status == 200 and answer["action"] == "accept", answer
    return owl


def _measure(owl: Server, body: bytes, count: int, clients: int, unique: bool) -> dict[str, object]:
    cpu, client = _cpu_seconds(owl.proc.pid), time.process_time()
    run = asyncio.run(run_round(owl.port, body, count, clients, unique))
    run["mailowl_cpu_ms_per_msg"] = round((_cpu_seconds(owl.proc.pid) - cpu) * 1000 / count, 3)
    # the clients share the machine's two cores with mailowl: what they take is not mailowl's to have
    run["client_cpu_ms_per_msg"] = round((time.process_time() - client) * 1000 / count, 3)
    run["load_average"] = round(os.getloadavg()[0], 2)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="SRC", help="also measure the code in SRC, alternating rounds")
    parser.add_argument("--unique-boundaries", action="store_true",
                        help="give every message its own MIME boundary, as real mail has")
    args = parser.parse_args()
    report: dict[str, object] = {**run_header()}
    names = ["this", "against"] if args.against else ["this"]
    servers: dict[str, Server] = {}
    rounds: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        body = message_file(Path(tmp)).read_bytes()
        report["message_bytes"] = len(body)
        try:
            for name in names:
                servers[name] = _start(Path(tmp) / name, body, args.against if name == "against" else None)
            for index in range(args.rounds):
                # alternate which goes first, so neither always follows the other's warm-up
                for name in names if index % 2 == 0 else names[::-1]:
                    rounds[name].append(_measure(servers[name], body, args.messages, args.clients,
                                                 args.unique_boundaries))
        finally:
            for owl in servers.values():
                owl.stop()
    for name in names:
        runs = rounds[name]
        key = "rounds" if name == "this" else "against_rounds"
        report[key] = runs
        report[f"median_msgs_per_s{'' if name == 'this' else '_against'}"] = statistics.median(
            float(r["msgs_per_s"]) for r in runs)  # type: ignore[arg-type]
        report[f"median_cpu_ms_per_msg{'' if name == 'this' else '_against'}"] = statistics.median(
            float(r["mailowl_cpu_ms_per_msg"]) for r in runs)  # type: ignore[arg-type]
    if args.against:
        report["against"] = args.against
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
