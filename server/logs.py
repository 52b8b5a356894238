"""Logging setup: plain text for people, or JSON lines for log collectors (`log_format`).

A realtime connection sets `SESSION_ID` for everything it runs (its reader, writer and the
session's tasks inherit it), and `RESPONSE_ID` around what it logs about one response, so every
JSON line about a session carries `session_id` (and `response_id`) without each call passing
them. Fields given with `extra={...}` are added to the JSON object as they are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

SESSION_ID: ContextVar[str | None] = ContextVar("voxgate_session_id", default=None)
RESPONSE_ID: ContextVar[str | None] = ContextVar("voxgate_response_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
"""Attributes every LogRecord has (and noise); anything else on a record came from `extra`."""


@contextmanager
def response_context(response_id: str) -> Iterator[None]:
    token = RESPONSE_ID.set(response_id)
    try:
        yield
    finally:
        RESPONSE_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the ids of the
    session and response it is about, `extra` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (session_id := SESSION_ID.get()) is not None:
            entry["session_id"] = session_id
        if (response_id := RESPONSE_ID.get()) is not None:
            entry["response_id"] = response_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


REDACTED = "[redacted]"
_CREDENTIALS = re.compile(
    r"(?P<keep>\b(?:api_key|key|token)=|openai-insecure-api-key\.|Bearer\s+)[^\s&\"',;]+"
    r"|\bek_[A-Za-z0-9_-]{8,}",
    re.IGNORECASE,
)
"""Credentials as they can appear in a line: a key in a query string (`?api_key=`, the page's
`?token=`), a WebSocket subprotocol or an Authorization header, and any client secret."""


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every credential in it replaced by `[redacted]`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _CREDENTIALS.sub(lambda m: (m.group("keep") or "") + REDACTED, text)


class RedactingHandler(logging.StreamHandler):
    """Writes each record with credentials taken out of the whole formatted line (message,
    exception text, `extra` fields): uvicorn's access log, for one, prints query strings."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure(level: str, log_format: Literal["text", "json"], secrets: Sequence[str] = ()) -> None:
    """Send every logger's records (uvicorn's too) to stderr in `log_format`, with `secrets`
    (the configured keys) and anything shaped like a credential redacted."""
    handler = RedactingHandler(secrets)
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
