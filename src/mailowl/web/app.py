"""/ui as an ASGI application, and ``with_ui``, which serves it beside the REST API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mailowl.web import auth
from mailowl.web.pages import Pages

STATIC = Path(__file__).parent / "static"


class Guard:
    """Lets a request through with the token (bearer header or login cookie); else a browser is sent to the
    login form and anything else gets 401. The login form and the static files need no token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.token or path.startswith(("/ui/login", "/ui/static/")):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if auth.allowed(self.token, request.headers.get("authorization"), request.cookies.get(auth.COOKIE)):
            await self.app(scope, receive, send)
            return
        response: Response
        if "text/html" in request.headers.get("accept", "") and request.method == "GET":
            target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            response = RedirectResponse(f"/ui/login?{_query(next=target)}", 303)
        else:
            response = Response("Missing or wrong bearer token\n", 401, {"WWW-Authenticate": "Bearer"},
                                media_type="text/plain")
        await response(scope, receive, send)


def _query(**values: str) -> str:
    return urlencode(values)


def create_ui(engine: Callable[[], AsyncEngine | None], queue_depth: Callable[[], int], token: str = "",
              clock: Callable[[], datetime] | None = None) -> Any:
    pages = Pages(engine, queue_depth, clock)

    async def login_form(request: Request) -> Response:
        return pages.render(request, "login.html", next=auth.safe_next(request.query_params.get("next")),
                            wrong=False, token_set=bool(token))

    async def login(request: Request) -> Response:
        form = await request.form()
        given, target = str(form.get("token", "")), auth.safe_next(str(form.get("next", "")))
        if not token or auth.allowed(token, f"Bearer {given}", None):
            response: Response = RedirectResponse(target, 303)
            if token:
                response.set_cookie(auth.COOKIE, auth.cookie_value(token), httponly=True, samesite="strict",
                                    path="/ui", secure=request.url.scheme == "https")
            return response
        return pages.render(request, "login.html", 401, next=target, wrong=True, token_set=True)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(auth.COOKIE, path="/ui")
        return response

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/", 308)

    routes = [
        Route("/ui", root),
        Mount("/ui", routes=[
            Route("/", pages.dashboard, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/messages", pages.messages, methods=["GET"]),
            Route("/messages/{support_id}", pages.message, methods=["GET"]),
            Route("/jobs", pages.jobs, methods=["GET"]),
            Route("/jobs/{key}", pages.job, methods=["GET"]),
            Route("/search", pages.search, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]),
    ]

    async def missing(request: Request, exc: Exception) -> Response:
        return pages.not_found(request, f"No page {request.url.path}")

    app = Starlette(routes=routes, exception_handlers={404: missing})
    return Guard(app, token)


def with_ui(api: Any, ui: Any) -> Any:
    """One ASGI application: /ui and below go to the web interface, everything else (and the lifespan) to the
    API, whose own bearer check then does not apply to /ui."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/ui" or path.startswith("/ui/"):
            await ui(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app
