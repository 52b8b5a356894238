"""PromptBuilder: bounded prompts with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import pytest

from voxgate.model import artifacts, smollm2
from voxgate.model.artifacts import ArtifactError
from voxgate.model.lm import PromptBuilder
from voxgate.model.types import ContextBudgetExceeded, ContextWindow, Role, Turn

PERSONA = "You are Ada, a helpful voice assistant."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    try:
        directory = smollm2.verify(artifacts.default_home())
    except ArtifactError as e:
        pytest.fail(f"test models are not in place: {e}")
    return AutoTokenizer.from_pretrained(directory)


def conversation(n: int) -> list[Turn]:
    return [
        Turn(Role.USER if i % 2 == 0 else Role.ASSISTANT, f"message number {i} " + "word " * 20)
        for i in range(n)
    ]


def decoded(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


def test_a_short_conversation_is_kept_whole(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=1024)
    turns = conversation(4)
    prompt = builder.build(PERSONA, turns, max_output_tokens=100)
    assert prompt == builder.render(PERSONA, turns)
    text = decoded(tokenizer, prompt)
    assert PERSONA in text and "message number 0" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_an_overflowing_conversation_keeps_persona_and_newest_turns(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=600, low_water=0.6)
    turns = conversation(40)
    prompt = builder.build(PERSONA, turns, max_output_tokens=100)
    assert len(prompt) <= 0.6 * 500
    text = decoded(tokenizer, prompt)
    assert PERSONA in text
    assert "message number 39" in text  # the newest turn
    assert "message number 0 " not in text  # the oldest went


def test_the_window_start_is_stable_so_the_prefix_cache_is_reused(tokenizer) -> None:
    stable = PromptBuilder(tokenizer, context_tokens=800, low_water=0.6)
    naive = PromptBuilder(tokenizer, context_tokens=800, low_water=1.0)
    turns = conversation(80)
    reused = {"stable": 0, "naive": 0}
    for builder, name, window in ((stable, "stable", ContextWindow()), (naive, "naive", None)):
        previous: list[int] = []
        for n in range(1, len(turns) + 1):
            prompt = builder.build(PERSONA, turns[:n], 100, window)
            assert len(prompt) <= 700
            # The previous prompt minus its generation prompt is a prefix of this one.
            shared = previous[:-3]
            if shared and prompt[: len(shared)] == shared:
                reused[name] += 1
            previous = prompt
    # Dropping one turn at a time changes the start of almost every prompt once full; the
    # stable window changes it only when it has grown back to the budget.
    assert reused["stable"] >= 70
    assert reused["naive"] <= 30


def test_a_deleted_window_start_starts_over(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=600)
    turns = conversation(40)
    window = ContextWindow()
    first = builder.build(PERSONA, turns, 100, window)
    kept = decoded(tokenizer, first)
    start = next(i for i, t in enumerate(turns) if f"message number {i} " in kept)
    remaining = turns[:start] + turns[start + 1 :]
    prompt = builder.build(PERSONA, remaining, 100, window)
    assert len(prompt) <= 500
    assert "message number 39" in decoded(tokenizer, prompt)


def test_one_huge_turn_is_cut_from_its_start(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=300)
    words = " ".join(f"w{i}" for i in range(2000))
    prompt = builder.build(PERSONA, [Turn(Role.USER, words)], max_output_tokens=100)
    assert len(prompt) <= 200
    text = decoded(tokenizer, prompt)
    assert "w1999" in text and "w0 " not in text and PERSONA in text


def test_no_room_for_the_prompt_is_an_error(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=100)
    with pytest.raises(ContextBudgetExceeded):
        builder.build(PERSONA, conversation(2), max_output_tokens=100)


def test_instructions_that_do_not_fit_beside_the_answer_are_refused(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, context_tokens=400)
    builder.check_instructions(PERSONA, max_output_tokens=200)
    long = " ".join(f"rule {i}." for i in range(200))
    with pytest.raises(ContextBudgetExceeded, match="tokens"):
        builder.check_instructions(long, max_output_tokens=200)
    # The same instructions fit once the answer's budget leaves them room.
    short = " ".join(f"rule {i}." for i in range(40))
    with pytest.raises(ContextBudgetExceeded):
        builder.check_instructions(short, max_output_tokens=300)
    builder.check_instructions(short, max_output_tokens=100)


def test_the_builder_keeps_nothing_per_conversation(tokenizer) -> None:
    """Window starts live in each conversation's own ContextWindow: thousands of closed
    conversations leave nothing behind in the (process-wide) builder."""
    builder = PromptBuilder(tokenizer, context_tokens=600)
    before = dict(vars(builder))
    for _ in range(50):
        builder.build(PERSONA, conversation(40), 100, ContextWindow())
    assert vars(builder).keys() == before.keys()
    assert all(vars(builder)[k] is before[k] for k in before)
