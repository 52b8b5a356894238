"""Long conversations: function calls, compacted memory with the persona kept, think mode.

The session is driven directly with the fake backbone (tests/fakes.py); every event a client
would see is also checked against the official SDK's types.
"""

from __future__ import annotations

import json

import pytest
from direct_session import Events, only
from fakes import FakeBackbone
from realtime_wire import SERVER_EVENT

from voxgate.model.memory import SUMMARY_PRIORITY
from voxgate.model.types import Role, ToolSpec, Turn
from voxgate.server.outgoing import Outgoing
from voxgate.streaming.config import SessionLimits
from voxgate.streaming.events import (
    FunctionCallArgumentsDelta,
    Item,
    ItemDeleted,
    OutputItemFinished,
    OutputItemStarted,
    OutputTextDelta,
    ReasoningDeltaEvent,
    ReasoningDone,
    ResponseFinished,
    ResponseStatus,
    SessionEvent,
    SummaryUpdated,
)
from voxgate.streaming.session import ResponseRequest, SessionRejected, new_id

WEATHER = ToolSpec(
    "get_weather",
    "The weather now in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def on_the_wire(events: list[SessionEvent]) -> list[dict]:
    """The events as the client gets them, each checked against the SDK's own types."""
    outgoing = Outgoing("sess_test", "voxgate-fake")
    wire = [json.loads(w.to_json()) for event in events for w in outgoing.wire_events(event)]
    for event in wire:
        if not event["type"].startswith("voxgate."):
            SERVER_EVENT.validate_python(event)
    return wire


def user(text: str) -> Item:
    return Item(new_id("item"), Role.USER, text=text)


async def ask(session, events: Events, text: str, **request) -> list[SessionEvent]:
    await session.add_item(user(text))
    await session.create_response(ResponseRequest(**request))
    return await events.until(ResponseFinished)


async def test_a_function_call_round_trip(make) -> None:
    fake = FakeBackbone(reply=["It is sunny and 22 degrees in Paris."])
    fake.tool_arguments = '{"city": "Paris"}'
    session, events = await make(fake, turn_detection=None, tools=(WEATHER,))
    got = await ask(session, events, "What is the weather in Paris?")
    wire = on_the_wire(got)
    kinds = [w["type"] for w in wire]
    assert kinds[-7:] == [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = next(w for w in wire if w["type"] == "response.function_call_arguments.done")
    assert (done["name"], json.loads(done["arguments"])) == ("get_weather", {"city": "Paris"})
    call_id = done["call_id"]
    response = only(got, ResponseFinished).response
    assert response.status is ResponseStatus.COMPLETED
    assert [i.kind for i in response.items] == ["function_call"]
    assert fake.respond_calls[0].options.tools == (WEATHER,)

    # The client runs the function and hands the result back; the next answer uses it.
    fake.tool_arguments = None
    await session.add_item(
        Item(
            new_id("item"),
            Role.TOOL,
            kind="function_call_output",
            call_id=call_id,
            output='{"sky": "sunny", "celsius": 22}',
        )
    )
    await session.create_response(ResponseRequest())
    answer = only(await events.until(ResponseFinished), ResponseFinished).response
    assert answer.items[0].kind == "message"
    conversation = fake.respond_calls[-1].conversation
    assert conversation[1] == Turn(Role.ASSISTANT, '(called get_weather with {"city": "Paris"})')
    assert conversation[2] == Turn(
        Role.TOOL, 'get_weather returned: {"sky": "sunny", "celsius": 22}'
    )


async def test_a_result_for_an_unknown_call_is_refused(make) -> None:
    session, _ = await make(FakeBackbone(), turn_detection=None)
    with pytest.raises(SessionRejected) as refused:
        await session.add_item(
            Item(new_id("item"), Role.TOOL, kind="function_call_output", call_id="nope", output="1")
        )
    assert (refused.value.code, refused.value.param) == ("invalid_value", "item.call_id")


async def test_two_hundred_turns_keep_the_persona_and_the_first_fact(make) -> None:
    fake = FakeBackbone(reply=["Sure."])
    fake.context_window = 8  # the newest 8 turns fit; older ones are folded into the summary
    persona = "You are Ada, a cheerful assistant from Lisbon."
    session, events = await make(
        fake,
        SessionLimits(event_queue_size=4096, max_items=60),
        instructions=persona,
        turn_detection=None,
    )
    sizes: dict[int, int] = {}
    for turn in range(1, 201):
        text = "My favourite colour is green." if turn == 1 else f"Tell me about topic {turn}."
        await ask(session, events, text)
        if turn in (50, 200):
            sizes[turn] = sum(len(i.content_text) for i in session.items) + len(session.summary)
    final = fake.respond_calls[-1].options
    assert "Ada" in final.instructions  # the persona is never summarised away
    assert "My favourite colour is green." in final.summary  # turn 1, folded, still there
    assert len(fake.respond_calls[-1].conversation) <= 24  # only recent turns in full
    assert sizes[200] <= sizes[50] * 1.2  # per-session memory stays flat
    assert {priority for _, _, priority in fake.summarize_calls} == {SUMMARY_PRIORITY}
    folded = [e for e in events.seen if isinstance(e, SummaryUpdated)]
    assert folded and sum(e.items_folded for e in folded) == len(
        [e for e in events.seen if isinstance(e, ItemDeleted)]
    )
    on_the_wire([e for e in events.seen if isinstance(e, ItemDeleted | SummaryUpdated)][:4])


async def test_think_mode_streams_reasoning_that_is_never_spoken(make) -> None:
    fake = FakeBackbone(reply=["Hello!"])
    fake.can_reason = True
    session, events = await make(
        fake,
        SessionLimits(event_queue_size=4096, max_reasoning_tokens=400),
        turn_detection=None,
        reasoning_effort="low",
    )
    got = await ask(session, events, "Hi")
    kinds = [type(e).__name__ for e in got]
    first_text = kinds.index("OutputTextDelta")
    assert kinds.index("ReasoningDeltaEvent") < first_text  # thinking first, then the answer
    assert "".join(e.delta for e in got if isinstance(e, ReasoningDeltaEvent)) == "".join(
        fake.reasoning
    )
    response = only(got, ResponseFinished).response
    assert response.reasoning == "".join(fake.reasoning)
    assert response.items[0].transcript == "Hello!"  # what is spoken has no reasoning in it
    assert fake.respond_calls[0].options.reasoning_tokens == 100  # "low": a quarter of the cap
    wire = on_the_wire(got)
    assert "voxgate.response.reasoning.delta" in [w["type"] for w in wire]
    done = only(got, ReasoningDone).response
    assert (done.id, done.reasoning) == (response.id, response.reasoning)
    assert isinstance(got[kinds.index("OutputItemStarted")], OutputItemStarted)
    assert any(isinstance(e, OutputTextDelta | OutputItemFinished) for e in got)
    assert not any(isinstance(e, FunctionCallArgumentsDelta) for e in got)


async def test_think_mode_on_a_backbone_that_cannot_reason_is_an_error(make) -> None:
    session, _ = await make(FakeBackbone(), turn_detection=None)
    with pytest.raises(SessionRejected) as refused:
        await session.configure(session.config.model_copy(update={"reasoning_effort": "low"}))
    assert (refused.value.code, refused.value.param) == ("unsupported_feature", "session.reasoning")
    with pytest.raises(SessionRejected):
        await session.create_response(ResponseRequest(reasoning_effort="high"))
