"""Alembic, run in-process at start-up so every store is on the current schema before use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


#: the advisory lock's name / key: several instances starting at once on an empty database migrate one by one
_LOCK_NAME, _LOCK_KEY = "mailowl_schema", 0x6D61696C6F776C


def upgrade(connection: Any) -> None:
    """Bring the schema to the newest revision; for ``AsyncConnection.run_sync``. Instances that start
    together wait for each other's migration (the next one finds nothing left to do)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":  # held until the transaction the migration runs in ends
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif dialect in ("mysql", "mariadb"):  # DDL commits by itself there: a session lock, released below
        connection.execute(text("SELECT GET_LOCK(:name, 300)"), {"name": _LOCK_NAME})
    try:
        command.upgrade(alembic_config(connection), "head")
    finally:
        if dialect in ("mysql", "mariadb"):
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})
