"""Short-lived client secrets: `POST /v1/realtime/client_secrets`, as OpenAI's API has it.

A browser must not hold the server's API key. The app's own backend, which does, mints a client
secret for each page (`{"expires_after": {"anchor": "created_at", "seconds": N}, "session":
{...}}` -> `{"value": "ek_...", "expires_at": ..., "session": {...}}`) and hands the value to
the page, which presents it where it would present the key (in a browser: the WebSocket
subprotocol `openai-insecure-api-key.<value>`). As at OpenAI, a secret opens sessions until it
expires, any number of them, and a session outlives its secret; the `session` given at minting is
the initial configuration of every session the secret opens. Minting itself needs the API key:
a client secret never mints another.

The secrets are random (`secrets.token_urlsafe`, 256 bits) and live in a bounded store in this
process, not signed self-contained tokens: the session configuration a secret carries (long
instructions among it) stays on the server instead of travelling in a WebSocket header, and
nothing but the store is trusted. The price is that a secret is valid only on the server process
that minted it: behind a load balancer with several replicas, mint and connect on the same one
(sticky routing). The store keys secrets by their SHA-256, so neither a lookup's timing nor
the store's memory gives a secret away. It holds at most `max_active` unexpired secrets; one
more is refused with 429 until the soonest expires (dropping a live secret instead would break
a page that holds it).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import ConfigDict, Field, ValidationError

from voxgate.model.types import BackboneError
from voxgate.server import auth, protocol
from voxgate.server.errors import RestError, parse_json_body
from voxgate.server.protocol import SessionParams, Strict, Unsupported
from voxgate.server.rest import _inline_refs as inline_refs
from voxgate.streaming.config import SessionConfig
from voxgate.streaming.session import SessionRejected, new_id

if TYPE_CHECKING:
    from voxgate.server.app import Services
    from voxgate.server.settings import ClientSecretSettings

PREFIX = "ek_"
"""OpenAI's prefix of ephemeral keys; clients that check the shape of a key expect it."""
MIN_TTL_S = 10
"""OpenAI's shortest lifetime of a client secret."""

router = APIRouter()


@dataclass(frozen=True, slots=True)
class ClientSecret:
    value: str
    expires_at: int
    """Unix time (seconds) after which it opens no more sessions."""
    deadline: float
    """The same moment on the store's monotonic clock (what validity is checked against)."""
    config: SessionConfig
    """The initial configuration of each session it opens."""


class ClientSecretsFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many unexpired client secrets; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ClientSecretStore:
    """The client secrets this process issued, until they expire; at most `max_active`."""

    def __init__(
        self,
        max_active: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_sessions: int = 2,
    ) -> None:
        self.max_active = max_active
        self.max_sessions = max_sessions
        """Sessions one secret may hold open at once."""
        self.clock = clock
        self.wall_clock = wall_clock
        self._by_digest: dict[bytes, ClientSecret] = {}
        self._open: dict[bytes, int] = {}
        """Sessions open per secret (also after it expired: a session outlives its secret)."""

    def open_session(self, secret: ClientSecret) -> bool:
        """Count a session opened with `secret`; False (and nothing counted) at its cap."""
        digest = _digest(secret.value)
        if self._open.get(digest, 0) >= self.max_sessions:
            return False
        self._open[digest] = self._open.get(digest, 0) + 1
        return True

    def close_session(self, secret: ClientSecret) -> None:
        digest = _digest(secret.value)
        if (left := self._open.get(digest, 0) - 1) > 0:
            self._open[digest] = left
        else:
            self._open.pop(digest, None)

    def __len__(self) -> int:
        return len(self._by_digest)

    def issue(self, ttl_s: int, config: SessionConfig) -> ClientSecret:
        if len(self._by_digest) >= self.max_active:
            self._forget_expired()
        if len(self._by_digest) >= self.max_active:
            soonest = min(s.deadline for s in self._by_digest.values())
            raise ClientSecretsFull(max(1, math.ceil(soonest - self.clock())))
        value = PREFIX + secrets.token_urlsafe(32)
        secret = ClientSecret(
            value,
            expires_at=int(self.wall_clock()) + ttl_s,
            deadline=self.clock() + ttl_s,
            config=config,
        )
        self._by_digest[_digest(value)] = secret
        return secret

    def get(self, value: str) -> ClientSecret | None:
        """The secret if it was issued here and has not expired."""
        digest = _digest(value)
        secret = self._by_digest.get(digest)
        if secret is not None and secret.deadline <= self.clock():
            del self._by_digest[digest]
            return None
        return secret

    def _forget_expired(self) -> None:
        now = self.clock()
        for digest in [d for d, s in self._by_digest.items() if s.deadline <= now]:
            del self._by_digest[digest]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def install(app: FastAPI, settings: ClientSecretSettings) -> None:
    """Give `app` a store of client secrets (`app.state.client_secrets`) and the route."""
    app.state.client_secrets = ClientSecretStore(
        settings.max_active, max_sessions=settings.max_sessions_per_secret
    )
    app.include_router(router)


# --- the route ----------------------------------------------------------------------------------


