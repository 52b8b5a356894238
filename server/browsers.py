"""The browser trust boundary: pages of other sites, and DNS rebinding, cannot drive the server.

A browser lets any page open a WebSocket to, or POST a "simple" request (text/plain, forms) at,
any address, localhost included, and sends the user's network position along. What it always
adds is the page's `Origin`, and the `Host` it thinks it is talking to. So, on every HTTP
request and WebSocket handshake, before anything else runs:

- `Host` must be one of `Settings.effective_allowed_hosts()`. On a loopback address that is
  only loopback names: a rebinding attack (evil.example resolving to 127.0.0.1) arrives with
  `Host: evil.example` and is refused, as Jupyter and Ollama refuse it.
- `Origin`, when present, must be this server's own origin (an http(s) origin whose host and
  port are the ones the `Host` names; the scheme is not compared, as Jupyter does not, since
  behind a TLS proxy the page is https and this server plain http) or one of
  `allowed_origins` (Ollama's `OLLAMA_ORIGINS`, here `VOXGATE_ALLOWED_ORIGINS`). Requests
  without an `Origin` come from programs, not pages, and pass (the API key is their gate).
  The literal `null` origin (sandboxed frames, `file:` pages) is foreign unless listed.

A refused HTTP request gets 403 with OpenAI's error body (`host_not_allowed`,
`origin_not_allowed`); a refused WebSocket handshake gets the same as an HTTP denial (never an
accepted socket). Pages of an allowed foreign origin also get CORS headers, so their scripts
can read the answers and send `Authorization`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from voxgate.server.settings import Settings

BROWSER_REFUSALS = Counter(
    "voxgate_browser_refusals",
    "HTTP requests and WebSocket handshakes refused at the browser boundary, by reason "
    "(origin: a foreign page; host: a Host header not allowed, as in DNS rebinding).",
    ["reason"],
)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the guard (and CORS for the allowed foreign origins) around `app`."""
    origins = settings.allowed_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Voxgate-Instructions", "X-Voxgate-Response-Id"],
            max_age=600,
        )
    app.add_middleware(
        BrowserGuard, allowed_hosts=settings.effective_allowed_hosts(), allowed_origins=origins
    )


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether a Host header value (port ignored) matches the allowlist."""
    name = _host_name(host)
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or pattern.strip("[]") == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def origin_allowed(origin: str, host: str, allowed: Sequence[str]) -> bool:
    """Whether a page of `origin` may call a server it reached as `host`."""
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed or origin in (o.lower().rstrip("/") for o in allowed):
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host.lower()


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BrowserGuard:
    """ASGI middleware: refuse requests whose Host or Origin is not allowed (see module doc)."""

    def __init__(
        self, app: ASGIApp, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]
    ) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        self.allowed_origins = list(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        if not host_allowed(host, self.allowed_hosts):
            await _refuse(
                scope,
                receive,
                send,
                "host_not_allowed",
                f"the Host {host!r} is not served here (VOXGATE_ALLOWED_HOSTS)",
            )
        elif origin is not None and not origin_allowed(origin, host, self.allowed_origins):
            await _refuse(
                scope,
                receive,
                send,
                "origin_not_allowed",
                f"pages from {origin!r} may not use this server (VOXGATE_ALLOWED_ORIGINS)",
            )
        else:
            await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, code: str, message: str) -> None:
    BROWSER_REFUSALS.labels(reason=code.removesuffix("_not_allowed")).inc()
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "websocket":
        await receive()  # websocket.connect: the handshake is answered after it
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # the server answers 403
            return
        start, body_type = "websocket.http.response.start", "websocket.http.response.body"
    else:
        start, body_type = "http.response.start", "http.response.body"
    await send({"type": start, "status": 403, "headers": headers})
    await send({"type": body_type, "body": body})
