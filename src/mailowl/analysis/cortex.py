"""Cortex (TheHive project): analyzers run remotely on the sample; expressions read ``cortexreport``.

A report is not computed in the analysis thread: reading ``cortexreport.<Name>Report`` before the
analyzer's report is attached raises ``NeedsRemote``, which takes the sample out of the worker. The
service parks it (core/parking.py), submits the job with ``CortexClient`` on the event loop, waits for
the report, attaches it and runs the ruleset again from the start, as PeekabooAV 2.1 does.

What the reports offer expressions: PeekabooAV 2.1's attributes of its five analyzers, and for every
analyzer (those five and any other, as ``cortexreport.<AnalyzerName>Report``) its ``taxonomies``, the
worst taxonomy ``level`` and its ``artifacts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

#: expression name -> (Cortex analyzer, data type) of the analyzers PeekabooAV 2.1 knows
KNOWN: dict[str, tuple[str, str]] = {
    "FileInfoReport": ("FileInfo_8_0", "file"),
    "HybridAnalysisReport": ("HybridAnalysis_GetReport_1_0", "file"),
    "VirusTotalQueryReport": ("VirusTotal_GetReport_3_0", "hash"),
    "CuckooSandboxFileReport": ("CuckooSandbox_File_Analysis_Inet_1_2", "file"),
    "CAPEv2FileReport": ("CAPESandbox_File_Analysis_Inet_0_1", "file"),
}
TLP = {"white": 0, "green": 1, "amber": 2, "red": 3}
LEVELS = ("info", "safe", "suspicious", "malicious")  # worst last
_ENDED = ("Success", "Failure", "Deleted")
_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha1": re.compile(r"^[0-9a-f]{40}$"),
        "sha256": re.compile(r"^[0-9a-f]{64}$")}


class NeedsRemote(Exception):  # noqa: N818 (a request, not an error)
    """The ruleset needs a report a remote service has to make: the sample is parked until it is there.
    The rule engine lets it through instead of turning it into a ``failed`` verdict."""

    def __init__(self, analyser: str, analyzer: str, data_type: str = "file") -> None:
        super().__init__(f"{analyser}: waiting for Cortex analyzer {analyzer}")
        self.analyser, self.analyzer, self.data_type = analyser, analyzer, data_type

    def __reduce__(self) -> Any:  # crosses the pipe from a worker process
        return (NeedsRemote, (self.analyser, self.analyzer, self.data_type))


class CortexFailed(RuntimeError):
    """The sample's Cortex analysis failed; the message says how (job state, malformed report, age)."""


