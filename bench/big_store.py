"""Big stores: start-up time and memory of `mailowl serve` on a store of millions of finished jobs (issue 10
point 4), against an empty store, and optionally the REST rates and a `db purge` under load.

usage:
  .venv/bin/python bench/big_store.py make DIR JOBS        # DIR/mailowl.db with JOBS finished jobs (SQLite)
  .venv/bin/python bench/big_store.py start DIR [SRC]      # start-up seconds and RSS, DIR's store vs an empty one
  .venv/bin/python bench/big_store.py rates DIR SAMPLES [SRC]  # fresh/cached REST rates on DIR's store (a copy)
  .venv/bin/python bench/big_store.py purge DIR SAMPLES    # REST rates while `db purge` deletes the older half

SRC is a src/ directory to run instead of this checkout's (e.g. a `git worktree` of an older commit).
The rows are made by SQLite itself (a recursive CTE, random identities, created over the last year), so
ten million take minutes, not hours; they carry no rule facts, like jobs decided by simple rules.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import fresh_and_cached  # noqa: E402
from rest import ROOT, RULESET, free_port, stop, wait_http  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
YEAR = 365 * 86400

_FILL = """
INSERT INTO jobs (identity, sha256, size, filename, type_declared, content_disposition, state, result, reason,
                  rule_results, created_at, finished_at, run)
WITH RECURSIVE c(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM c WHERE i < ?2)
SELECT lower(hex(randomblob(32))), lower(hex(randomblob(32))), 1000 + i % 50000, 'attachment-' || i || '.pdf',
       'application/pdf', 'attachment', 'done', CASE WHEN i % 10 = 0 THEN 'bad' ELSE 'good' END,
       'The expression in rule expressions matched', '[{"rule":"expressions","result":"good","reason":"ok"}]',
       strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || CAST((?3 - i) * ?4 AS INTEGER) || ' seconds') || '.000000',
       strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || CAST((?3 - i) * ?4 AS INTEGER) || ' seconds') || '.100000',
       'bench 1 1'
FROM c
"""


def _env(data: Path) -> dict[str, str]:
    """`mailowl db …` on DIR's store (those commands have no --data-dir)."""
    return {**os.environ, "MAILOWL_STORE_URL": f"sqlite+aiosqlite:///{data / 'mailowl.db'}"}


def make(target: Path, count: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    db = target / "mailowl.db"
    # the schema of this checkout, by the real migrations
    subprocess.run([PYTHON, "-m", "mailowl.cli", "db", "upgrade"], check=True, env=_env(target))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: random identity index inserts stay in memory
    started = time.monotonic()
    step = YEAR / max(count, 1)
    chunk = 1_000_000
    for low in range(1, count + 1, chunk):
        high = min(low + chunk - 1, count)
        conn.execute("BEGIN")
        conn.execute(_FILL, (low, high, count, step))
        conn.execute("INSERT OR IGNORE INTO samples (sha256, identity) SELECT sha256, identity FROM jobs "
                     "WHERE id >= ? AND id <= ?", (low, high))
        conn.execute("COMMIT")
        print(f"{high} jobs, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(json.dumps({"jobs": count, "seconds": round(time.monotonic() - started, 1),
                      "bytes": db.stat().st_size}))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _serve(data: Path, src: str) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    env = {**os.environ, "MAILOWL_MILTER_LISTEN": ""}
    if src:
        env["PYTHONPATH"] = src
    started = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-m", "mailowl.cli", "serve", "--ruleset", str(RULESET), "--listen",
                             f"127.0.0.1:{port}", "--data-dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http(port, proc, timeout=600)
    return proc, port, time.monotonic() - started


def start(data: Path, src: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, where in (("empty", Path(tmp) / "empty"), ("big", data)):
            proc, _port, seconds = _serve(where, src)
            try:
                time.sleep(1)  # whatever start-up still does after answering
                print(json.dumps({"store": name, "startup_s": round(seconds, 2), "rss_mib": round(_rss_kib(proc.pid) / 1024, 1)}),
                      flush=True)
            finally:
                stop(proc)


def rates(data: Path, samples: int, src: str) -> None:
    with tempfile.TemporaryDirectory(dir=data.parent) as tmp:
        copy = Path(tmp) / "big"
        copy.mkdir()
        shutil.copy(data / "mailowl.db", copy / "mailowl.db")  # the round adds jobs: keep DIR as made
        for name, where in (("empty", Path(tmp) / "empty"), ("big", copy)):
            proc, port, seconds = _serve(where, src)
            try:
                result = fresh_and_cached("127.0.0.1", port, samples, 16, seed=1)
                fresh, cached = result["fresh"], result["cached"]
                assert isinstance(fresh, dict) and isinstance(cached, dict)
                print(json.dumps({"store": name, "startup_s": round(seconds, 2),
                                  "rss_mib": round(_rss_kib(proc.pid) / 1024, 1),
                                  "fresh": fresh.get("samples_per_s"), "cached": cached.get("samples_per_s"),
                                  "fresh_p99_ms": fresh.get("p99_ms"), "cached_p99_ms": cached.get("p99_ms")}),
                      flush=True)
            finally:
                stop(proc)


def purge(data: Path, samples: int) -> None:
    """`db purge --older-than 183d` (about half of a store made by `make`) while the REST load runs."""
    with tempfile.TemporaryDirectory(dir=data.parent) as tmp:
        copy = Path(tmp) / "big"
        copy.mkdir()
        shutil.copy(data / "mailowl.db", copy / "mailowl.db")
        proc, port, _seconds = _serve(copy, "")
        try:
            started = time.monotonic()
            purger = subprocess.Popen([PYTHON, "-m", "mailowl.cli", "db", "purge", "--older-than", "183d"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(copy))
            result = fresh_and_cached("127.0.0.1", port, samples, 16, seed=1)
            purge_running = purger.poll() is None
            out, err = purger.communicate()
            fresh, cached = result["fresh"], result["cached"]
            assert isinstance(fresh, dict) and isinstance(cached, dict)
            print(json.dumps({"purge_exit": purger.returncode, "purge_output": (out + err).decode().strip()[-300:],
                              "purge_s": round(time.monotonic() - started, 1), "purge_outlasted_load": purge_running,
                              "fresh": fresh.get("samples_per_s"), "cached": cached.get("samples_per_s"),
                              "fresh_p99_ms": fresh.get("p99_ms"), "cached_p99_ms": cached.get("p99_ms"),
                              "fresh_errors": fresh.get("errors"), "cached_errors": cached.get("errors")}),
                  flush=True)
        finally:
            stop(proc)


def main() -> None:
    command, where = sys.argv[1], Path(sys.argv[2]).resolve()
    if command == "make":
        make(where, int(sys.argv[3]))
    elif command == "start":
        start(where, sys.argv[3] if len(sys.argv) > 3 else "")
    elif command == "rates":
        rates(where, int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
    elif command == "purge":
        purge(where, int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
