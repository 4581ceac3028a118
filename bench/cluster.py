"""Cluster benchmark (issue 10): the core benchmark's client load (16 clients, fresh then cached samples,
bench/load.py) against one instance on SQLite, one on PostgreSQL, one on MariaDB and three on PostgreSQL
(the clients spread over the three), in alternating rounds in one run. ``--against SRC`` adds one instance on
PostgreSQL running other code (e.g. a worktree of the commit before cluster mode), to measure what cluster
mode's shared verdict lookups cost.

usage: .venv/bin/python bench/cluster.py [--samples 4000] [--rounds 2] [--against /tmp/old/src]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402
from bench.load import Round, _one, make_samples  # noqa: E402
from tests.conftest import fresh_database  # noqa: E402
from tests.server import Server  # noqa: E402


async def _round(ports: list[int], items: list[tuple[str, bytes]], clients: int) -> dict[str, object]:
    """Like bench/load.run_round, with client i on instance i % len(ports)."""
    from bench.load import Connection

    todo = list(reversed(items))
    stats = Round()

    async def client(port: int) -> None:
        conn = Connection("127.0.0.1", port)
        while todo:
            name, data = todo.pop()
            await _one(conn, name, data, stats, 120.0)
        conn.close()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(client(ports[i % len(ports)]) for i in range(clients)))
    stats.seconds = loop.time() - started
    return stats.summary(len(items))


def measure(kind: str, instances: int, samples: int, clients: int, seed: int, src: str | None) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"mailowl-bench-{kind}-"))
    with contextlib.ExitStack() as stack:
        url = "" if kind == "sqlite" else stack.enter_context(fresh_database(kind, "mailowl_bench"))
        config = f'[store]\nurl = "{url}"\n[queue]\nsize = 100000\n' if url else "[queue]\nsize = 100000\n"
        env = {"PYTHONPATH": src} if src else {}
        servers: list[Server] = []
        try:
            servers = [Server(tmp / f"i{i}", config, ruleset=str(ROOT / "bench" / "ruleset.conf"), env=env)
                       for i in range(instances)]
            ports = [s.port for s in servers]
            items = make_samples(samples, seed)
            fresh = asyncio.run(_round(ports, items, clients))
            cached = asyncio.run(_round(ports, items, clients))
            return {"fresh": fresh, "cached": cached}
        finally:
            for server in servers:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", help="src folder of other code, run as one more PostgreSQL instance")
    args = parser.parse_args()
    setups: list[tuple[str, str, int, str | None]] = [
        ("sqlite x1", "sqlite", 1, None), ("postgresql x1", "postgresql", 1, None),
        ("mariadb x1", "mariadb", 1, None), ("postgresql x3", "postgresql", 3, None)]
    if args.against:
        setups.append(("postgresql x1 (--against)", "postgresql", 1, os.path.abspath(args.against)))
    results: dict[str, list[dict[str, object]]] = {label: [] for label, *_ in setups}
    for r in range(args.rounds):
        for label, kind, n, src in setups:
            result = measure(kind, n, args.samples, args.clients, 1000 + r, src)
            results[label].append(result)
            print(f"round {r} {label}: fresh {result['fresh']['samples_per_s']}/s "  # type: ignore[index]
                  f"cached {result['cached']['samples_per_s']}/s", file=sys.stderr, flush=True)
    print(json.dumps({"header": run_header(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
