"""Runs `mailowl serve` as a real process on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Terminate a server process, killing it if it does not go in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, config: str = "", ruleset: str | None = None,
                 env: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "mailowl.toml").write_text(config)
        args = [sys.executable, "-m", "mailowl.cli", *options, "serve", "--config", str(tmp / "mailowl.toml"),
                "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(tmp / "data")]
        if ruleset:
            args += ["--ruleset", ruleset]
        self.log = (tmp / "server.log").open("w")
        extra = dict(env or {})
        if "[milter]" not in config:  # several servers run at once: never the default milter port
            extra.setdefault("MAILOWL_MILTER_LISTEN", f"127.0.0.1:{free_port()}")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **extra})
        self.token = (env or {}).get("MAILOWL_SERVER_TOKEN", "")
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailowl serve exited: {(tmp / 'server.log').read_text()}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()  # never leave a half-started server behind
                raise RuntimeError("mailowl serve did not start")
            time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            hdrs = dict(headers or {})
            if self.token and "Authorization" not in hdrs:
                hdrs["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                payload: Any = json.loads(raw) if raw else None
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            return resp.status, payload, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def scan(self, content: bytes, filename: str | None = "file.bin", ctype: str = "application/octet-stream",
             path: str = "/v1/scan", extra_parts: bytes = b"", disposition_header: str | None = None,
             field: str = "file", filename_param: str | None = None) -> tuple[int, Any, dict[str, str]]:
        boundary = "----mailowltestboundary"
        if filename_param is None:
            filename_param = f'; filename="{filename}"' if filename is not None else ""
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"{filename_param}\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode()
        body = head + content + b"\r\n" + extra_parts + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if disposition_header:
            headers["X-Content-Disposition"] = disposition_header
        return self.request("POST", path, body, headers)

    def verdict(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        status, payload, _ = self.request("GET", f"/v2/jobs/{job_id}?wait={timeout}")
        assert status == 200, payload
        assert payload["state"] == "done", payload
        return dict(payload)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Process:
    """A server process (PeekabooAV or mailowl) and a client for its REST API."""

    def __init__(self, tmp: Path, args: list[str], port: int, ping: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log_path = tmp / "server.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = Server.__new__(Server)
        self.client.port, self.client.token = port, ""
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.client.request("GET", ping)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # never leave a half-started server behind
                raise RuntimeError(f"{args[0]} did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.log.close()
