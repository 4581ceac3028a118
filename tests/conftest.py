"""Fixtures: real databases (SQLite, and the MariaDB and PostgreSQL running on this machine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

MARIADB = os.environ.get("MAILOWL_TEST_MARIADB", "mysql+asyncmy://root@127.0.0.1:3306")
POSTGRES = os.environ.get("MAILOWL_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")


async def _admin(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def fresh_database(backend: str, prefix: str = "mailowl_test") -> Iterator[str]:
    """The URL of a new, empty database on the machine's MariaDB or PostgreSQL; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    server = MARIADB if backend == "mariadb" else f"{POSTGRES}/postgres"
    base = MARIADB if backend == "mariadb" else POSTGRES
    asyncio.run(_admin(server, f"CREATE DATABASE {name}"))
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(server, f"DROP DATABASE {name}"))


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend; dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database(request.param) as url:
        yield url


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[object]:
    from mailowl.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await store.open()
    yield store
    await store.close()
