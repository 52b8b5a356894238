"""Step-Audio-2's budgets are seconds of speech: TA4 output is 31.25 tokens a second."""

from __future__ import annotations

import pytest

from voxgate.model.engine import EngineConfig
from voxgate.model.stepaudio2 import budgets
from voxgate.model.stepaudio2.budgets import ReadingPace
from voxgate.model.stepaudio2.options import StepAudio2Options


def ta4_answer(seconds: float) -> int:
    """Tokens of a TA4 answer speaking `seconds`: per 4 codes (160 ms) one text or pad slot,
    then `<tts_end>`, a little trailing text and `<|EOT|>` (as the published model writes)."""
    codes = round(seconds * 25)
    slots = -(-codes // 4)
    return codes + slots + 1 + 3 + 1


@pytest.mark.parametrize("seconds", [1, 4, 16, 60, 180])
def test_a_budget_of_n_seconds_holds_n_seconds_of_ta4_speech(seconds: float) -> None:
    assert budgets.speech_tokens(seconds) >= ta4_answer(seconds)
    # and not wildly more: the cap still means something
    assert budgets.speech_tokens(seconds) <= ta4_answer(seconds) + 16


def test_the_old_text_budgets_were_seconds_of_speech() -> None:
    # What issue 12 found: 128 tokens is ~4 s of speech, 512 ~16 s.
    assert 3.5 < budgets.speech_seconds(128) < 4.0
    assert 15.5 < budgets.speech_seconds(512) < 16.5


def test_default_realtime_answers_run_a_minute_and_more() -> None:
    options = StepAudio2Options()
    assert options.answer_s >= 60
    default = budgets.speech_tokens(options.answer_s)
    assert budgets.speech_seconds(default) >= 60
    # and fit the default context beside a conversation
    assert default < options.context_tokens / 2


def test_tts_budgets_cover_slow_reading_per_script() -> None:
    pace = ReadingPace()
    chinese = "今天天气很好，我们去公园散步吧。" * 4  # 64 characters
    english = "The weather is nice today, so let us walk in the park. " * 4
    # Chinese takes 7-9 TA4 tokens per character at normal pace: the budget gives more.
    assert budgets.speech_tokens(pace.seconds(chinese)) >= 9 * len(chinese)
    # ~14 characters a second is normal English: the budget allows a slow reading.
    assert pace.seconds(english) >= len(english) / 10
    # digits are read as words
    assert pace.seconds("2026") > pace.seconds("abcd")
    # half speed takes twice as long
    assert pace.seconds(english, speed=0.5) == pytest.approx(2 * pace.seconds(english))
    # Japanese kana and Korean hangul count as CJK
    assert pace.seconds("こんにちは") == pace.seconds("안녕하세요") == pace.seconds("你好你好你")


def test_engine_defaults_come_from_the_backbone() -> None:
    config = EngineConfig().for_backbone("stepaudio2", 8192, "auto")
    assert (config.max_model_len, config.dtype) == (8192, "auto")
    chosen = EngineConfig(max_model_len=16384, dtype="bfloat16")
    assert chosen.for_backbone("stepaudio2", 8192, "auto") == chosen
    with pytest.raises(ValueError, match=r"below stepaudio2\.context_tokens"):
        EngineConfig(max_model_len=2048).for_backbone("stepaudio2", 8192, "auto")
