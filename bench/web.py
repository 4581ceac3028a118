"""Web interface: how long each page takes with millions of jobs in the store (SQLite).

usage: .venv/bin/python bench/web.py [--jobs 1000000] [--messages 300000] [--runs 5]

Fills a new SQLite store (the current schema, by migrations) with JOBS jobs and MESSAGES messages spread
over 30 days, then requests every kind of page from the web interface in-process (the ASGI application,
rendering included, no network) RUNS times each, and prints one JSON document: per page the median and
the slowest time in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.header import run_header  # noqa: E402

from mailowl.store import Store  # noqa: E402
from mailowl.web.app import create_ui  # noqa: E402

RULES = json.dumps([{"rule": "known", "result": "unknown", "reason": "File is not yet known to the system"},
                    {"rule": "expressions", "result": "bad", "reason": "The expression (4) classified the sample"}])


def fill(path: Path, jobs: int, messages: int, now: datetime) -> dict[str, str]:
    rng = random.Random(12)
    start = now - timedelta(days=30)
    db = sqlite3.connect(path)
    picked: dict[str, str] = {}
    batch = 50_000
    for first in range(0, jobs, batch):
        rows = []
        for i in range(first, min(first + batch, jobs)):
            when = (start + timedelta(seconds=30 * 86400 * i / jobs)).replace(tzinfo=None).isoformat(" ")
            sha = rng.randbytes(32).hex()
            result = rng.choice(["bad", "good", "unknown", "ignored"])
            rows.append((rng.randbytes(32).hex(), sha, 100 + i % 5000, f"file-{i}.{rng.choice(['pdf', 'bat', 'doc'])}",
                         "application/octet-stream", "done", result, f"reason {result}", RULES, when, when))
            if i == jobs // 2:
                picked["sha256"] = sha
        db.executemany("INSERT INTO jobs (identity, sha256, size, filename, type_by_content, state, result, reason, "
                       "rule_results, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        # every job here is a new identity, so each is in the samples table (the search by hash reads it)
        db.executemany("INSERT INTO samples (sha256, identity) VALUES (?, ?)", [(r[1], r[0]) for r in rows])
        db.commit()
    rows = []
    for i in range(messages):
        when = (start + timedelta(seconds=30 * 86400 * i / messages)).replace(tzinfo=None).isoformat(" ")
        support_id = f"mo-{i:012x}"
        rows.append((support_id, when, "milter", f"sender{i % 5000}@x.example",
                     json.dumps([f"rcpt{i % 7000}@y.example"]), "accept", "250 2.0.0 OK",
                     json.dumps([{"filename": f"file-{i}.pdf", "sha256": "0" * 64, "job_id": i + 1,
                                  "result": "good", "reason": "fine", "size": 10}])))
        if i == messages // 2:
            picked["support_id"] = support_id
            micros = (datetime.fromisoformat(when).replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
            picked["cursor"] = f"{micros // timedelta(microseconds=1)}.{support_id}"
    db.executemany("INSERT INTO messages (support_id, created_at, ingress, mail_from, rcpt_to, action, reply, parts) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return picked


async def measure(url: str, runs: int, picked: dict[str, str], jobs: int) -> dict[str, dict[str, float]]:
    store = Store(url)
    await store.open()
    try:
        app = create_ui(lambda: store.engine, lambda: 0)
        pages = {
            "dashboard (24h)": "/ui/", "dashboard (7d)": "/ui/?span=7d", "messages, first page": "/ui/messages",
            "messages, deep page": f"/ui/messages?before={picked['cursor']}",
            "jobs, first page": "/ui/jobs", "jobs, deep page": f"/ui/jobs?before={jobs // 10}",
            "job by id": f"/ui/jobs/{jobs // 2}", "job by sha256": f"/ui/jobs/{picked['sha256']}",
            "message by support id": f"/ui/messages/{picked['support_id']}",
            "search: sender": "/ui/search?q=sender42%40x.example",
            "search: recipient (window)": "/ui/search?q=rcpt42%40y.example&by=to",
            "search: filename (window)": "/ui/search?q=file-99999",
        }
        out: dict[str, dict[str, float]] = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for name, path in pages.items():
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                out[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
        return out
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        url = f"sqlite+aiosqlite:///{path}"

        async def schema() -> None:
            store = Store(url)
            await store.open()
            await store.close()

        asyncio.run(schema())
        started = time.perf_counter()
        picked = fill(path, args.jobs, args.messages, datetime.now(UTC))
        filled = time.perf_counter() - started
        pages = asyncio.run(measure(url, args.runs, picked, args.jobs))
        print(json.dumps({**run_header(), "jobs": args.jobs, "messages": args.messages,
                          "store_mb": round(os.path.getsize(path) / 2**20), "fill_s": round(filled, 1),
                          "pages": pages}, indent=2))


if __name__ == "__main__":
    main()
