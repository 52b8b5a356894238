"""How a REST request's failure is told: OpenAI's error body (`RestError`), and inside a stream
of Server-Sent Events, once the status line has left, a last `error` event.

A backbone's `BackboneError` keeps its own code and status (`engine_unavailable` 503,
`context_length_exceeded` 400, ...); anything else is a 500 `server_error`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from voxgate.model.types import BackboneError, UnknownVoiceError
from voxgate.server import metrics
from voxgate.server.errors import RestError

log = logging.getLogger(__name__)

SERVER_ERROR = RestError(
    500, "server_error", "the server failed to handle this request", type="server_error"
)


def backbone_rest_error(e: BackboneError, retry_after_s: int) -> RestError:
    """A backbone's failure as a REST error: its own code and status (`model.types`)."""
    headers = {}
    if e.status == 503:
        headers["Retry-After"] = str(retry_after_s)
    return RestError(
        e.status,
        e.code,
        str(e),
        "voice" if isinstance(e, UnknownVoiceError) else None,
        type="server_error" if e.status >= 500 else "invalid_request_error",
        headers=headers,
    )


def sse_event(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event holding `event` as JSON."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def sse_error_event(e: Exception, endpoint: str, retry_after_s: int) -> bytes:
    """A failure after the stream began, as its last event (the status line has left)."""
    if isinstance(e, BackboneError):
        log.warning("backbone failed a streamed REST request: %s", e)
        error = backbone_rest_error(e, retry_after_s)
    else:
        log.error("a streamed REST request failed", exc_info=e)
        error = SERVER_ERROR
    metrics.REST_ERRORS.labels(endpoint=endpoint, code=error.code).inc()
    return sse_event({"type": "error", **error.body()})
