"""SQLite WAL checkpoints, mostly away from the event loop.

By default SQLite checkpoints on the connection that commits, once the WAL passes 1,000 pages: it copies
all of them into the database, on the event loop, while the requests of that commit wait for their ids.
Here the writer's connection never checkpoints by itself. A thread of its own copies the WAL into the
database while the writer goes on committing (a PASSIVE checkpoint takes no lock a writer needs, and sqlite3
lets go of the GIL for it). That alone would never let the WAL start over under a steady load: SQLite
restarts it only after a checkpoint that caught up with the last commit. So every few hundred rows the
writer runs one more checkpoint itself, between two commits; the thread has copied nearly everything by then,
so it is short, and the next commit writes the WAL from its beginning again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

#: rows written between two catch-up checkpoints on the writer: a new job touches a random page of the
#: identity index, so this is about SQLite's default of 1,000 pages
ROWS = 500
#: seconds between two checkpoints in the thread
INTERVAL = 0.05


def _checkpoint(db: sqlite3.Connection) -> bool:
    """One PASSIVE checkpoint; False if it could not run (another one was running)."""
    try:
        busy, _pages, _copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:  # the next round tries again; commits are not affected
        log.warning("SQLite checkpoint failed: %s", exc)
        return False
    return not busy


class Checkpoints:
    def __init__(self, path: str, writer: sqlite3.Connection, rows: int = ROWS, interval: float = INTERVAL) -> None:
        self.path, self.writer = path, writer
        self.rows, self.interval = rows, interval
        self._written = 0
        self._stop = threading.Event()
        writer.execute("PRAGMA wal_autocheckpoint=0")
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def committed(self, rows: int) -> None:
        """After a commit of ``rows`` rows, on the writer's connection (no commit is running)."""
        self._written += rows
        if self._written >= self.rows and _checkpoint(self.writer):
            self._written = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.interval):
                _checkpoint(db)
        finally:
            db.close()
