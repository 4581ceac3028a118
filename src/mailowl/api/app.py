"""The ASGI application."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailowl import __version__
from mailowl.analysis.sample import Sample
from mailowl.api.ids import BadId, parse_job_id, parse_support_id
from mailowl.api.messages import MessagesApi
from mailowl.api.openapi import openapi_document
from mailowl.api.upload import UploadError, boundary_of, read_form, receive_body
from mailowl.core.service import AnalysisService, QueueFull
from mailowl.mail.policy import MailPolicy
from mailowl.store import Job, StoreError

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_FORM_OVERHEAD = 64 * 1024
MAX_WAIT = 300.0


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"message": message}, status, headers=headers)


_RETRY = {"Retry-After": "5"}
# ASGI servers give header names in lower case
_UPLOAD_HEADERS = {b"content-type", b"content-length", b"x-content-disposition"}
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_json(send: Any, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class V1FastPath:
    """PeekabooAV's two hot endpoints served straight from ASGI: clients poll /v1/report many times per
    sample, and Starlette's layers would cost more than the answer itself. Everything else goes on to
    the Starlette application."""

    def __init__(self, app: ASGIApp, api: Api, messages: MessagesApi | None = None) -> None:
        self.app = app
        self.api = api
        self.messages = messages

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path.startswith("/v1/report/") and method == "GET" and "/" not in path[11:]:
                try:
                    status, payload = await self.api.report(path[11:])
                except StoreError as exc:  # the database is down: the client polls again later
                    status, payload = 503, {"message": f"Store unavailable, try again later: {exc}"}
                await send_json(send, status, payload, [(b"retry-after", b"5")] if status == 503 else None)
                return
            if path == "/v1/scan" and method == "POST":
                headers = {}
                for key, value in scope["headers"]:
                    if key in _UPLOAD_HEADERS:
                        headers[key.decode("latin-1")] = value.decode("latin-1")
                status, payload, job, _ = await self.api.submit(headers, receive_body(receive), v2=False)
                if job is not None:
                    payload = {"job_id": job.id}
                await send_json(send, status, payload, [(b"retry-after", b"5")] if status == 503 else None)
                return
            if path == "/v2/messages" and method == "POST" and self.messages is not None:
                try:
                    status, payload = await self.messages.post(scope, receive)
                except Exception:  # answered like Starlette's 500 handler; the MTA hook tempfails
                    log.exception("POST /v2/messages failed")
                    status, payload = 500, {"message": "Internal error; see the mailowl log"}
                await send_json(send, status, payload, [(b"retry-after", b"5")] if status == 503 else None)
                return
        await self.app(scope, receive, send)


class BearerAuth:
    """Everything but /healthz needs ``Authorization: Bearer <token>`` when a token is configured."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                response = error(401, "Missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Api:
    def __init__(self, service: AnalysisService, max_sample_size: int, report_wait: float = 0.0) -> None:
        self.service = service
        self.max_sample_size = max_sample_size
        self.report_wait = report_wait

    # PeekabooAV v1 ------------------------------------------------------------------------------------------
    async def root(self, request: Request) -> Response:
        return JSON({"hello": "PeekabooAV", "product": "mailowl", "version": __version__})

    async def ping(self, request: Request) -> Response:
        return JSON({"answer": "pong"})

    async def _sample(self, headers: Mapping[str, str], body: AsyncIterator[bytes],
                      v2: bool) -> tuple[Sample, dict[str, Any]]:
        boundary = boundary_of(headers.get("content-type", ""))
        if boundary is None:
            raise UploadError(400, "Invalid content type, use multipart/form-data")
        if not boundary:
            raise UploadError(400, "Invalid MIME structure in request")
        length = headers.get("content-length", "")
        # a length of many digits is too large too, without asking int() to read them all
        if length.isascii() and length.isdigit() and (
                len(length) > 19 or int(length) > self.max_sample_size + _FORM_OVERHEAD):
            raise UploadError(413, f"Sample too large: the limit is {self.max_sample_size} bytes")
        parts = await read_form(body, boundary, self.max_sample_size)
        if not parts:
            raise UploadError(400, "Invalid MIME structure in request")
        options: dict[str, Any] = {}
        if v2:
            extra = [p for p in parts if p.name == "options"]
            parts = [p for p in parts if p.name != "options"]
            if len(extra) > 1:
                raise UploadError(400, 'Field "options" given more than once')
            if extra:
                options = _options(extra[0].data())
        if len(parts) != 1:
            raise UploadError(400, 'Invalid number of fields in form, we accept only one field "file"')
        part = parts[0]
        if part.name != "file":
            raise UploadError(400, 'Field "file" missing from request')
        disposition = headers.get("x-content-disposition") or None
        return Sample(part.data(), filename=part.filename or None, type_declared=part.content_type,
                      content_disposition=disposition), options

    async def submit(self, headers: Mapping[str, str], body: AsyncIterator[bytes],
                     v2: bool) -> tuple[int, dict[str, Any], Job | None, dict[str, Any]]:
        """(status, error payload, job, options) for an upload."""
        try:
            sample, options = await self._sample(headers, body, v2)
        except UploadError as exc:
            return exc.status, {"message": exc.message}, None, {}
        try:
            job = await self.service.submit(sample, force=bool(options.get("force")))
        except QueueFull:
            return 503, {"message": "Analysis queue is full, try again later"}, None, {}
        except StoreError as exc:  # no durable job, no id: the client must try again
            return 503, {"message": f"Store unavailable, try again later: {exc}"}, None, {}
        return 200, {}, job, options

    async def report(self, raw: str) -> tuple[int, dict[str, Any]]:
        try:
            job_id = parse_job_id(raw)
        except BadId as exc:
            # PeekabooAV's text for 0; a clear one for the rest, which PeekabooAV answered with 404
            return 400, {"message": "job ID missing from request" if exc.zero else exc.message}
        job = await self.service.get_job(job_id)
        if job is not None and not job.finished and self.report_wait:
            # answering when the verdict is ready, rather than 404 now, saves v1 clients a round of polling
            await job.wait(self.report_wait)
        if job is None or not job.finished:
            return 404, {"message": f"No analysis result yet for job {job_id}"}
        assert job.result is not None
        return 200, {"result": job.result.name, "reason": job.reason}

    # mailowl v2 ---------------------------------------------------------------------------------------------
    async def scan_v2(self, request: Request) -> Response:
        status, problem, job, options = await self.submit(request.headers, receive_body(request.receive), v2=True)
        if job is None:
            return JSON(problem, status, headers=_RETRY if status == 503 else None)
        wait = float(options.get("wait", 0))
        if wait > 0:
            await job.wait(min(wait, MAX_WAIT))
        return JSON(job.as_dict(), 200 if job.finished else 202)

    async def job_v2(self, request: Request) -> Response:
        try:
            job_id = parse_job_id(request.path_params["job_id"])
        except BadId as exc:
            return error(400, exc.message)
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            return error(400, "wait must be a number of seconds")
        if not 0 <= wait <= MAX_WAIT:
            return error(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
        job = await self.service.get_job(job_id)
        if job is None:
            return error(404, f"No job {job_id}")
        await job.wait(wait)
        return JSON(job.as_dict())

    async def message_v2(self, request: Request) -> Response:
        try:
            support_id = parse_support_id(request.path_params["support_id"])
        except BadId as exc:
            return error(400, exc.message)
        record = await self.service.store.get_message(support_id)
        if record is None:
            return error(404, f"No message with support id {support_id}")
        parts = []
        for part in record.parts:
            job = await self.service.get_job(part["job_id"]) if part.get("job_id") else None
            parts.append({**part, "job": job.as_dict() if job is not None else None})
        return JSON({**record.as_dict(), "created_at": record.created_at.isoformat(), "parts": parts})

    # operations ---------------------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        health: dict[str, Any] = {"status": "ok", "queue": self.service.pending}
        if self.service.parking is not None:  # parked samples, and a configuration error (wrong api_token)
            health["cortex"] = self.service.parking.health()
        return JSON(health)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return JSON(openapi_document())


def _options(raw: bytes) -> dict[str, Any]:
    try:
        options = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise UploadError(400, f'Field "options" is not valid JSON: {exc}') from None
    if not isinstance(options, dict):
        raise UploadError(400, 'Field "options" must be a JSON object')
    unknown = set(options) - {"force", "wait"}
    if unknown:
        raise UploadError(400, f'Field "options": unknown key(s) {", ".join(sorted(unknown))} (allowed: force, wait)')
    wait = options.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT:
        raise UploadError(400, f'Field "options": wait must be a number of seconds from 0 to {MAX_WAIT:g}')
    if not isinstance(options.get("force", False), bool):
        raise UploadError(400, 'Field "options": force must be true or false')
    return options


async def _post_only(request: Request) -> Response:
    return error(405, f"Method {request.method} not allowed for URL {request.url.path}")


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, f"Requested URL {request.url.path} not found")


