"""The pages: each reads a bounded amount from the store (store/browse.py) and renders one template."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mailowl.store import browse
from mailowl.web.loglines import job_line, message_line

TEMPLATES = Path(__file__).parent / "templates"
PAGE = 50
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_JOB_ID = re.compile(r"[1-9][0-9]{0,18}")
_SUPPORT_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
#: chart spans: (bucket, count)
SPANS = {"1h": (timedelta(minutes=1), 60), "24h": (timedelta(hours=1), 24), "7d": (timedelta(hours=6), 28)}
RESULTS = ["bad", "failed", "good", "ignored", "unknown", "pending"]


def environment() -> Environment:
    # autoescape everywhere: filenames, subjects, senders and reasons come from whoever sent the mail
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S") if value else ""
    env.filters["size"] = _size
    return env


def _size(value: int | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


class Pages:
    def __init__(self, engine: Callable[[], AsyncEngine | None], queue_depth: Callable[[], int],
                 clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self.queue_depth = queue_depth
        self.clock = clock or (lambda: datetime.now(UTC))
        self.env = environment()

    @property
    def engine(self) -> AsyncEngine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the store is not open")
        return engine

    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(request=request, **values)
        return HTMLResponse(html, status, headers=_HEADERS)

    def not_found(self, request: Request, what: str) -> HTMLResponse:
        return self.render(request, "missing.html", 404, what=what)

    async def dashboard(self, request: Request) -> Response:
        span = request.query_params.get("span", "24h")
        if span not in SPANS:
            span = "24h"
        step, count = SPANS[span]
        now = self.clock()
        buckets = await browse.verdicts_over_time(self.engine, now, step, count)
        series = {r: [b.counts.get(r, 0) for b in buckets] for r in RESULTS}
        chart = {"x": [int(b.start.timestamp()) for b in buckets], "series": series}
        return self.render(
            request, "dashboard.html", chart=chart, span=span, spans=list(SPANS),
            totals={r: sum(series[r]) for r in RESULTS},
            summary=await browse.summary(self.engine, now), queue=self.queue_depth(),
            messages=(await browse.latest_messages(self.engine, 20)).items,
            jobs=(await browse.latest_jobs(self.engine, 10)).items)

    async def messages(self, request: Request) -> Response:
        page = await browse.latest_messages(self.engine, PAGE, request.query_params.get("before"))
        return self.render(request, "list.html", title="Messages", messages=page.items,
                           more=_more(request, page.next))

    async def jobs(self, request: Request) -> Response:
        page = await browse.latest_jobs(self.engine, PAGE, request.query_params.get("before"))
        return self.render(request, "list.html", title="Jobs", jobs=page.items, more=_more(request, page.next))

    async def message(self, request: Request) -> Response:
        support_id = request.path_params["support_id"]
        found = await browse.message(self.engine, support_id) if _SUPPORT_ID.fullmatch(support_id) else None
        if found is None:
            return self.not_found(request, f"No message with support id {support_id}")
        jobs: dict[int, browse.JobRow] = {}  # the parts' own jobs, by job id
        cached: dict[int, browse.JobRow] = {}  # by part index: the job whose verdict the cache answered with
        for index, part in enumerate(found.parts):
            if part.job_id:
                row = await browse.job(self.engine, part.job_id)
                if row is not None:
                    jobs[part.job_id] = row
            elif part.sha256:
                # the newest finished job of the same content under the same name gave the cached verdict
                earlier = await browse.jobs_by_sha256(self.engine, part.sha256, 20)
                match = [j for j in earlier.items if j.filename == part.filename and j.state == "done"]
                if match:
                    cached[index] = match[0]
        return self.render(request, "message.html", message=found, jobs=jobs, cached=cached,
                           line=message_line(found, jobs))

    async def job(self, request: Request) -> Response:
        key = request.path_params["key"]
        others: list[browse.JobRow] = []
        if _JOB_ID.fullmatch(key):
            found = await browse.job(self.engine, int(key))
        elif _SHA256.fullmatch(key):
            page = await browse.jobs_by_sha256(self.engine, key, 20)
            found, others = (page.items[0], page.items[1:]) if page.items else (None, [])
        else:
            found = None
        if found is None:
            return self.not_found(request, f"No job {key}")
        return self.render(request, "job.html", job=found, others=others, line=job_line(found))

    async def search(self, request: Request) -> Response:
        """Support id, job id, sha256, sender or recipient (an address; ``by=to``), or a part of a filename."""
        query = request.query_params.get("q", "").strip()
        before = request.query_params.get("before")
        by = request.query_params.get("by", "from")
        values: dict[str, Any] = {"title": "Search", "q": query, "by": by}
        if not query:
            return self.render(request, "list.html", **values)
        if query.startswith("mo-") and _SUPPORT_ID.fullmatch(query):
            if await browse.message(self.engine, query) is not None:
                return RedirectResponse(f"/ui/messages/{query}", 303)
            values["messages"] = []
        elif _JOB_ID.fullmatch(query):
            return RedirectResponse(f"/ui/jobs/{query}", 303)
        elif _SHA256.fullmatch(query):
            page = await browse.jobs_by_sha256(self.engine, query, PAGE, before)
            values.update(jobs=page.items, more=_more(request, page.next))
        elif "@" in query:
            find = browse.messages_to if by == "to" else browse.messages_from
            mpage = await find(self.engine, query, PAGE, before)
            values.update(messages=mpage.items, more=_more(request, mpage.next), address=True)
        else:
            page = await browse.jobs_by_filename(self.engine, query, PAGE, before)
            values.update(jobs=page.items, more=_more(request, page.next), window=browse.WINDOW)
        return self.render(request, "list.html", **values)


def _more(request: Request, cursor: str | None) -> str | None:
    """The next page's URL: this page's query with the cursor of its last row."""
    if cursor is None:
        return None
    params = {k: v for k, v in request.query_params.items() if k != "before"}
    return f"{request.url.path}?{urlencode({**params, 'before': cursor})}"


# the chart's script is the page's only script; nothing else may run, whatever a value holds
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                       "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
