"""Cluster mode and Cortex (issue 10 point 1): samples parked on Cortex by an instance that is killed with
SIGKILL are taken over by a live one, which goes on waiting for the same Cortex jobs (nothing submitted
twice) and answers every acknowledged job, the killed instance's and its own duplicates alike.

Two real `mailowl serve` processes on one database of the machine's MariaDB or PostgreSQL; Cortex is the
tests' stand-in (tests/cortex_server.py: Cortex itself cannot run here), holding every job until the test
lets them end, after the kill.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from .cortex_server import running
from .server import Server
from .test_cluster import shared_url  # noqa: F401 (the fixture: a fresh database on each server)

PARKED = 12
DUPLICATES = 4
LEASE = 3
RULESET = """[rules]
rule.1 : known
rule.2 : expressions
rule.3 : final_rule

[expressions]
expression.1 : cortexreport.FileInfoReport.level == 'malicious' -> bad
"""


def _parked(server: Server) -> int:
    status, health, _ = server.request("GET", "/healthz")
    assert status == 200, health
    return int(health["cortex"]["parked"])


def _wait_for(what: str, test: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_parked_samples_of_a_killed_instance_are_taken_over(shared_url: str, tmp_path: Path) -> None:  # noqa: F811
    with running(token="k", delay=3600) as cortex:
        config = (f'[store]\nurl = "{shared_url}"\nlease = {LEASE}\n'
                  f'[cortex]\nurl = "{cortex.url}"\napi_token = "k"\npoll_interval = 0.5\n')
        ruleset = tmp_path / "ruleset.conf"
        ruleset.write_text(RULESET)
        first = Server(tmp_path / "first", config, ruleset=str(ruleset), options=("-v",))
        second = Server(tmp_path / "second", config, ruleset=str(ruleset), options=("-v",))
        try:
            samples = [(f"invoice{i}.doc", b"EVIL macro document %d" % i) for i in range(PARKED)]
            acked: dict[int, str] = {}
            for name, content in samples:
                status, payload, _ = first.scan(content, name)
                assert status == 200, payload
                acked[payload["job_id"]] = name
            _wait_for("the first instance to park every sample", lambda: _parked(first) == PARKED)
            assert len(cortex.submissions()) == PARKED
            # duplicates on the other instance wait for the first one's verdict
            for name, content in samples[:DUPLICATES]:
                status, payload, _ = second.scan(content, name)
                assert status == 200, payload
                acked[payload["job_id"]] = name
            assert _parked(second) == 0

            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait()
            # Cortex ends the jobs now: only an instance that takes them over asks for them again
            for job in cortex.submissions():
                job.delay = 0

            for job_id, name in acked.items():
                report = second.verdict(job_id)
                assert (report["state"], report["result"], report["sample"]["filename"]) == ("done", "bad", name), report
                assert "classified the sample as Result.bad" in report["reason"]
            assert _parked(second) == 0
            # the survivor went on waiting for the Cortex jobs the killed instance had submitted
            assert len(cortex.submissions()) == PARKED
            log = (second.tmp / "server.log").read_text()
            taken = sum(int(n) for n in re.findall(r"took over (\d+) parked sample", log))
            assert taken == PARKED, log[-3000:]
        finally:
            first.stop()
            second.stop()
