"""A group commit's statements on SQLite, through one plain ``sqlite3`` connection.

SQLite is the default store and its writer runs on the event loop: plain driver statements on one
connection cost a fraction of SQLAlchemy's per-round and per-row work. Each driver call gives up the GIL,
and getting it back from busy analysis threads is most of what a commit on the loop waits for, so every
kind of row goes in one statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite as sqlite_dialect

from mailowl.store.models import jobs, messages
from mailowl.store.rows import check_ids

#: seconds the writer tries to get SQLite's write lock before the commit fails
LOCK_WAIT = 30.0

_SQLITE = sqlite_dialect.dialect()


def _processors(table: Table) -> dict[str, Callable[[Any], Any]]:
    found: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        processor = column.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
        if processor is not None:
            found[column.name] = processor
    return found


_JOB_PROCESSORS = _processors(jobs)
_MESSAGE_PROCESSORS = _processors(messages)
_INSERT_COLUMNS = [c.name for c in jobs.columns if c.name != "id"]
_MESSAGE_COLUMNS = [c.name for c in messages.columns]
_UPDATE_COLUMNS = ["b_id", "state", "result", "reason", "rule_results", "finished_at", "type_by_content", "sha1",
                   "md5", "file_extension", "type_by_name", "facts"]
# UPDATE ... FROM (SQLite >= 3.33): the VALUES rows' columns are named column1, column2, ...
_UPDATE = ("UPDATE jobs SET "
           + ", ".join(f"{c} = v.column{i}" for i, c in enumerate(_UPDATE_COLUMNS, 1) if c != "b_id")
           + " FROM (VALUES {values}) AS v WHERE jobs.id = v.column1")
_ROWS_PER_UPDATE = 32766 // len(_UPDATE_COLUMNS)
_MESSAGE = f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))})"
_ROWS_PER_INSERT = 32766 // len(_INSERT_COLUMNS)


def _values(processors: dict[str, Callable[[Any], Any]], row: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    return tuple(processors[c](row.get(c)) if c in processors and row.get(c) is not None else row.get(c)
                 for c in columns)


async def begin(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE without waiting on the event loop: the writer's connection has no busy timeout, so
    while another connection (a parked sample's row, `db purge`) holds the write lock the loop keeps
    serving and the writer tries again a moment later."""
    deadline = asyncio.get_running_loop().time() + LOCK_WAIT
    pause = 0.001
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def write(db: sqlite3.Connection, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
          update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]]) -> list[int]:
    """The group commit's statements and COMMIT, in the transaction ``begin`` opened; the new ids."""
    try:
        ids = _insert(db, new_rows) if new_rows else []
        if sample_rows:
            db.executemany("INSERT OR IGNORE INTO samples (sha256, identity) VALUES (?, ?)",
                           [(r["sha256"], r["identity"]) for r in sample_rows])
        if message_rows:
            db.executemany(_MESSAGE, [_values(_MESSAGE_PROCESSORS, r, _MESSAGE_COLUMNS) for r in message_rows])
        if update_rows:
            _update(db, update_rows)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return ids


def _update(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), _ROWS_PER_UPDATE):
        chunk = rows[start:start + _ROWS_PER_UPDATE]
        marks = "(" + ", ".join("?" * len(_UPDATE_COLUMNS)) + ")"
        params = tuple(value for row in chunk for value in _values(_JOB_PROCESSORS, row, _UPDATE_COLUMNS))
        db.execute(_UPDATE.format(values=", ".join([marks] * len(chunk))), params)


def _insert(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start:start + _ROWS_PER_INSERT]
        marks = "(" + ", ".join("?" * len(_INSERT_COLUMNS)) + ")"
        sql = (f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES {', '.join([marks] * len(chunk))} "
               "RETURNING id, identity")
        params = tuple(value for row in chunk for value in _values(_JOB_PROCESSORS, row, _INSERT_COLUMNS))
        # SQLite inserts a multi-row VALUES in order and AUTOINCREMENT makes each id larger than the one
        # before, so sorting puts the ids in row order, whatever order RETURNING uses
        ids += check_ids(sorted(db.execute(sql, params).fetchall()), chunk)
    return ids
