"""Short-lived client secrets: `POST /v1/realtime/client_secrets`, as OpenAI's API has it.

A browser must not hold the server's API key. The app's own backend, which does, mints a client
secret for each page (`{"expires_after": {"anchor": "created_at", "seconds": N}, "session":
{...}}` -> `{"value": "ek_...", "expires_at": ..., "session": {...}}`) and hands the value to
the page, which presents it where it would present the key (in a browser: the WebSocket
subprotocol `openai-insecure-api-key.<value>`). As at OpenAI, a secret opens sessions until it
expires, any number of them, and a session outlives its secret; the `session` given at minting is
the initial configuration of every session the secret opens. Minting itself needs the API key:
a client secret never mints another.

The secrets themselves, and why they live in this process only, are
`server/client_secret_store.py`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import ConfigDict, Field, ValidationError

from voxgate.model.types import BackboneError
from voxgate.server import outgoing, translate
from voxgate.server.admission import read_small_body
from voxgate.server.auth import MINTING_KEY
from voxgate.server.client_secret_store import ClientSecretsFull, ClientSecretStore
from voxgate.server.errors import RestError, parse_json_body
from voxgate.server.openapi_schemas import json_request_body
from voxgate.server.protocol import SessionParams, Strict, Unsupported
from voxgate.server.services import Services
from voxgate.server.settings import ClientSecretSettings
from voxgate.streaming.config import SessionConfig
from voxgate.streaming.session import SessionRejected, new_id

MIN_TTL_S = 10
"""OpenAI's shortest lifetime of a client secret."""

router = APIRouter()


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
    dependencies=[Depends(MINTING_KEY)],
    openapi_extra=json_request_body(ClientSecretRequest, required=False),
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
    limits = settings.client_secrets
    try:
        async with asyncio.timeout(settings.rest.body_timeout_s):
            body = await read_small_body(request, limits.max_body_bytes)
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
        "session": outgoing.wire_session(config, new_id("sess"), services.model_name),
    }


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
        config = await asyncio.to_thread(translate.session_config, default, params, limits)
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
