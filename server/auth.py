"""Optional API-key authentication, in the forms OpenAI clients send it.

- `Authorization: Bearer KEY` (the official SDKs, server-side apps);
- the WebSocket subprotocol `openai-insecure-api-key.KEY` (browsers cannot set headers);
- the query parameter `?api_key=KEY` (simple browser and CLI clients).
Without a configured key everything is allowed (on loopback only, unless the operator says
otherwise: `Settings.allow_remote_without_key`), and the server says so in its start-up log.
A presented key is compared in constant time; an empty one never matches.

Wherever the key is accepted, so is an unexpired client secret that this app minted
(`server/client_secrets.py`), presented in the same forms.

HTTP routes take their credentials as a dependency (`Depends(API_KEY)`, `METRICS_KEY`,
`MINTING_KEY`: 401 `invalid_api_key` otherwise); the WebSocket handshake asks
`is_authorised` itself, since it refuses with an `error` event, not an HTTP status.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from pydantic import SecretStr
from starlette.requests import HTTPConnection, Request

from voxgate.server.client_secret_store import ClientSecret, ClientSecretStore
from voxgate.server.errors import RestError

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


def offered_subprotocols(conn: HTTPConnection) -> list[str]:
    header = conn.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def presented_key(conn: HTTPConnection) -> str | None:
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for protocol in offered_subprotocols(conn):
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX) :]
    return conn.query_params.get("api_key")


def presents_api_key(conn: HTTPConnection, api_key: str) -> bool:
    presented = presented_key(conn)
    return presented is not None and hmac.compare_digest(presented.encode(), api_key.encode())


def client_secret(conn: HTTPConnection) -> ClientSecret | None:
    """The unexpired client secret `conn` presents, if this app minted it."""
    store: ClientSecretStore | None = getattr(conn.app.state, "client_secrets", None)
    presented = presented_key(conn)
    return None if store is None or presented is None else store.get(presented)


def is_authorised(
    conn: HTTPConnection,
    api_key: SecretStr | None,
    *,
    other_keys: Sequence[SecretStr] = (),
    client_secrets: bool = True,
) -> bool:
    """The key (or one of `other_keys`) or, when `client_secrets`, a client secret is presented
    (anything is, when the server has no key)."""
    if api_key is None:
        return True
    if any(presents_api_key(conn, key.get_secret_value()) for key in (api_key, *other_keys)):
        return True
    return client_secrets and client_secret(conn) is not None


def reply_subprotocol(conn: HTTPConnection) -> str | None:
    """The subprotocol to accept: browsers that offered `realtime` need it echoed back."""
    return "realtime" if "realtime" in offered_subprotocols(conn) else None


def key_required(
    *,
    client_secrets: bool = True,
    metrics_key: bool = False,
    message: str = "missing or wrong API key",
) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: 401 `invalid_api_key` (`message`) unless the request presents the
    API key, or a client secret when `client_secrets`, or `metrics_key` when `metrics_key`.
    A server without a key lets everything through."""

    async def dependency(request: Request) -> None:
        settings = request.app.state.services.settings
        others = [settings.metrics_key] if metrics_key and settings.metrics_key else []
        if not is_authorised(
            request, settings.api_key, other_keys=others, client_secrets=client_secrets
        ):
            raise RestError(401, "invalid_api_key", message)

    return dependency


API_KEY = key_required()
"""The API key or a client secret: `/v1/models`, `/openapi.json` and everything under `/v1`."""
METRICS_KEY = key_required(client_secrets=False, metrics_key=True)
"""The API key or `metrics_key` (a page's client secret does not read the server's metrics)."""
MINTING_KEY = key_required(
    client_secrets=False, message="minting a client secret needs the server's API key"
)
"""The API key alone: a client secret never mints another."""
