"""Statements more than one part of the store builds the same way on every backend."""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from mailowl.store.models import jobs

# MariaDB answers INSERT IGNORE of a row that is there with a note, which asyncmy logs as a WARNING per row:
# a duplicate is what insert_ignoring_duplicates is for, not something for the administrator's log
logging.getLogger("asyncmy").setLevel(logging.ERROR)

#: a finished job's new state, by ``b_id``: executemany with one dict per job
update_job = (update(jobs).where(jobs.c.id == bindparam("b_id"))
              .values(state=bindparam("state"), result=bindparam("result"), reason=bindparam("reason"),
                      rule_results=bindparam("rule_results"), finished_at=bindparam("finished_at"),
                      type_by_content=bindparam("type_by_content"), sha1=bindparam("sha1"), md5=bindparam("md5"),
                      file_extension=bindparam("file_extension"), type_by_name=bindparam("type_by_name"),
                      facts=bindparam("facts")))


@functools.cache
def insert_ignoring_duplicates(table: Table, dialect: str) -> Any:
    """INSERT that skips a row whose key is there already (another job of the identity, another instance).
    Built once per table and dialect: the hot paths use it, and building costs more than its share of the
    execution."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return table.insert().prefix_with("IGNORE")
    return sqlite_dialect.insert(table).on_conflict_do_nothing()
