"""Alembic, run in-process at start-up so every store is on the current schema before use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Any) -> None:
    """Bring the schema to the newest revision; for ``AsyncConnection.run_sync``."""
    command.upgrade(alembic_config(connection), "head")
