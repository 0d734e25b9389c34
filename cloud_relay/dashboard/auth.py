"""Bearer token and/or HTTP basic auth for the dashboard, as plain ASGI middleware.

What needs auth: every data route. With basic auth the page itself is protected
too, so the browser asks once and then sends the credentials with every fetch.
With a token only, the page shell (HTML, JS, CSS: no data) is public and its
script sends the token as ``Authorization: Bearer``. ``/health`` is always public.
Secrets are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

REALM = "cloud-relay dashboard"


@dataclass(frozen=True, slots=True)
class Auth:
    token: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.username is not None

    @property
    def mode(self) -> str:
        """What the page must do: ``none``, ``token`` (send it) or ``basic`` (the browser does)."""
        if self.username is not None:
            return "basic"
        return "token" if self.token is not None else "none"

    def is_public(self, path: str) -> bool:
        if path == "/health" or not self.enabled:
            return True
        shell = path in {"/", "/api/config"} or path.startswith("/static/")
        return shell and self.username is None

    def accepts(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer" and self.token is not None:
            return hmac.compare_digest(credentials.encode(), self.token.encode())
        if scheme == "basic" and self.username is not None and self.password is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            user_ok = hmac.compare_digest(user.encode(), self.username.encode())
            password_ok = hmac.compare_digest(password.encode(), self.password.encode())
            return bool(sep) and user_ok and password_ok
        return False

    def challenge(self) -> str:
        return f'Basic realm="{REALM}"' if self.username is not None else f'Bearer realm="{REALM}"'


class AuthMiddleware:
    """Answers 401 to requests for non-public paths without valid credentials."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.auth.is_public(scope["path"]):
            headers = Headers(scope=scope)
            if not self.auth.accepts(headers.get("authorization")):
                response = JSONResponse(
                    {"error": {"code": "unauthorized", "message": "credentials required"}},
                    status_code=401,
                    headers={"WWW-Authenticate": self.auth.challenge()},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
