"""Function-calling decisions: the JSON schema the model writes under, and reading it back."""

from __future__ import annotations

import json

import jsonschema
import pytest

from voxgate.model import tools
from voxgate.model.types import ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "The weather now in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec("get_time", "The time now.", {"type": "object", "properties": {}})


def test_auto_allows_every_tool_or_no_call() -> None:
    schema = tools.decision_schema([WEATHER, TIME], "auto")
    jsonschema.validate({"call": "none"}, schema)
    jsonschema.validate({"call": "get_weather", "arguments": {"city": "Paris"}}, schema)
    jsonschema.validate({"call": "get_time", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"call": "get_weather", "arguments": {"unit": "C"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"call": "launch_rocket", "arguments": {}}, schema)


def test_required_and_named_choices_force_a_call() -> None:
    required = tools.decision_schema([WEATHER, TIME], "required")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"call": "none"}, required)
    named = tools.decision_schema([WEATHER, TIME], "get_time")
    jsonschema.validate({"call": "get_time", "arguments": {}}, named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"call": "get_weather", "arguments": {"city": "Oslo"}}, named)


def test_a_decision_is_read_and_checked() -> None:
    call = tools.parse_decision(
        '{"call": "get_weather", "arguments": {"city": "Paris"}}', [WEATHER]
    )
    assert call is not None and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_")
    assert tools.parse_decision('{"call": "none"}', [WEATHER]) is None
    for bad in (
        "not json",
        '{"arguments": {}}',
        '{"call": "unknown", "arguments": {}}',
        '{"call": "get_weather", "arguments": {"city": 3}}',  # never handed out as a call
    ):
        with pytest.raises(ValueError):
            tools.parse_decision(bad, [WEATHER])


def test_the_model_is_told_about_each_tool() -> None:
    text = tools.instructions([WEATHER, TIME], "auto")
    assert "get_weather" in text and "The weather now in a city." in text and '"city"' in text
    assert '{"call": "none"}' in text
    assert '"none"' not in tools.instructions([WEATHER], "required")


def test_raw_control_characters_are_escaped_in_the_call() -> None:
    # A grammar may let a raw control character into a string; the call handed out is JSON.
    call = tools.parse_decision('{"call":"get_weather","arguments":{"city":"\x0bOslo"}}', [WEATHER])
    assert call is not None
    assert call.arguments == '{"city": "\\u000bOslo"}'
    assert json.loads(call.arguments) == {"city": "\x0bOslo"}
