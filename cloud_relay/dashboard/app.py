"""The dashboard's Starlette app: the page, its static files and a read-only JSON API.

Every route is GET (Starlette adds HEAD); anything else is 405. The store is
opened read-only by the caller. Handlers are plain functions, so Starlette runs
them on its thread pool and the (blocking) store never stalls the event loop.

``GET /health`` (always public), ``GET /`` (the page), ``/static/*``,
``GET /api/config``, ``GET /api/logs``, ``GET /api/devices``,
``GET /api/summary``, ``GET /api/series``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_relay.dashboard import queries
from cloud_relay.dashboard.auth import Auth, AuthMiddleware
from cloud_relay.store import RelayStore
from edge_slm import __version__
from edge_slm.contract import Outcome

STATIC_DIR = Path(__file__).parent / "static"

#: Same-origin everything; uPlot styles its elements from script (CSSOM), which
#: ``style-src 'self'`` allows.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class BadParam(ValueError):
    """A query parameter that cannot be used; answered 400."""


def _float(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadParam(f"{name} must be epoch seconds, got {raw!r}") from None


def _int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadParam(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def filters_from(params: Mapping[str, str]) -> queries.LogFilters:
    outcome_raw = params.get("outcome", "").strip()
    try:
        outcome = Outcome(outcome_raw) if outcome_raw else None
    except ValueError:
        known = ", ".join(o.value for o in Outcome)
        raise BadParam(f"outcome must be one of {known}, got {outcome_raw!r}") from None
    return queries.LogFilters(
        device_id=params.get("device", "").strip() or None,
        outcome=outcome,
        since=_float(params, "since"),
        until=_float(params, "until"),
        search=params.get("q", "").strip() or None,
    )


def _security_headers(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def create_app(
    store: RelayStore,
    *,
    auth: Auth | None = None,
    refresh_s: float = 5.0,
    stale_after_s: float = 300.0,
    max_page_size: int = 200,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """The dashboard over ``store`` (which the caller opened, read-only, and closes)."""
    auth = auth or Auth()

    def api(handler: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(handler(request))
            except BadParam as exc:
                return JSONResponse(
                    {"error": {"code": "bad_request", "message": str(exc)}}, status_code=400
                )

        return endpoint

    def config(_: Request) -> dict[str, Any]:
        return {
            "version": __version__,
            "refresh_s": refresh_s,
            "auth": auth.mode,
            "outcomes": [o.value for o in Outcome],
        }

    def logs(request: Request) -> dict[str, Any]:
        params = request.query_params
        filters = filters_from(params)
        page_size = _int(params, "page_size", min(50, max_page_size), 1, max_page_size)
        page = _int(params, "page", 1, 1, 1_000_000)
        return queries.log_page(store, filters, page=page, page_size=page_size)

    def devices(_: Request) -> dict[str, Any]:
        now = clock()
        rows = queries.device_list(store, now=now, stale_after_s=stale_after_s)
        return {"now": now, "devices": rows}

    def summary(request: Request) -> dict[str, Any]:
        return queries.summary(store, filters_from(request.query_params))

    def series(request: Request) -> dict[str, Any]:
        return queries.series(store, filters_from(request.query_params), now=clock())

    def index(_: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/config", api(config), methods=["GET"]),
        Route("/api/logs", api(logs), methods=["GET"]),
        Route("/api/devices", api(devices), methods=["GET"]),
        Route("/api/summary", api(summary), methods=["GET"]),
        Route("/api/series", api(series), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(AuthMiddleware, auth=auth)])
    return _security_headers(app)
