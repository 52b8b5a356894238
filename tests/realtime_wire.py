"""The realtime wire, for tests that drive an app with Starlette's TestClient: events in and
out, each server event checked against the official SDK's types."""

from __future__ import annotations

from typing import Any

import pydantic
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from starlette.testclient import WebSocketTestSession

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
MAX_EVENTS = 2000
"""No exchange in these tests needs more server events than this."""


def receive(ws: WebSocketTestSession) -> dict[str, Any]:
    """The next server event; it must be valid for the official SDK."""
    event = ws.receive_json()
    if not event["type"].startswith("voxgate."):  # documented extension events
        SERVER_EVENT.validate_python(event)
    return event


def receive_until(ws: WebSocketTestSession, kind: str) -> list[dict[str, Any]]:
    """Events up to and including the first of type `kind`."""
    got: list[dict[str, Any]] = []
    for _ in range(MAX_EVENTS):
        got.append(event := receive(ws))
        if event["type"] == kind:
            return got
    raise AssertionError(f"no {kind} in {MAX_EVENTS} events")


def next_error(ws: WebSocketTestSession) -> dict[str, Any]:
    """The `error` of the next error event (other events before it are skipped)."""
    return receive_until(ws, "error")[-1]["error"]


def text_item(text: str, role: str = "user") -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]},
    }


def session_update(**session: Any) -> dict[str, Any]:
    return {"type": "session.update", "session": {"type": "realtime", **session}}


def answers(ws: WebSocketTestSession) -> None:
    """The session is usable: a text turn gets a whole (completed) response."""
    ws.send_json(text_item("are you there?"))
    ws.send_json({"type": "response.create"})
    done = receive_until(ws, "response.done")[-1]
    assert done["response"]["status"] == "completed", done