async def _method(request: Request, exc: Exception) -> Response:
    return error(405, f"Method {request.method} not allowed for URL {request.url.path}")


async def _store_down(request: Request, exc: Exception) -> Response:
    """A read the database could not answer (it is down or unreachable): retry, nothing is lost."""
    return error(503, f"Store unavailable, try again later: {exc}", _RETRY)


async def _crash(request: Request, exc: Exception) -> Response:
    return error(500, "Internal error; see the mailowl log")


def create_app(service: AnalysisService, max_sample_size: int, token: str = "",
               lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None,
               report_wait: float = 0.0, policy: MailPolicy | None = None) -> Any:
    api = Api(service, max_sample_size, report_wait)
    # the message API decides with the mail policy the milter and the content filter use, and takes
    # messages up to the content filter's SMTP SIZE limit
    messages = MessagesApi(service, policy or MailPolicy(), max_sample_size * 4)
    routes = [
        Route("/", api.root, methods=["GET"]),
        Route("/ping", api.ping, methods=["GET"]),
        Route("/v2/scan", api.scan_v2, methods=["POST"]),
        Route("/v2/jobs/{job_id}", api.job_v2, methods=["GET"]),
        Route("/v2/messages", _post_only, methods=["GET"]),  # POST is served by V1FastPath
        Route("/v2/messages/{support_id}", api.message_v2, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    app: Any = Starlette(routes=routes, lifespan=lifespan,
                         exception_handlers={404: _not_found, 405: _method, 500: _crash,
                                             StoreError: _store_down})
    app = V1FastPath(app, api, messages)
    if token:
        app = BearerAuth(app, token)
    return app

