"""Serving stage, around every request: security headers, and (on loopback) the Host check.

Both wrap the whole app, outside even FastAPI's error middleware (SecureApp), so every
response carries the headers: a 404, a 413 refused before the body was read, a 500.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

__all__ = ["CONTENT_SECURITY_POLICY", "DOCS_CONTENT_SECURITY_POLICY", "SecurityHeaders", "HostCheck", "SecureApp"]

CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'"
# /docs is Swagger UI (app.py, _add_docs): its page starts it with an inline script; its files
# come from this server (/docs-assets/), never a CDN.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs",)


class SecurityHeaders:
    """ASGI middleware: nosniff, the Content-Security-Policy and no referrer on every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CONTENT_SECURITY_POLICY if scope["path"] in _DOCS_PATHS else CONTENT_SECURITY_POLICY

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Content-Security-Policy"] = policy
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheck:
    """ASGI middleware: answer only requests whose Host header is one of `allowed` (names
    without the port). A server on 127.0.0.1 is then out of reach of DNS rebinding: a web
    page whose own name was made to resolve to 127.0.0.1 sends its name as the Host."""

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and _host_name(scope) not in self.allowed:
            names = ", ".join(sorted(self.allowed))
            response = JSONResponse(
                {"detail": f"this server answers requests addressed to {names} only; open it by one of those names."},
                status_code=400,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(scope) -> str:
    """The Host header's name, lower case, without the port ("[::1]:8000" --> "[::1]")."""
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecureApp(FastAPI):
    """FastAPI with SecurityHeaders (and HostCheck, when hosts are named) outside even its error
    middleware, so that every response, a 500 too, carries the headers."""

    def build_middleware_stack(self):
        inner = super().build_middleware_stack()
        allowed = self.state.allowed_hosts
        return SecurityHeaders(inner if allowed is None else HostCheck(inner, allowed))
