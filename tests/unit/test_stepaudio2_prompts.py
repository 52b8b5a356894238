"""PromptWriter against the reference's own renderings (fixtures/stepaudio2/golden_prompts.json).

Each fixture entry holds the token ids the published template (Step-Audio2's HF
`apply_chat_template` or StepFun's vLLM fork `apply_chat_template_trans_ta4`) produced with the
tiny test tokenizer; its README says how. Here PromptWriter builds the same conversation and the
ids must match exactly, audio patches as voxgate writes them (one per 25 s piece).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxgate.model.stepaudio2.audio import SAMPLE_RATE
from voxgate.model.stepaudio2.regimes import Prompt, PromptWriter
from voxgate.model.stepaudio2.tiny import build_tokenizer
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import Role, ToolCall, ToolSpec, Turn

FIXTURE = Path(__file__).parents[1] / "fixtures" / "stepaudio2" / "golden_prompts.json"
GOLDEN = {entry["name"]: entry for entry in json.loads(FIXTURE.read_text())["scenarios"]}

DIALOGUE_SYSTEM = "You are a helpful assistant."
THOUGHT = "I should greet them."


@cache
def tokenizer(variant: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(variant))


def writer(variant: str = "text") -> PromptWriter:
    tok = tokenizer(variant)
    return PromptWriter(tok, TokenMap.from_tokenizer(tok))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def assert_matches(name: str, prompt: Prompt) -> None:
    golden = GOLDEN[name]
    ids, expected = prompt.token_ids, golden["ids"]
    if ids != expected:
        tok = tokenizer(golden["tokenizer"])
        pytest.fail(
            f"{name}: voxgate's prompt differs from the reference ({golden['source']})\n"
            + token_diff(tok.convert_ids_to_tokens(ids), tok.convert_ids_to_tokens(expected))
        )
    # The expanded length is the reference's, whose audio patches were not collapsed.
    assert prompt.length == golden["expanded_length"]


def token_diff(got: Sequence[str], expected: Sequence[str]) -> str:
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    start = max(0, first - 8)
    return (
        f"first difference at position {first}\n"
        f"  voxgate:   {list(got[start : first + 12])}\n"
        f"  reference: {list(expected[start : first + 12])}"
    )


def test_asr_matches_the_reference() -> None:
    seconds = GOLDEN["asr"]["inputs"]["audio_seconds"]
    assert_matches("asr", writer().asr(silence(seconds)))


def test_tts_matches_the_reference() -> None:
    assert_matches("tts", writer().tts(GOLDEN["tts"]["inputs"]["text"]))


def test_tts_style_is_a_system_turn_before_the_reference_prompt() -> None:
    inputs = GOLDEN["tts_style"]["inputs"]
    assert_matches("tts_style", writer().tts(inputs["text"], style=inputs["style"]))


def test_a_past_spoken_answer_goes_back_as_the_ids_the_model_wrote() -> None:
    inputs = GOLDEN["dialogue_ta4_history"]["inputs"]
    turns = [
        Turn(Role.USER, "", silence(inputs["audio_seconds"])),
        Turn(Role.ASSISTANT, "words", tokens=tuple(inputs["assistant_tokens"])),
        Turn(Role.USER, "What is the capital of France?"),
    ]
    prompt = writer().dialogue(DIALOGUE_SYSTEM, turns, "speech")
    assert_matches("dialogue_ta4_history", prompt)


def test_the_history_tokens_are_a_ta4_answer_of_this_vocabulary() -> None:
    tokens = TokenMap.from_tokenizer(tokenizer("text"))
    written = GOLDEN["dialogue_ta4_history"]["inputs"]["assistant_tokens"]
    assert tokens.is_text(written[0]) and tokens.is_audio(written[1])
    assert tokens.tts_pad in written and written[-1] == tokens.tts_end


def test_a_tool_call_and_its_result_match_the_vllm_template() -> None:
    tool = GOLDEN["tools"]["inputs"]["tools"][0]["function"]
    turns = [
        Turn(Role.USER, "What's the weather in Paris?"),
        Turn(
            Role.ASSISTANT,
            'get_weather({"city": "Paris"})',
            call=ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ),
        Turn(Role.TOOL, "Sunny, 21 C"),
    ]
    tools = [ToolSpec(tool["name"], tool["description"], tool["parameters"])]
    prompt = writer().dialogue(DIALOGUE_SYSTEM, turns, "speech", tools=tools)
    assert_matches("tools", prompt)


@pytest.mark.parametrize("variant", ["text", "tokens"])
def test_think_mode_matches_the_reasoning_and_continuation_prompts(variant: str) -> None:
    name = f"think_{variant}"
    inputs = GOLDEN[f"{name}_reasoning"]["inputs"]
    assert GOLDEN[f"{name}_reasoning"]["tokenizer"] == variant
    w = writer(variant)
    turns = [Turn(Role.USER, "", silence(inputs["audio_seconds"]))]

    reasoning = w.dialogue(inputs["system"], turns, "think")
    assert_matches(f"{name}_reasoning", reasoning)
    # The same prompt as the speech one with its `<tts_start>` swapped for the think marker.
    speech = w.dialogue(inputs["system"], turns, "speech")
    assert speech.token_ids[-1] == w.tokens.tts_start
    assert reasoning.token_ids == [*speech.token_ids[:-1], *w.think_start()]

    continuation = w.dialogue(inputs["system"], turns, "text").extended(w.thought(THOUGHT))
    assert GOLDEN[f"{name}_continuation"]["inputs"]["thought"] == THOUGHT
    assert_matches(f"{name}_continuation", continuation)


@pytest.mark.parametrize("variant", ["text", "tokens"])
def test_the_tiny_vocabulary_is_deterministic_so_the_fixture_stays_valid(variant: str) -> None:
    first, second = build_tokenizer(variant), build_tokenizer(variant)
    assert first.get_vocab(with_added_tokens=True) == second.get_vocab(with_added_tokens=True)
    sample = "<|BOT|>human\n以自然的语速读出下面的文字。\nHello, how are you today?<|EOT|>"
    assert first.encode(sample).ids == second.encode(sample).ids
    assert first.encode(sample).ids == GOLDEN["tts"]["ids"][: len(first.encode(sample).ids)]
