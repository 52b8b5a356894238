"""REST admission: whether a request is let in now, with every bound refused up front.

In order (`server/rest.py` runs them): the server is not draining and its engine is alive
(else 503 with `Retry-After`); the body is received holding one of `rest.max_pending_bodies`
and one of its client's `rest.max_pending_bodies_per_client`, never a worker's slot, and within
`rest.body_timeout_s` (408 past it); then the request is served holding one of
`rest.max_concurrent_requests` (429 with `Retry-After` when none is free; a streamed answer
holds its slot to its last byte). So a client that uploads slowly holds only a body slot, and
a few slow uploaders cannot lock the endpoints for the others.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request

from voxgate.server.engine_watch import MESSAGE as ENGINE_DEAD
from voxgate.server.errors import RestError
from voxgate.server.settings import RestSettings
from voxgate.streaming.slots import Slots


class RestAdmission:
    """The REST requests let in: bodies being received (overall and per client) and requests
    being served."""

    def __init__(self, settings: RestSettings) -> None:
        self._settings = settings
        self.requests = Slots(settings.max_concurrent_requests)
        """REST requests being served (a streamed answer counts until its last byte)."""
        self.bodies = Slots(settings.max_pending_bodies)
        """REST request bodies being received (before a `requests` slot is taken)."""
        self._bodies_by_client = BodiesByClient()

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self._settings.retry_after_s)}

    def check_open(self, *, draining: bool, engine_alive: bool) -> None:
        """503 while the server drains, or once its engine cannot serve."""
        if draining:
            raise RestError(
                503,
                "server_shutting_down",
                "this server is shutting down; retry to reach another one",
                type="server_error",
                headers=self._retry(),
            )
        if not engine_alive:
            raise RestError(
                503, "engine_unavailable", ENGINE_DEAD, type="server_error", headers=self._retry()
            )

    def _busy(self) -> RestError:
        return RestError(
            429,
            "rate_limited",
            f"this server is serving its limit of {self._settings.max_concurrent_requests} REST "
            "requests; try again later",
            type="rate_limit_error",
            headers=self._retry(),
        )

    @asynccontextmanager
    async def receiving(self, host: str) -> AsyncIterator[None]:
        """Hold a body slot, and one of the client at `host`, while its body arrives: 429 when
        none is free, 408 when the body takes longer than `body_timeout_s`."""
        client = client_address(host)
        per_client = self._settings.max_pending_bodies_per_client
        if not self._bodies_by_client.try_acquire(client, per_client):
            raise RestError(
                429,
                "rate_limited",
                f"this client is already sending {per_client} request bodies to this server; "
                "try again when one has arrived",
                type="rate_limit_error",
                headers=self._retry(),
            )
        try:
            if not self.bodies.try_acquire():
                raise self._busy()
            try:
                async with asyncio.timeout(self._settings.body_timeout_s):
                    yield
            except TimeoutError as e:
                raise RestError(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self._settings.body_timeout_s:g} s",
                ) from e
            finally:
                self.bodies.release()
        finally:
            self._bodies_by_client.release(client)

    def take_request_slot(self) -> None:
        """Hold a slot of `max_concurrent_requests` (give it back with `requests.release()`);
        429 when none is free."""
        if not self.requests.try_acquire():
            raise self._busy()


class BodiesByClient:
    """How many request bodies each client is sending now (used on the event loop only). A
    client with none is forgotten, so this holds at most as many clients as there are bodies
    being received."""

    def __init__(self) -> None:
        self._sending: dict[str, int] = {}

    def try_acquire(self, client: str, limit: int | None) -> bool:
        """Count one more body of `client`, unless it already sends `limit` (None: no limit)."""
        held = self._sending.get(client, 0)
        if limit is not None and held >= limit:
            return False
        self._sending[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self._sending.pop(client) - 1
        if held:
            self._sending[client] = held


def client_address(host: str) -> str:
    """Who sends a request, for per-client bounds: its address (what uvicorn says, after a
    trusted proxy's `X-Forwarded-For`); an IPv6 client's /64, which one host usually holds
    whole and could spread over."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


async def read_small_body(request: Request, limit: int) -> bytes:
    """A small body (JSON) whole; 413 `request_too_large` as soon as it passes `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RestError(
                413, "request_too_large", f"the request body is larger than {limit} bytes"
            )
    return bytes(body)
