"""An in-test HTTP server that answers as Elasticsearch does for the root, index-template and _bulk
endpoints (Elasticsearch cannot run on this machine). Failures can be injected: whole-request 429/503
answers, and per-item 429s and mapping errors inside a 200 bulk response, as Elasticsearch reports
partial failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeElasticsearch:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, Any] = {}
        self.bulk_requests = 0
        #: statuses to answer the next bulk requests with, as a whole (e.g. [429, 503])
        self.fail_requests: list[int] = []
        #: per-document injected item statuses for the next attempt that carries them (id -> [statuses])
        self.fail_items: dict[str, list[int]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        es = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/":
                    self._send(200, {"name": "fake", "cluster_name": "test", "version": {"number": "8.15.0"},
                                     "tagline": "You Know, for Search"})
                else:
                    self._send(404, {"error": "no handler", "status": 404})

            def do_PUT(self) -> None:  # noqa: N802
                if self.path.startswith("/_index_template/"):
                    es.templates[self.path.rsplit("/", 1)[1]] = json.loads(self._body())
                    self._send(200, {"acknowledged": True})
                else:
                    self._send(404, {"error": "no handler", "status": 404})

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/_bulk":
                    self._send(404, {"error": "no handler", "status": 404})
                    return
                body = self._body()
                es.bulk_requests += 1
                if es.fail_requests:
                    status = es.fail_requests.pop(0)
                    self._send(status, {"error": {"type": "es_rejected_execution_exception"}, "status": status})
                    return
                lines = body.decode().splitlines()
                items, errors = [], False
                for action_line, doc_line in zip(lines[0::2], lines[1::2], strict=True):
                    action = json.loads(action_line)["create"]
                    doc_id = action["_id"]
                    injected = es.fail_items.get(doc_id)
                    if injected:
                        status = injected.pop(0)
                        errors = True
                        kind = "es_rejected_execution_exception" if status == 429 else "document_parsing_exception"
                        items.append({"create": {"_index": action["_index"], "_id": doc_id, "status": status,
                                                 "error": {"type": kind, "reason": "injected"}}})
                        continue
                    if doc_id in es.docs:
                        errors = True
                        items.append({"create": {"_index": action["_index"], "_id": doc_id, "status": 409,
                                                 "error": {"type": "version_conflict_engine_exception"}}})
                        continue
                    es.docs[doc_id] = json.loads(doc_line)
                    items.append({"create": {"_index": action["_index"], "_id": doc_id, "status": 201,
                                             "result": "created"}})
                self._send(200, {"took": 1, "errors": errors, "items": items})

        return Handler
