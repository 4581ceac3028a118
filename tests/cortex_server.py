"""A Cortex stand-in for the tests: the subset of Cortex's REST API that PeekabooAV 2.1 and mailowl use
(analyzer search, run, report, waitreport), with knobs for what a real Cortex may do.

Cortex itself (Scala, Elasticsearch) cannot run on these machines. The server runs in a thread
(starlette + uvicorn on an ephemeral port) so PeekabooAV, running as a separate process, reaches it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Report = Callable[["Job"], Any]


def fileinfo(job: Job, level: str = "info") -> dict[str, Any]:
    """A FileInfo_8_0 report of the submitted content, in the shape Cortex's FileInfo analyzer gives."""
    data = job.content
    taxonomy = {"level": level, "namespace": "FileInfo", "predicate": "Filetype", "value": "data"}
    return {
        "summary": {"taxonomies": [taxonomy]},
        "full": {"results": [{
            "submodule_name": "Basic properties",
            "results": [
                {"submodule_section_header": "Hashes", "submodule_section_content": {
                    "md5": hashlib.md5(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
                    "sha256": hashlib.sha256(data).hexdigest(), "ssdeep": "3:abc:def"}},
                {"submodule_section_header": "Filetype", "submodule_section_content": {"magic": "data"}},
            ],
            "summary": {"taxonomies": [taxonomy]},
        }]},
        "success": True,
        "artifacts": [{"dataType": "hash", "data": hashlib.sha256(data).hexdigest()}],
        "operations": [],
    }


def by_content(job: Job) -> dict[str, Any]:
    """FileInfo level by the content: ``EVIL`` in it is malicious, ``SAFE`` safe, else info."""
    level = "malicious" if b"EVIL" in job.content else "safe" if b"SAFE" in job.content else "info"
    return fileinfo(job, level)


@dataclass
class Job:
    id: str
    analyzer: str
    data_type: str
    tlp: int | None
    filename: str | None
    content_type: str | None
    content: bytes
    data: str | None
    created: float
    #: seconds until the job ends, and how
    delay: float
    final: str


@dataclass
class CortexStandIn:
    #: analyzer name -> ids it is found under (none: not enabled; two: a duplicate)
    analyzers: dict[str, list[str]] = field(default_factory=lambda: {
        "FileInfo_8_0": ["fi-1"], "VirusTotal_GetReport_3_0": ["vt-1"], "MISP_2_1": ["misp-1"]})
    #: the api_token Cortex accepts; None: any request is accepted
    token: str | None = "cortex-key"
    #: seconds a job takes, and the state it ends in: Success, Failure, Deleted, or "never"
    delay: float = 0.0
    final: str = "Success"
    #: the state a job ends in, by job (overrides ``final``)
    final_for: Callable[[Job], str] | None = None
    #: the report of a successful job (may return something malformed)
    report: Report = by_content
    #: answer this many of the next requests with 503
    errors_5xx: int = 0
    waitreport: bool = True
    #: seconds each run (submission) takes to answer
    run_delay: float = 0.0
    jobs: dict[str, Job] = field(default_factory=dict)
    #: (method, path) of every request, in order
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: waitreport requests held open now, and the most held at once
    waiting: int = 0
    most_waiting: int = 0
    port: int = 0
    _counter: int = 0
    _thread: threading.Thread | None = None
    _server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def submissions(self, analyzer: str | None = None) -> list[Job]:
        return [j for j in self.jobs.values() if analyzer is None or j.analyzer == analyzer]

    # the API ---------------------------------------------------------------------------------------------
    def _gate(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if self.errors_5xx > 0:
            self.errors_5xx -= 1
            return JSONResponse({"type": "InternalError", "message": "burst"}, 503)
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"type": "AuthenticationError", "message": "Authentication failure"}, 401)
        return None

    async def _search(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        query = (await request.json())["query"]
        assert query["_field"] == "name"
        name = query["_value"]
        return JSONResponse([{"id": i, "name": name, "dataTypeList": ["file", "hash"]}
                             for i in self.analyzers.get(name, [])])

    async def _run(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        if self.run_delay:
            await asyncio.sleep(self.run_delay)
        analyzer_id = request.path_params["analyzer"]
        names = [n for n, ids in self.analyzers.items() if analyzer_id in ids]
        if not names:
            return JSONResponse({"type": "NotFoundError", "message": "analyzer not found"}, 404)
        form = await request.form()
        content, filename, content_type, data = b"", None, None, None
        if "_json" in form:
            spec = json.loads(str(form["_json"]))
            upload: Any = form["data"]
            content, filename, content_type = await upload.read(), upload.filename, upload.content_type
            data_type, tlp = spec["dataType"], spec.get("tlp")
        else:
            data_type, data = str(form["dataType"]), str(form["data"])
            tlp = int(str(form["tlp"])) if "tlp" in form else None
        self._counter += 1
        job = Job(f"job-{self._counter}", names[0], data_type, tlp, filename, content_type, content, data,
                  time.monotonic(), self.delay, self.final)
        if self.final_for is not None:
            job.final = self.final_for(job)
        self.jobs[job.id] = job
        return JSONResponse({"id": job.id, "status": "Waiting", "analyzerName": job.analyzer,
                             "dataType": data_type})

    def _state(self, job: Job) -> dict[str, Any]:
        if job.final == "never" or time.monotonic() - job.created < job.delay:
            return {"id": job.id, "status": "InProgress" if time.monotonic() - job.created > 0.05 else "Waiting",
                    "report": {}}
        if job.final == "Success":
            return {"id": job.id, "status": "Success", "report": self.report(job)}
        return {"id": job.id, "status": job.final, "report": {"errorMessage": f"stand-in job {job.final}"}}

    async def _report(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return JSONResponse({"type": "NotFoundError"}, 404)
        return JSONResponse(self._state(job))

    async def _waitreport(self, request: Request) -> Response:
        if not self.waitreport:
            return JSONResponse({"type": "NotFoundError", "message": "no such route"}, 404)
        if (refused := self._gate(request)) is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return JSONResponse({"type": "NotFoundError"}, 404)
        match = re.fullmatch(r"(\d+)\s*(seconds?|minutes?|s|m)", request.query_params.get("atMost", "1minute"))
        at_most = int(match[1]) * (60 if match[2].startswith("m") and match[2] != "s" else 1) if match else 60
        until = time.monotonic() + at_most
        end = until if job.final == "never" else min(until, job.created + job.delay)
        # one timer per waiting request, as Cortex holds it: no polling loop that would load the machine
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await asyncio.sleep(max(0.0, end - time.monotonic()) + 0.002)
        finally:
            self.waiting -= 1
        return JSONResponse(self._state(job))

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/analyzer/_search", self._search, methods=["POST"]),
            Route("/api/analyzer/{analyzer}/run", self._run, methods=["POST"]),
            Route("/api/job/{job}/report", self._report, methods=["GET"]),
            Route("/api/job/{job}/waitreport", self._waitreport, methods=["GET"]),
        ])

    # life cycle ------------------------------------------------------------------------------------------
    def start(self) -> CortexStandIn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", backlog=4096,
                                timeout_keep_alive=120)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="cortex-stand-in")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the Cortex stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


@contextlib.contextmanager
def running(**knobs: Any) -> Iterator[CortexStandIn]:
    server = CortexStandIn(**knobs).start()
    try:
        yield server
    finally:
        server.stop()