class ExpiresAfter(Strict):
    anchor: Literal["created_at"] = "created_at"
    seconds: int | None = Field(None, ge=MIN_TTL_S)
    """Lifetime in seconds (the server's default when left out; at most the server's maximum,
    `VOXGATE_CLIENT_SECRETS__MAX_TTL_S`, 7200 by default)."""


class ClientSecretRequest(Strict):
    """The body of `POST /v1/realtime/client_secrets` (OpenAI's `ClientSecretCreateParams`)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    expires_after: ExpiresAfter | None = None
    session: SessionParams | None = None
    """The initial configuration of the sessions the secret opens, as in `session.update`
    (only `type: "realtime"` sessions)."""


@router.post(
    "/v1/realtime/client_secrets",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": inline_refs(ClientSecretRequest.model_json_schema())}
            },
        }
    },
    responses={
        400: {"description": "Bad input (`{error: {message, type, param, code}}`)"},
        401: {"description": "Missing or wrong API key (a client secret does not mint)"},
        413: {"description": "Request body too large"},
        429: {"description": "Too many unexpired client secrets (see Retry-After)"},
    },
)
async def create_client_secret(request: Request) -> dict[str, Any]:
    """Mint a short-lived client secret for a browser (OpenAI's `realtime.client_secrets`)."""
    services: Services = request.app.state.services
    settings = services.settings
    key = settings.api_key
    if key is not None and not auth.presents_api_key(request, key.get_secret_value()):
        raise RestError(
            401, "invalid_api_key", "minting a client secret needs the server's API key"
        )
    limits = settings.client_secrets
    try:
        async with asyncio.timeout(settings.rest.body_timeout_s):
            body = await _read_body(request, limits.max_body_bytes)
    except TimeoutError as e:
        raise RestError(408, "request_timeout", "the request body did not arrive in time") from e
    params = await asyncio.to_thread(_parse, body)
    ttl_s = limits.default_ttl_s
    if params.expires_after is not None and params.expires_after.seconds is not None:
        ttl_s = params.expires_after.seconds
    if ttl_s > limits.max_ttl_s:
        raise RestError(
            400,
            "invalid_value",
            f"expires_after.seconds must be at most {limits.max_ttl_s}",
            "expires_after.seconds",
        )
    config = await _session_config(services, params.session)
    store: ClientSecretStore = request.app.state.client_secrets
    try:
        secret = store.issue(ttl_s, config)
    except ClientSecretsFull as e:
        raise RestError(
            429,
            "rate_limited",
            str(e),
            type="rate_limit_error",
            headers={"Retry-After": str(e.retry_after_s)},
        ) from e
    return {
        "value": secret.value,
        "expires_at": secret.expires_at,
        "session": protocol.wire_session(config, new_id("sess"), services.model_name),
    }


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RestError(
                413, "request_too_large", f"the request body is larger than {limit} bytes"
            )
    return bytes(body)


def _parse(body: bytes) -> ClientSecretRequest:
    if not body.strip():
        return ClientSecretRequest()  # OpenAI's parameters are all optional
    return parse_json_body(body, ClientSecretRequest)


async def _session_config(services: Services, params: SessionParams | None) -> SessionConfig:
    """The session configuration a secret carries, checked now rather than at connect time."""
    default = services.default_session_config()
    if params is None:
        return default
    limits = services.settings.realtime.session
    try:
        config = await asyncio.to_thread(protocol.session_config, default, params, limits)
        # `session_config` copies without validating (a session re-checks on applying it); a
        # secret's configuration is checked whole, here, so a bad one is refused at minting.
        config = SessionConfig.model_validate(config.model_dump())
    except Unsupported as e:
        raise RestError(400, "unsupported_feature", str(e), e.param) from e
    except SessionRejected as e:
        raise RestError(400, e.code, e.message, e.param) from e
    except ValidationError as e:
        raise RestError(400, "invalid_value", str(e.errors()[0]["msg"]), "session") from e
    try:
        services.voices.resolve(config.voice)
    except BackboneError as e:
        raise RestError(400, "invalid_value", str(e), "session.audio.output.voice") from e
    hint = config.transcription.prompt if config.transcription is not None else None
    if hint and not services.backbone.takes_transcription_prompt:
        raise RestError(
            400,
            "unsupported_parameter",
            f"the {services.backbone.name} backbone takes no transcription prompt: its "
            "published ASR instruction is fixed, and a hint would change what it does",
            "session.audio.input.transcription.prompt",
        )
    if len(config.instructions) > limits.max_instructions_chars:
        raise RestError(
            400,
            "string_above_max_length",
            f"session.instructions has {len(config.instructions)} characters; this server "
            f"takes at most {limits.max_instructions_chars}",
            "session.instructions",
        )
    cap = limits.answer_cap(services.backbone.answer_budget)
    wanted = config.max_output_tokens or cap
    try:
        await services.backbone.check_instructions(config.instructions, min(wanted, cap))
    except BackboneError as e:
        raise RestError(e.status, e.code, str(e), "session.instructions") from e
    return config