class CortexError(RuntimeError):
    """A request to Cortex failed; ``kind`` names how, for metrics: connection, http_5xx, http_4xx,
    auth, malformed, too_large (an answer over MAX_ANSWER), analyzer."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Malformed(ValueError):
    pass


@dataclass(frozen=True)
class CortexSettings:
    """PeekabooAV's ``[cortex]`` of analyzers.conf (and mailowl.toml's ``[cortex]``)."""

    url: str = "http://127.0.0.1:9001"
    tlp: str = "amber"
    api_token: str = ""
    poll_interval: float = 5.0
    submit_original_filename: bool = True
    maximum_job_age: float = 900.0
    #: seconds one ``waitreport`` request may block in Cortex; 0 polls ``report`` every poll_interval
    wait: float = 60.0
    retries: int = 5
    backoff: float = 0.5


def analyzer_of(attr: str) -> tuple[str, str]:
    """(Cortex analyzer, data type) read as ``cortexreport.<attr>``: PeekabooAV's five names, else any
    ``<AnalyzerName>Report`` for a file analyzer."""
    known = KNOWN.get(attr)
    if known is not None:
        return known
    if attr.endswith("Report") and len(attr) > len("Report") and not attr.startswith("_"):
        return attr[:-len("Report")], "file"
    raise AttributeError(f"cortexreport has no attribute '{attr}' (PeekabooAV's analyzers: "
                         f"{', '.join(KNOWN)}; any other analyzer as <AnalyzerName>Report)")


# reports -------------------------------------------------------------------------------------------------
def _list_of_dicts(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Malformed(f"{where} is not a list of objects")
    return value


def validate(analyzer: str, raw: Any) -> dict[str, Any]:
    """The report if it has the shape expressions rely on; raises Malformed saying what is wrong."""
    if not isinstance(raw, dict):
        raise Malformed("the report is not an object")
    summary = raw.get("summary", {})
    if not isinstance(summary, dict):
        raise Malformed("summary is not an object")
    for tax in _list_of_dicts(summary.get("taxonomies", []), "summary.taxonomies"):
        if tax.get("level") not in LEVELS:
            raise Malformed(f"taxonomy level {tax.get('level')!r} is none of {', '.join(LEVELS)}")
        for key in ("namespace", "predicate"):
            if not isinstance(tax.get(key), str):
                raise Malformed(f"taxonomy {key} is missing or not a string")
        if not isinstance(tax.get("value"), (str, int, float)):
            raise Malformed("taxonomy value is missing or not a string or number")
    for art in _list_of_dicts(raw.get("artifacts", []), "artifacts"):
        if not isinstance(art.get("dataType"), str) or not isinstance(art.get("data"), str):
            raise Malformed("an artifact has no dataType or data string")
    if "full" in raw and not isinstance(raw["full"], (dict, list)) and raw["full"] is not None:
        raise Malformed("full is not an object")
    if analyzer == KNOWN["FileInfoReport"][0]:
        full = raw.get("full")
        if not isinstance(full, dict):
            raise Malformed("FileInfo: full is not an object")
        hashes = _fileinfo_hashes(raw)
        for name, pattern in _HEX.items():
            if name in hashes and not (isinstance(hashes[name], str) and pattern.match(hashes[name])):
                raise Malformed(f"FileInfo: the {name} hash is malformed")
    return raw


def _one(items: Any, key: str, value: str) -> dict[str, Any]:
    found = [i for i in items if isinstance(i, dict) and i.get(key) == value] if isinstance(items, list) else []
    return found[0] if len(found) == 1 else {}


def _fileinfo_hashes(raw: Mapping[str, Any]) -> dict[str, Any]:
    full = raw.get("full") or {}
    basic = _one(full.get("results", []) if isinstance(full, dict) else [], "submodule_name", "Basic properties")
    content = _one(basic.get("results", []), "submodule_section_header", "Hashes").get("submodule_section_content")
    return content if isinstance(content, dict) else {}


#: what expressions read of every analyzer's report (``cortexreport.<Name>Report.<attribute>``)
ANALYZER_FIELDS = ("taxonomies", "level", "artifacts", "domain_artifacts", "hash_artifacts", "ip_artifacts", "full",
                   "sha256sum", "md5sum", "ssdeepsum", "n_of_all", "signatures", "malscore")


def expression_name(analyzer: str) -> str:
    """The name expressions read an analyzer's report by: PeekabooAV's for its five, else <analyzer>Report."""
    return next((name for name, (known, _) in KNOWN.items() if known == analyzer), f"{analyzer}Report")


class AnalyzerReport(str):
    """One analyzer's report as expressions read it: ``cortexreport.FileInfoReport.level``.

    A str (the analyzer's name) so that the expression language, which reads attributes of plain values
    only, reads its attributes too."""

    raw: dict[str, Any]

    def __new__(cls, analyzer: str, raw: Mapping[str, Any]) -> AnalyzerReport:
        self = super().__new__(cls, analyzer)
        self.raw = dict(raw)
        return self

    def __reduce__(self) -> Any:
        return (AnalyzerReport, (str(self), self.raw))

    @property
    def analyzer(self) -> str:
        return str(self)

    # every analyzer
    @property
    def taxonomies(self) -> list[dict[str, Any]]:
        return [dict(t) for t in (self.raw.get("summary") or {}).get("taxonomies", [])]

    @property
    def level(self) -> str | None:
        if self.analyzer == KNOWN["VirusTotalQueryReport"][0]:  # PeekabooAV 2.1: the VT taxonomy's level
            level: str | None = self._vt().get("level")
            return level
        levels = [t.get("level") for t in self.taxonomies if t.get("level") in LEVELS]
        return max(levels, key=LEVELS.index) if levels else None

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return [dict(a) for a in self.raw.get("artifacts", [])]

    def _artifacts(self, kind: str) -> list[str]:
        return [a["data"] for a in self.raw.get("artifacts", []) if a.get("dataType") == kind
                and isinstance(a.get("data"), str)]

    @property
    def domain_artifacts(self) -> list[str]:
        return self._artifacts("domain")

    @property
    def hash_artifacts(self) -> list[str]:
        return self._artifacts("hash")

    @property
    def ip_artifacts(self) -> list[str]:
        return self._artifacts("ip")

    @property
    def full(self) -> Any:
        return self.raw.get("full")

    # FileInfo
    @property
    def sha256sum(self) -> str | None:
        return _fileinfo_hashes(self.raw).get("sha256")

    @property
    def md5sum(self) -> str | None:
        return _fileinfo_hashes(self.raw).get("md5")

    @property
    def ssdeepsum(self) -> str | None:
        return _fileinfo_hashes(self.raw).get("ssdeep")

    # VirusTotal
    def _vt(self) -> dict[str, Any]:
        return _one(self.taxonomies, "namespace", "VT")

    @property
    def n_of_all(self) -> int:
        value = str(self._vt().get("value", "-1/0"))
        try:
            return int(value.split("/")[0])
        except ValueError:
            return -1

    # Cuckoo and CAPEv2
    @property
    def signatures(self) -> Any:
        full = self.full
        return full.get("signatures") if isinstance(full, dict) else None

    @property
    def malscore(self) -> float:
        for tax in self.taxonomies:
            if tax.get("predicate") == "Malscore":
                try:
                    return float(tax["value"])
                except (TypeError, ValueError):
                    return -1
        return -1


@dataclass
class CortexReport:
    """``cortexreport``: the reports attached to the sample so far, or why its Cortex analysis failed.
    Reading an analyzer whose report is not attached raises NeedsRemote."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: str | None = None

    def __getattr__(self, attr: str) -> AnalyzerReport:
        if attr.startswith("__") or attr in ("reports", "failure"):
            raise AttributeError(attr)
        analyzer, data_type = analyzer_of(attr)
        if self.failure is not None:
            raise CortexFailed(self.failure)
        raw = self.reports.get(analyzer)
        if raw is None:
            raise NeedsRemote("cortexreport", analyzer, data_type)
        return AnalyzerReport(analyzer, raw)


class TrialCortexReport:
    """``cortexreport`` in the start-up check of expressions: every analyzer's report is empty."""

    def __getattr__(self, attr: str) -> AnalyzerReport:
        if attr.startswith("__"):
            raise AttributeError(attr)
        analyzer, _ = analyzer_of(attr)
        return AnalyzerReport(analyzer, {})


def empty_report(name: str) -> AnalyzerReport:
    return AnalyzerReport(KNOWN[name][0], {})


# the client ------------------------------------------------------------------------------------------------
#: short requests (search, run, report) in flight at a time; a burst of submissions queues behind them
SHORT_REQUESTS = 32
#: seconds a short request may take, from when it has a slot
SHORT_TIMEOUT = 30.0
#: the most of a Cortex answer that is read: reports of sandbox analyzers run to megabytes, not more
MAX_ANSWER = 64 * 2**20


@dataclass(slots=True)
class Answer:
    status_code: int
    body: bytes


class CortexClient:
    """Cortex's REST API, asynchronous (aiohttp: a waiting sample costs a third of httpx's CPU per answer,
    see BENCHMARKS.md). Connection errors and 5xx answers are retried with exponential backoff
    (``backoff * 2**n`` seconds, ``retries`` times); 401/403 is a configuration error."""

    def __init__(self, settings: CortexSettings, on_error: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        #: made on first use, again in another event loop: aiohttp binds a session to the running loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._short: aiohttp.ClientSession | None = None
        #: the long ``waitreport`` requests: one per parked sample, none of them queued behind another
        self._long: aiohttp.ClientSession | None = None
        #: short requests in flight: a burst of submissions waits here, where its timeout has not started
        self._slots = asyncio.Semaphore(SHORT_REQUESTS)
        self._analyzers: dict[str, str] = {}
        #: the last configuration error (wrong api_token), cleared by the next accepted request
        self.problem: str | None = None
        self.on_error = on_error or (lambda kind: None)

    def _session(self, wait: bool) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the old loop's sessions cannot be used (nor closed) here
            self._loop, self._short, self._long = loop, None, None
            self._slots = asyncio.Semaphore(SHORT_REQUESTS)
        session = self._long if wait else self._short
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            session = aiohttp.ClientSession(headers=self._headers, connector=connector, auto_decompress=True,
                                            cookie_jar=aiohttp.DummyCookieJar())
            if wait:
                self._long = session
            else:
                self._short = session
        return session

    async def close(self) -> None:
        for session in (self._short, self._long):
            if session is not None:
                await session.close()
        self._short = self._long = None

    async def _request(self, method: str, path: str, timeout: float | None = None, wait: bool = False,
                       **kwargs: Any) -> Answer:
        timeout = timeout if timeout is not None else SHORT_TIMEOUT
        attempt = 0
        while True:
            kind, message = "", ""
            try:
                session = self._session(wait)
                async with contextlib.nullcontext() if wait else self._slots:
                    answer = await self._send(session, method, path, timeout, **kwargs)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                what = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "")
                kind, message = "connection", f"Cortex at {self.settings.url} is unreachable: {type(exc).__name__}: {what}"
            else:
                if answer.status_code in (401, 403):
                    self.problem = (f"Cortex refused the api_token ([cortex] api_token): HTTP {answer.status_code} "
                                    f"on {_endpoint(path)}")
                    self.on_error("auth")
                    raise CortexError("auth", self.problem)
                if answer.status_code < 500:
                    self.problem = None
                    return answer
                kind, message = "http_5xx", f"Cortex answered HTTP {answer.status_code} on {_endpoint(path)}"
            self.on_error(kind)
            if attempt >= self.settings.retries:
                raise CortexError(kind, message)
            await asyncio.sleep(self.settings.backoff * 2 ** attempt)
            attempt += 1

    async def _send(self, session: aiohttp.ClientSession, method: str, path: str, timeout: float,
                    **kwargs: Any) -> Answer:
        if callable(kwargs.get("data")):  # a multipart form is sent once: each attempt gets its own
            kwargs["data"] = kwargs["data"]()
        async with session.request(method, self._base + path, timeout=aiohttp.ClientTimeout(total=timeout),
                                   allow_redirects=False, **kwargs) as response:
            if (response.content_length or 0) > MAX_ANSWER:
                raise _too_large(path)
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise _too_large(path)
                chunks.append(chunk)
            return Answer(response.status, b"".join(chunks))

    @staticmethod
    def _json(response: Answer, what: str) -> Any:
        try:
            return orjson.loads(response.body)
        except ValueError:  # not JSON, or nested deeper than orjson's limit of 1,024
            raise CortexError("malformed", f"Cortex sent no JSON for {what} (HTTP {response.status_code})") from None

    async def analyzer_id(self, name: str) -> str:
        cached = self._analyzers.get(name)
        if cached is not None:
            return cached
        response = await self._request("POST", "/api/analyzer/_search?range=0-1",
                                       json={"query": {"_field": "name", "_value": name}})
        if response.status_code != 200:
            raise CortexError("http_4xx", f"Cortex answered HTTP {response.status_code} looking up analyzer {name}")
        found = self._json(response, f"analyzer {name}")
        if not isinstance(found, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), str)
                                                  for a in found):
            raise CortexError("malformed", f"Cortex's answer looking up analyzer {name} is malformed")
        if not found:
            raise CortexError("analyzer", f"Cortex analyzer {name} is not enabled in Cortex")
        if len(found) > 1:
            raise CortexError("analyzer", f"Cortex has more than one analyzer named {name}")
        self._analyzers[name] = found[0]["id"]
        return found[0]["id"]

    async def submit(self, analyzer: str, data_type: str, content: bytes, sha256: str, filename: str | None,
                     extension: str | None, type_declared: str | None) -> str:
        """Run ``analyzer`` on the sample; the Cortex job's id."""
        analyzer_id = await self.analyzer_id(analyzer)
        tlp = TLP[self.settings.tlp]
        kwargs: dict[str, Any]
        if data_type == "hash":
            kwargs = {"data": {"data": sha256, "dataType": "hash", "tlp": str(tlp)}}
        else:
            name = f"{sha256}.{extension}" if extension else sha256
            if self.settings.submit_original_filename and filename:
                name = filename
            def form() -> aiohttp.FormData:
                data = aiohttp.FormData(quote_fields=False)  # the file name as the sender wrote it, not %-encoded
                data.add_field("_json", json.dumps({"dataType": "file", "tlp": tlp}))
                data.add_field("data", content, filename=name, content_type=type_declared or "application/octet-stream")
                return data
            kwargs = {"data": form}
        response = await self._request("POST", f"/api/analyzer/{analyzer_id}/run", **kwargs)
        if response.status_code != 200:
            raise CortexError("http_4xx", f"Cortex answered HTTP {response.status_code} running {analyzer}")
        job = self._json(response, f"the job of {analyzer}")
        if not isinstance(job, dict) or not isinstance(job.get("id"), str):
            raise CortexError("malformed", f"Cortex's answer running {analyzer} has no job id")
        return job["id"]

    async def status(self, job_id: str, wait: float) -> tuple[str, Any]:
        """(status, report) of a job; with ``wait`` > 0 Cortex holds the answer until the job ends or
        ``wait`` seconds pass (``waitreport``), else answers at once (``report``)."""
        if wait > 0:
            path, timeout = f"/api/job/{job_id}/waitreport?atMost={max(1, int(wait))}seconds", wait + 30
        else:
            path, timeout = f"/api/job/{job_id}/report", SHORT_TIMEOUT
        response = await self._request("GET", path, timeout=timeout, wait=wait > 0)
        if response.status_code == 404 and wait > 0:
            raise CortexError("no_waitreport", f"Cortex has no waitreport for job {job_id}")
        if response.status_code != 200:
            raise CortexError("http_4xx", f"Cortex answered HTTP {response.status_code} for job {job_id}")
        body = self._json(response, f"job {job_id}")
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise CortexError("malformed", f"Cortex's answer for job {job_id} has no status")
        return body["status"], body.get("report")


def _endpoint(path: str) -> str:
    """The path without its query, for messages."""
    return path.split("?")[0]


def _too_large(path: str) -> CortexError:
    return CortexError("too_large", f"Cortex's answer on {_endpoint(path)} is larger than {MAX_ANSWER // 2**20} MiB")


def ended(status: str) -> bool:
    return status in _ENDED
