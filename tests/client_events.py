"""Hypothesis strategies for realtime client events, built from the server's own pydantic models
(`voxgate.server.protocol`), plus mutations a hostile or broken client sends.

- `valid_event()`: an event of one of the client event types, every field drawn from its
  annotation (literals, unions, nested models, lists, dicts), optional fields left out or set;
  audio appends and items carry real base64 PCM part of the time.
- `hostile_event()`: a valid event mutated: a field of the wrong type, a huge string, deep
  nesting, unknown fields and event types, non-objects, broken JSON text.
- `session_script()`: an interleaving of both, as one client would send them on one socket.
Events come out as the text of the WebSocket message (most are JSON, some are not).
"""

from __future__ import annotations

import base64
import enum
import json
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue

from voxgate.server import protocol

Json = Any
EVENT_MODELS: list[type[BaseModel]] = [
    get_args(member)[0] if get_origin(member) is Annotated else member
    for member in get_args(get_args(protocol.AnyClientEvent)[0])
]
ITEM_IDS = st.sampled_from(["item_1", "item_2", "root", "", "x" * 70, "item_\u00e9"])

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _pcm_base64(draw: st.DrawFn) -> str:
    samples = draw(st.integers(0, 4800))
    level = draw(st.sampled_from([0, 300, 8000]))
    data = (bytes([level & 0xFF, level >> 8]) * samples) if level else bytes(2 * samples)
    return base64.b64encode(data).decode()


@st.composite
def audio_field(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.text(max_size=40))  # not base64 at all
    if choice == 1:
        return base64.b64encode(draw(st.binary(max_size=301))).decode()  # odd lengths too
    return _pcm_base64(draw)


def for_annotation(annotation: Any, name: str = "") -> st.SearchStrategy[Json]:
    """Values of a field annotation, as JSON (what a client would write)."""
    if name == "audio":
        return audio_field()
    if name in ("item_id", "previous_item_id", "response_id", "chosen_response_id", "pair_id"):
        return ITEM_IDS | st.text(max_size=30)
    origin = get_origin(annotation)
    if origin is Annotated:
        return for_annotation(get_args(annotation)[0], name)
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin in (Union, types.UnionType):
        return st.one_of([for_annotation(a, name) for a in get_args(annotation)])
    if origin is list:
        (inner,) = get_args(annotation)
        return st.lists(for_annotation(inner, name), max_size=3)
    if origin is dict:
        _, value = get_args(annotation)
        return st.dictionaries(st.text(max_size=10), for_annotation(value), max_size=4)
    if annotation is Any or annotation is typing.Any or annotation is JsonValue:
        return json_values
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-10, 10_000) | st.integers()
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False) | st.floats(0, 2)
    if annotation is str:
        return st.text(max_size=60)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from([member.value for member in annotation]) | st.text(max_size=10)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model(annotation)
    raise TypeError(f"no strategy for {annotation!r}")


def model(cls: type[BaseModel]) -> st.SearchStrategy[dict[str, Json]]:
    required, optional = {}, {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for name, field in cls.model_fields.items():
        strategy = for_annotation(hints[name], name)
        (required if field.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def valid_event() -> st.SearchStrategy[dict[str, Json]]:
    return st.one_of([model(cls) for cls in EVENT_MODELS])


@st.composite
def hostile_event(draw: st.DrawFn) -> str:
    """The text of one message a broken or hostile client might send."""
    event = draw(valid_event())
    kind = draw(st.integers(0, 9))
    if kind == 0 and len(event) > 1:  # a field of the wrong type
        field = draw(st.sampled_from(sorted(k for k in event if k != "type")))
        event[field] = draw(json_values)
    elif kind == 1:  # a huge string somewhere
        field = draw(st.sampled_from(sorted(event)))
        event[field] = "A" * draw(st.sampled_from([70_000, 300_000, 1_000_000]))
    elif kind == 2:  # deep nesting, written as text (too deep for Python's own json)
        depth = draw(st.sampled_from([40, 65, 200, 3000, 100_000]))
        event[draw(st.sampled_from(sorted(event)))] = "__deep__"
        return json.dumps(event).replace('"__deep__"', "[" * depth + "]" * depth, 1)
    elif kind == 3:
        event[draw(st.text(min_size=1, max_size=12))] = draw(json_values)  # unknown field
    elif kind == 4:
        event["type"] = draw(st.text(max_size=30) | st.sampled_from(["", "session.created"]))
    elif kind == 5:
        event.pop("type", None)
    elif kind == 6:
        return draw(st.sampled_from(['"just a string"', "[]", "null", "3", "{", "{}}", ""]))
    elif kind == 7:
        return draw(st.text(max_size=80))  # not JSON
    return json.dumps(event)


def session_script(length: int = 40) -> st.SearchStrategy[list[str]]:
    """One client's messages on one socket: valid and hostile events interleaved."""
    one = st.one_of(valid_event().map(json.dumps), hostile_event())
    return st.lists(one, min_size=max(1, length // 2), max_size=length)
