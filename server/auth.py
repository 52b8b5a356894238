"""Optional API-key authentication, in the forms OpenAI clients send it.

- `Authorization: Bearer KEY` (the official SDKs, server-side apps);
- the WebSocket subprotocol `openai-insecure-api-key.KEY` (browsers cannot set headers);
- the query parameter `?api_key=KEY` (simple browser and CLI clients).
Without a configured key everything is allowed (on loopback only, unless the operator says
otherwise: `Settings.allow_remote_without_key`), and the server says so in its start-up log.
A presented key is compared in constant time; an empty one never matches.

Wherever the key is accepted, so is an unexpired client secret that this app minted
(`server/client_secrets.py`), presented in the same forms.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from pydantic import SecretStr
from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from voxgate.server.client_secrets import ClientSecret, ClientSecretStore

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


def is_authorised(conn: HTTPConnection, api_key: SecretStr | None) -> bool:
    """The key or a client secret is presented (anything is, when the server has no key)."""
    if api_key is None:
        return True
    return presents_api_key(conn, api_key.get_secret_value()) or client_secret(conn) is not None


def reply_subprotocol(conn: HTTPConnection) -> str | None:
    """The subprotocol to accept: browsers that offered `realtime` need it echoed back."""
    return "realtime" if "realtime" in offered_subprotocols(conn) else None
