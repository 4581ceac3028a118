"""Shipping to Elasticsearch — against an in-test server implementing the documented API."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailowl.logs.ship import Shipper, follow

from .fake_es import FakeElasticsearch

LINES = [
    'Nov 23 10:00:00 mx1 klms[1]: clean: message-id="<a@b>": relay-ip="10.0.0.1": action="Skipped": size=5: '
    'mail-from="x@y": rcpt-to="a@x.ru"',
    'infected: message-id="<c@d>": relay-ip="10.0.0.2": action="Rejected": size=9: mail-from="": '
    'rcpt-to="b@y.ru, c@y.ru": part "PaymentDetails.xlsx", av-status="Infected", threats="HEUR:Exploit, UDS:x"',
    "not a verdict line at all",
]


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    server = FakeElasticsearch()
    yield server
    server.close()


def doc_id(line: str) -> str:
    return hashlib.sha1(line.encode()).hexdigest()


def test_ship_installs_template_and_indexes_every_line(es: FakeElasticsearch) -> None:
    shipper = Shipper(es.url, "verdicts", backoff=0.01)
    shipper.prepare()
    template = es.templates["verdicts"]
    props = template["template"]["mappings"]["properties"]
    assert props["source"]["properties"]["ip"]["type"] == "ip"
    assert props["email"]["properties"]["attachments"]["type"] == "nested"
    assert props["klms"]["properties"]["size"]["type"] == "long"
    result = shipper.ship(LINES)
    assert (result.indexed, result.duplicates, result.failed) == (3, 0, 0)
    infected = es.docs[doc_id(LINES[1])]
    assert infected["email"]["to"]["address"] == ["b@y.ru", "c@y.ru"]
    assert infected["email"]["attachments"][0]["klms"]["threats"] == ["HEUR:Exploit", "UDS:x"]
    assert es.docs[doc_id(LINES[2])]["tags"] == ["_grokparsefailure"]
    again = shipper.ship(LINES)  # shipping the same file twice duplicates nothing
    assert (again.indexed, again.duplicates) == (3, 3) and len(es.docs) == 3


def test_retries_on_429_and_5xx_without_duplicates(es: FakeElasticsearch) -> None:
    es.fail_requests = [429, 503]
    es.fail_items = {doc_id(LINES[0]): [429, 503], doc_id(LINES[1]): [400]}
    shipper = Shipper(es.url, "verdicts", backoff=0.01)
    result = shipper.ship(LINES)
    assert result.indexed == 2 and result.failed == 1 and "refused (400)" in result.errors[0]
    assert len(es.docs) == 2 and es.bulk_requests == 5  # 2 refused requests, then 3 attempts of the partial retry


def test_follow_reads_a_growing_and_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.log"
    path.write_text(LINES[0] + "\n")
    got: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in follow(str(path), poll=0.05, stop=lambda: len(got) >= 3):
            got.append(line.strip())
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(0.2)
    with path.open("a") as handle:
        handle.write(LINES[1][:40])  # half a line: not yet
        handle.flush()
        time.sleep(0.2)
        handle.write(LINES[1][40:] + "\n")
    time.sleep(0.2)
    path.rename(tmp_path / "verdicts.log.1")  # logrotate
    path.write_text(LINES[2] + "\n")
    assert done.wait(5)
    assert got == LINES


def test_ship_command(es: FakeElasticsearch, tmp_path: Path) -> None:
    log = tmp_path / "v.log"
    log.write_text("\n".join(LINES) + "\n")
    out = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "ship", "--es", es.url, "--index", "v",
                          str(log)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "indexed 3, already there 0, failed 0" in out.stdout
    down = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "ship", "--es", "http://127.0.0.1:1",
                           str(log)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 2
