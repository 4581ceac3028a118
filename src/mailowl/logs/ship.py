"""Shipping parsed verdict lines to Elasticsearch with the bulk API.

Each line becomes one ECS document whose id is the SHA-1 of the line, indexed with ``create``: a retried
batch can never duplicate a document (Elasticsearch answers 409 for the copies, which count as done).
429 and 5xx answers, for a whole request or single items, are retried with backoff; other item errors
are reported and counted. An index template gives keyword, ip, integer and nested mappings.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import httpx
import orjson

from mailowl.logs.klms import parse, to_ecs

BATCH = 1000
ATTEMPTS = 6


def index_template(index: str) -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "index_patterns": [f"{index}*"],
        "template": {"mappings": {"dynamic_templates": [{"strings": {"match_mapping_type": "string",
                                                                     "mapping": keyword}}],
                                  "properties": {
            "@timestamp": {"type": "date"}, "message": {"type": "text"}, "tags": keyword,
            "event": {"properties": {"action": keyword, "outcome": keyword, "category": keyword,
                                     "ingested": {"type": "date"}}},
            "source": {"properties": {"ip": {"type": "ip"}}},
            "email": {"properties": {
                "message_id": keyword, "from": {"properties": {"address": keyword}},
                "to": {"properties": {"address": keyword}},
                "attachments": {"type": "nested", "properties": {
                    "file": {"properties": {"name": keyword, "extension": keyword}},
                    "klms": {"properties": {"av_status": keyword, "threats": keyword}}}}}},
            "klms": {"properties": {"size": {"type": "long"}, "rules": {"type": "long"}, "status_letter": keyword,
                                    "action": keyword}},
            "rule": {"properties": {"id": keyword}},
        }}},
    }


@dataclass
class ShipResult:
    indexed: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class Shipper:
    def __init__(self, url: str, index: str = "mailowl-verdicts", client: httpx.Client | None = None,
                 backoff: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.index = index
        self.client = client or httpx.Client(timeout=60)
        self.backoff = backoff
        self.result = ShipResult()

    def prepare(self) -> None:
        """Check the server and install the index template."""
        response = self._request("GET", "/")
        if response.status_code != 200:
            raise RuntimeError(f"{self.url}: answered {response.status_code} to GET /")
        response = self._request("PUT", f"/_index_template/{self.index}", content=orjson.dumps(index_template(self.index)),
                                 headers={"Content-Type": "application/json"})
        if response.status_code >= 300:
            raise RuntimeError(f"{self.url}: index template refused ({response.status_code}): {response.text[:300]}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff
        for attempt in range(ATTEMPTS):
            try:
                response = self.client.request(method, self.url + path, **kwargs)
            except httpx.TransportError:
                if attempt == ATTEMPTS - 1:
                    raise
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                if attempt == ATTEMPTS - 1:
                    return response
            time.sleep(delay)
            delay = min(delay * 2, 30)
        raise AssertionError("unreachable")

    def ship(self, lines: Iterable[str]) -> ShipResult:
        batch: list[tuple[str, bytes]] = []
        for line in lines:
            line = line.rstrip("\r\n")
            if not line:
                continue
            doc_id = hashlib.sha1(line.encode("utf-8", "surrogateescape")).hexdigest()
            doc = to_ecs(parse(line)) | {"message": line}
            doc.setdefault("@timestamp", datetime.now(UTC).isoformat())  # lines without a date: when shipped
            batch.append((doc_id, orjson.dumps(doc)))
            if len(batch) >= BATCH:
                self._bulk(batch)
                batch = []
        if batch:
            self._bulk(batch)
        return self.result

    def _bulk(self, batch: list[tuple[str, bytes]]) -> None:
        pending = batch
        delay = self.backoff
        for attempt in range(ATTEMPTS):
            body = b"".join(orjson.dumps({"create": {"_index": self.index, "_id": doc_id}}) + b"\n" + doc + b"\n"
                            for doc_id, doc in pending)
            response = self._request("POST", "/_bulk", content=body, headers={"Content-Type": "application/x-ndjson"})
            if response.status_code >= 300:
                self._fail(len(pending), f"bulk request answered {response.status_code}: {response.text[:200]}")
                return
            retry: list[tuple[str, bytes]] = []
            for (doc_id, doc), item in zip(pending, response.json().get("items", []), strict=False):
                outcome = item.get("create") or item.get("index") or {}
                status = int(outcome.get("status", 500))
                if status in (200, 201):
                    self.result.indexed += 1
                elif status == 409:
                    self.result.duplicates += 1
                elif status == 429 or status >= 500:
                    retry.append((doc_id, doc))
                else:
                    self._fail(1, f"document {doc_id} refused ({status}): {outcome.get('error')}")
            if not retry:
                return
            pending = retry
            if attempt < ATTEMPTS - 1:
                time.sleep(delay)
                delay = min(delay * 2, 30)
        self._fail(len(pending), f"{len(pending)} document(s) still refused after {ATTEMPTS} attempts")

    def _fail(self, count: int, message: str) -> None:
        self.result.failed += count
        if len(self.result.errors) < 20:
            self.result.errors.append(message)


def follow(path: str, poll: float = 0.5, stop: Any = None) -> Iterator[str]:
    """Lines of a growing file, like ``tail -F``: starts at the beginning, survives rotation and truncation.
    ``stop`` (a callable) ends the iteration once it returns True at end of file."""
    handle: IO[str] | None = None
    inode = None
    try:
        while True:
            if handle is None:
                try:
                    handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
                    inode = os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
            line = handle.readline()
            if line.endswith("\n"):
                yield line
                continue
            if line:  # a partial line: wait for its end
                handle.seek(handle.tell() - len(line.encode("utf-8", "surrogateescape")))
            if stop is not None and stop():
                return
            time.sleep(poll)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            if stat.st_ino != inode or stat.st_size < handle.tell():
                handle.close()
                handle = None
    finally:
        if handle is not None:
            handle.close()
