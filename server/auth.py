"""Optional API-key authentication, in the forms OpenAI clients send it.

- `Authorization: Bearer KEY` (the official SDKs, server-side apps);
- the WebSocket subprotocol `openai-insecure-api-key.KEY` (browsers cannot set headers);
- the query parameter `?api_key=KEY` (simple browser and CLI clients).
Without a configured key everything is allowed, and the server says so in its start-up log.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

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


def is_authorised(conn: HTTPConnection, api_key: str | None) -> bool:
    if api_key is None:
        return True
    presented = presented_key(conn)
    return presented is not None and hmac.compare_digest(presented.encode(), api_key.encode())


def reply_subprotocol(conn: HTTPConnection) -> str | None:
    """The subprotocol to accept: browsers that offered `realtime` need it echoed back."""
    return "realtime" if "realtime" in offered_subprotocols(conn) else None
