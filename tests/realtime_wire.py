"""The realtime wire, for tests that drive an app with Starlette's TestClient: events in and
out, each server event checked against the official SDK's types, and each of voxgate's own
(`voxgate.*`, which the SDK does not know) against the server's model of it, as strictly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pydantic
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from starlette.testclient import WebSocketTestSession

from voxgate.server import extension_events
from voxgate.server.server_events import ServerEvent

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
MAX_EVENTS = 2000
"""No exchange in these tests needs more server events than this."""


def _event_classes(base: type[ServerEvent]) -> Iterator[type[ServerEvent]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _event_classes(cls)


EXTENSION_EVENTS = {
    kind: cls
    for cls in _event_classes(ServerEvent)
    if cls.__module__ == extension_events.__name__
    and (kind := cls.model_fields["type"].default).startswith("voxgate.")
}
"""voxgate's own server events by type: every field known, none missing."""


def check_server_event(event: dict[str, Any]) -> None:
    """`event` is valid for the official SDK, or (a `voxgate.*` event) for its own model."""
    kind = event["type"]
    if kind.startswith("voxgate."):
        assert kind in EXTENSION_EVENTS, f"undocumented extension event {kind!r}"
        EXTENSION_EVENTS[kind].model_validate(event)
    else:
        SERVER_EVENT.validate_python(event)


def receive(ws: WebSocketTestSession) -> dict[str, Any]:
    """The next server event, checked (`check_server_event`)."""
    event = ws.receive_json()
    check_server_event(event)
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
