"""Agent features through the real engines: function calls, compacted memory, think mode.

With the embedded CPU default (SmolLM2-135M) the call is written under a JSON-schema grammar
by vLLM, so its arguments are valid for the tool's schema even from so small a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from audio_checks import words
from engine_server import RunningServer, launch, unified_env
from realtime_helpers import collect, sdk_client

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
LONG = (
    "Let me tell you about my week in detail, because I want you to remember it. "
    "On Monday I walked along the river, met an old friend from school and we talked for "
    "hours about books, music, travel, cooking, gardens, trains, mountains and the sea. "
)


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def forced_weather_call(conn: Any) -> tuple[Any, dict[str, Any]]:
    """Offer WEATHER with tool_choice naming it, ask about Paris: the turn and its call's
    `function_call_arguments.done`, whose arguments are checked against the tool's schema."""
    await conn.session.update(
        session={
            "type": "realtime",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
        }
    )
    await conn.conversation.item.create(item=user_text("What is the weather in Paris?"))
    await conn.response.create()
    turn = await collect(conn)
    done = turn.first("response.function_call_arguments.done")
    arguments = json.loads(done["arguments"])  # valid JSON for the tool's schema
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert len(arguments["city"]) <= 40  # the schema's maxLength
    return turn, done


async def test_a_weather_tool_round_trip_through_the_sdk(server) -> None:
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        turn, done = await forced_weather_call(conn)
        assert turn.first("response.done")["response"]["output"][0]["type"] == "function_call"
        assert "response.output_audio.delta" not in turn.types  # a call, not speech

        # The app runs the function and gives the result back; the agent speaks it.
        await conn.session.update(session={"type": "realtime", "tool_choice": "none"})
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": done["call_id"],
                "output": json.dumps({"city": "Paris", "sky": "sunny", "celsius": 22}),
            }
        )
        await conn.response.create()
        answer = await collect(conn)
    response = answer.first("response.done")["response"]
    # The answer is sampled: it may run to the session's length limit ("incomplete").
    assert response["status"] in ("completed", "incomplete")
    spoken = response["output"][0]["content"][0]["transcript"]
    assert words(spoken) and "response.output_audio.delta" in answer.types


async def test_long_conversations_fold_into_a_summary(server) -> None:
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are Ada. Answer in one short sentence.",
                "output_modalities": ["text"],
                "max_output_tokens": "inf",
            }
        )
        summary = None
        for turn in range(6):
            await conn.conversation.item.create(item=user_text(f"Day {turn}. {LONG * 7}"))
            await conn.response.create(response={"max_output_tokens": 40})
            got = await collect(conn)
            assert got.first("response.done")["response"]["status"] in ("completed", "incomplete")
            updates = [e for e in got.events if e["type"] == "voxgate.conversation.summary.updated"]
            if updates:
                summary = updates[-1]
                break
        if summary is None:  # the fold runs after the answer, at low priority: wait for it
            summary = (await collect(conn, until="voxgate.conversation.summary.updated")).first(
                "voxgate.conversation.summary.updated"
            )
        assert summary["items_folded"] > 0 and summary["summary"].strip()
        # The conversation goes on, with the summary standing in for the folded turns.
        await conn.conversation.item.create(item=user_text("What did I tell you about Monday?"))
        await conn.response.create(response={"max_output_tokens": 40})
        last = await collect(conn)
    assert last.first("response.done")["response"]["status"] in ("completed", "incomplete")


async def test_think_mode_needs_a_backbone_that_reasons(server) -> None:
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(session={"type": "realtime", "reasoning": {"effort": "low"}})
        turn = await collect(conn, until="error")
    error = turn.first("error")["error"]
    assert (error["code"], error["param"]) == ("unsupported_feature", "session.reasoning")


@pytest.fixture(scope="module")
def think_tokens_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The tiny model with R1.1's vocabulary (<|THINK_START|>/<|THINK_END|> tokens): think mode
    is found from the vocabulary, with no setting."""
    from voxgate.model.stepaudio2.tiny import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("r1") / "tiny", think="tokens")
    env = unified_env(model)
    del env["VOXGATE_STEPAUDIO2__THINK"]
    with launch(tmp_path_factory, "stepaudio2-think-tokens", env) as running:
        yield running


@pytest.mark.parametrize("markers", ["text", "tokens"])
async def test_think_mode_on_the_unified_backbone(
    request: pytest.FixtureRequest, markers: str
) -> None:
    """Both vocabularies: mini-Think's markers written as text (found in the decoded text, the
    request aborted there) and R1.1's tokens (a stop token)."""
    name = "unified_server" if markers == "text" else "think_tokens_server"
    server: RunningServer = request.getfixturevalue(name)
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "reasoning": {"effort": "minimal"},
                "max_output_tokens": 60,
            }
        )
        await conn.conversation.item.create(item=user_text("Why is the sky blue?"))
        await conn.response.create()
        turn = await collect(conn)
    types = turn.types
    assert "voxgate.response.reasoning.delta" in types
    assert types.index("voxgate.response.reasoning.done") < types.index(
        "response.output_audio.delta"
    )
    reasoning = turn.first("voxgate.response.reasoning.done")["text"]
    spoken = turn.first("response.done")["response"]["output"][0]["content"][0]["transcript"]
    assert reasoning and reasoning not in spoken  # thought, not said


async def test_a_forced_call_from_the_unified_backbone_is_valid(unified_server) -> None:
    async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(
            session={"type": "realtime", "tools": [WEATHER], "tool_choice": "required"}
        )
        await conn.conversation.item.create(item=user_text("Weather in Oslo?"))
        await conn.response.create()
        turn = await collect(conn)
    done = turn.first("response.function_call_arguments.done")
    assert done["name"] == "get_weather"
    assert isinstance(json.loads(done["arguments"])["city"], str)  # even from random weights


async def test_native_tool_calls_on_the_unified_backbone(unified_server) -> None:
    """Step-Audio-2 calls tools in its trained format (`<tool_call>` after its speech); a forced
    call is opened natively and its arguments written under the tool's grammar, so even the
    random tiny model produces a valid call. Then the result goes back (an `input` turn) and the
    model speaks, with the tool still on offer: whatever it writes, any call it makes is valid."""
    async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
        _turn, done = await forced_weather_call(conn)

        await conn.session.update(session={"type": "realtime", "tool_choice": "auto"})
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": done["call_id"],
                "output": json.dumps({"city": "Paris", "sky": "sunny"}),
            }
        )
        await conn.response.create(response={"max_output_tokens": 300})
        answer = await collect(conn)
    response = answer.first("response.done")["response"]
    assert response["status"] in ("completed", "incomplete"), response
    assert "response.output_audio.delta" in answer.types
    for item in response["output"]:
        if item["type"] == "function_call":
            assert set(json.loads(item["arguments"])) == {"city"}
