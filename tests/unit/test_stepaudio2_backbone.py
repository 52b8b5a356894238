"""The unified backbone's decoding logic over a scripted engine: native tool calls, think
markers (as text and as tokens), spoken tokens for history, budgets, the ASR hint.

The engine is replaced by a script of what "the model writes" (token ids, in the tiny
vocabulary's layout); the vocoder by one that turns each code into 960 zero samples, or, where
the vocoder itself is the subject (the batched one against the per-stream one), the tiny
token2wav. What is checked is what the backbone asks of the engine (prompt ids, stop tokens,
grammars) and what it makes of the answer. The same paths run through the real engine in
tests/integration/test_stepaudio2_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from voxgate.model.stepaudio2 import budgets
from voxgate.model.stepaudio2.backbone import StepAudio2Backbone
from voxgate.model.stepaudio2.options import StepAudio2Options
from voxgate.model.stepaudio2.tiny import build_tokenizer
from voxgate.model.stepaudio2.token2wav import Token2Wav, VocoderScheduler
from voxgate.model.stepaudio2.token2wav.tiny import write_tiny_token2wav
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.stepaudio2.vocoding import start_vocoder_scheduler
from voxgate.model.types import (
    AudioChunk,
    BackboneError,
    ReasoningDelta,
    RequestRejected,
    ResponseEnd,
    ResponseOptions,
    Role,
    TextDelta,
    ToolCall,
    ToolSpec,
    Turn,
    TurnTrace,
)

WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
ALARM = ToolSpec("set_alarm", "Set an alarm", {"type": "object", "properties": {}})


@dataclass
class Request:
    prompt: list[int]
    params: Any
    request_id: str


@dataclass
class ScriptedEngine:
    """Answers each request with `script(request)`: the ids the model writes, in pieces."""

    script: Callable[[Request], list[list[int]]]
    model_dir: Path = Path("/models/Step-Audio-2-mini")
    requests: list[Request] = field(default_factory=list)
    closed_early: list[str] = field(default_factory=list)
    is_healthy: bool = True

    async def stream(
        self,
        prompt: list[int],
        params: Any,
        request_id: str,
        priority: int = 0,
        multi_modal_data: Any = None,
    ) -> AsyncIterator[Any]:
        request = Request(list(prompt), params, request_id)
        self.requests.append(request)
        pieces = self.script(request)
        done = False
        try:
            for i, ids in enumerate(pieces):
                last = i == len(pieces) - 1
                finish = None
                if last:
                    stops = params.stop_token_ids or []
                    finish = "stop" if ids and ids[-1] in stops else "length"
                yield SimpleNamespace(
                    outputs=[SimpleNamespace(token_ids=ids, finish_reason=finish)]
                )
            done = True
        finally:
            if not done:
                self.closed_early.append(request_id)


class SilentVocoder:
    sample_rate = 24_000

    def voices(self) -> list[str]:
        return ["default"]

    def voice(self, name: str) -> str:
        if name != "default":
            raise KeyError(name)
        return name

    def stream(self, speaker: str) -> Any:
        return SimpleNamespace(
            push=lambda codes: np.zeros(960 * len(codes), np.float32),
            finish=lambda: np.zeros(0, np.float32),
        )


@pytest.fixture(scope="module", params=["text", "tokens"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(request.param))


@pytest.fixture
def tok(tokenizer: PreTrainedTokenizerFast) -> TokenMap:
    return TokenMap.from_tokenizer(tokenizer)


def make(
    tokenizer: Any,
    script: Callable[[Request], list[list[int]]],
    vocoder: Any = None,
    scheduler: VocoderScheduler | None = None,
    **options: Any,
):
    engine = ScriptedEngine(script)
    backbone = StepAudio2Backbone(
        engine,  # type: ignore[arg-type]
        tokenizer,
        vocoder or SilentVocoder(),
        StepAudio2Options(**options),
        scheduler,
    )
    return backbone, engine


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def ta4(tokenizer: Any, tok: TokenMap, text: str, codes_per_word: int = 4) -> list[int]:
    """A spoken answer the TA4 way: one text token, then four speech codes, over and over."""
    out: list[int] = []
    for i, token in enumerate(encode(tokenizer, text)):
        out += [token, *(tok.audio_0 + (i * 7 + k) % 6561 for k in range(codes_per_word))]
    return [*out, tok.tts_pad, tok.audio_0 + 1, tok.audio_0 + 2, tok.audio_pad, tok.audio_pad]


async def run(backbone: StepAudio2Backbone, turns: list[Turn], **options: Any) -> list[Any]:
    opts = ResponseOptions(request_id="r1", instructions="Be brief.", voice="default", **options)
    return [item async for item in backbone.respond(turns, opts, TurnTrace())]


ASK = [Turn(Role.USER, "What is the weather in Paris?")]


async def test_a_spoken_preamble_then_a_native_call(tokenizer, tok) -> None:
    spoken = ta4(tokenizer, tok, "Let me check.")
    call = encode(tokenizer, '<tool_call>function\nget_weather\n{"city": "Paris"}</tool_call>')
    backbone, engine = make(
        tokenizer, lambda r: [spoken[:7], [*spoken[7:], tok.tts_end], [*call, tok.eot]]
    )
    out = await run(backbone, ASK, tools=(WEATHER, ALARM))

    (request,) = engine.requests
    # The tools are a turn of their own, right after the system turn.
    schemas = tokenizer.decode(request.prompt, skip_special_tokens=False)
    assert "<|BOT|>system\nBe brief.<|EOT|><|BOT|>tool_json_schemas\n[" in schemas
    # With tools on offer the answer goes on past <tts_end> (calls come after the speech).
    assert request.params.stop_token_ids == [tok.eot]
    words = "".join(o.text for o in out if isinstance(o, TextDelta))
    assert words == "Let me check."
    assert sum(len(o.samples) for o in out if isinstance(o, AudioChunk)) > 0
    (tool_call,) = [o for o in out if isinstance(o, ToolCall)]
    assert (tool_call.name, json.loads(tool_call.arguments)) == ("get_weather", {"city": "Paris"})
    end = out[-1]
    assert isinstance(end, ResponseEnd) and end.finish_reason == "stop"
    # History gets the speech as written, up to and with <tts_end> (the call is re-rendered).
    assert list(end.spoken_tokens) == [*spoken, tok.tts_end]
    assert out.index(tool_call) > max(i for i, o in enumerate(out) if isinstance(o, AudioChunk))


async def test_invalid_arguments_get_one_retry_under_the_schema(tokenizer, tok) -> None:
    spoken = ta4(tokenizer, tok, "Okay.")
    bad = encode(tokenizer, '<tool_call>function\nget_weather\n{"town": 3}</tool_call>')
    good = encode(tokenizer, '{"city": "Paris"}')
    answers = iter([[[*spoken, tok.tts_end], [*bad, tok.eot]], [good]])
    backbone, engine = make(tokenizer, lambda r: next(answers))
    out = await run(backbone, ASK, tools=(WEATHER,))

    first, retry = engine.requests
    opened = encode(tokenizer, "<tool_call>function\n") + encode(tokenizer, "get_weather\n")
    # The retry continues from what the model said, with the call re-opened by name...
    assert retry.prompt == [*first.prompt, *spoken, tok.tts_end, *opened]
    # ...and its arguments constrained to the tool's schema.
    assert retry.params.structured_outputs.json == WEATHER.parameters
    (tool_call,) = [o for o in out if isinstance(o, ToolCall)]
    assert json.loads(tool_call.arguments) == {"city": "Paris"}


async def test_an_unknown_function_is_retried_by_choice_of_the_offered_names(tokenizer, tok):
    made_up = encode(tokenizer, '<tool_call>function\nsend_email\n{"to": "x"}</tool_call>')
    answers = iter(
        [[[*made_up, tok.eot]], [encode(tokenizer, "set_alarm")], [encode(tokenizer, "{}")]]
    )
    backbone, engine = make(tokenizer, lambda r: next(answers))
    out = await run(backbone, ASK, tools=(WEATHER, ALARM), audio=False)

    _first, name, args = engine.requests
    assert name.params.structured_outputs.choice == ["get_weather", "set_alarm"]
    assert args.params.structured_outputs.json == ALARM.parameters
    assert [o.name for o in out if isinstance(o, ToolCall)] == ["set_alarm"]


async def test_a_required_function_is_opened_natively(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [encode(tokenizer, '{"city": "Rome"}')])
    out = await run(backbone, ASK, tools=(WEATHER, ALARM), tool_choice="get_weather")

    (request,) = engine.requests
    opening = encode(tokenizer, "<tool_call>function\n") + encode(tokenizer, "get_weather\n")
    assert request.prompt[-len(opening) :] == opening
    assert tokenizer.decode(request.prompt[: -len(opening)]).endswith("assistant\n")
    assert [type(o) for o in out] == [ToolCall, ResponseEnd]


async def test_past_calls_and_results_are_rendered_natively(tokenizer, tok) -> None:
    spoken = (*ta4(tokenizer, tok, "Checking."), tok.tts_end)
    turns = [
        *ASK,
        Turn(Role.ASSISTANT, "Checking.", tokens=spoken),
        Turn(Role.ASSISTANT, "get_weather", call=ToolCall("c1", "get_weather", '{"city":"Paris"}')),
        Turn(Role.TOOL, "Sunny, 21 C"),
    ]
    backbone, engine = make(tokenizer, lambda r: [[*ta4(tokenizer, tok, "Sunny."), tok.tts_end]])
    await run(backbone, turns, tools=(WEATHER,))
    text = tokenizer.decode(engine.requests[0].prompt, skip_special_tokens=False)
    call = '<tool_call>function\nget_weather\n{"city": "Paris"}</tool_call>'
    # One assistant turn: the speech as the model wrote it, then the call; the result is input.
    assert f"<tts_end>{call}<|EOT|><|BOT|>input\nSunny, 21 C<|EOT|>" in text
    assert text.count("<|BOT|>assistant\n") == 2


async def test_without_tools_speech_stops_at_tts_end(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [[*ta4(tokenizer, tok, "Hi."), tok.tts_end]])
    out = await run(backbone, ASK)
    assert engine.requests[0].params.stop_token_ids == [tok.eot, tok.tts_end]
    assert not [o for o in out if isinstance(o, ToolCall)]
    assert "tool_json_schemas" not in tokenizer.decode(engine.requests[0].prompt)


async def test_think_mode_uses_the_vocabulary_markers(tokenizer, tok) -> None:
    markers = tok.think
    if markers.are_tokens:
        thought = [*encode(tokenizer, "They greet me."), markers.end_id]
    else:
        thought = encode(tokenizer, "They greet me.</think>and more")
    answers = iter([[thought[:3], thought[3:]], [[*ta4(tokenizer, tok, "Hello!"), tok.tts_end]]])
    backbone, engine = make(tokenizer, lambda r: next(answers), think="on")
    out = await run(backbone, ASK, reasoning_tokens=64)

    reasoning = "".join(o.text for o in out if isinstance(o, ReasoningDelta))
    assert reasoning == "They greet me."  # the end marker is never shown, nor what follows
    think, answer = engine.requests
    base = think.prompt[: -len(backbone._writer.think_start())]
    assert base[-1] != tok.tts_start and tokenizer.decode(base).endswith("assistant\n")
    if markers.are_tokens:
        assert think.prompt[-1] == markers.start_id
        assert think.params.stop_token_ids == [markers.end_id]
        closing = [markers.start_id, *encode(tokenizer, "They greet me."), markers.end_id]
        closing += encode(tokenizer, "\n\n")
    else:
        assert think.prompt[len(base) :] == encode(tokenizer, "<think>")
        # The text marker ends the reasoning: the request is closed (aborted) there.
        assert engine.closed_early == [think.request_id]
        closing = encode(tokenizer, "<think>They greet me.</think>\n\n")
    assert answer.prompt == [*base, *closing, tok.tts_start]
    words = "".join(o.text for o in out if isinstance(o, TextDelta))
    assert words == "Hello!"


def test_think_is_offered_by_vocabulary_name_or_setting(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [])
    assert backbone.can_reason == tok.think.are_tokens  # "Step-Audio-2-mini": not by name
    engine.model_dir = Path("/models/Step-Audio-2-mini-Think")
    assert backbone.can_reason
    assert make(tokenizer, lambda r: [], think="off")[0].can_reason is False


async def test_the_asr_hint_is_refused_not_appended(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [[tok.eot]])
    assert backbone.takes_transcription_prompt is False
    with pytest.raises(RequestRejected, match="fixed instruction"):
        await backbone.transcribe(np.zeros(16000, np.float32), prompt="Names: Ada")
    assert engine.requests == []


async def test_translation_uses_the_published_s2tt_prompt(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [[*encode(tokenizer, "Hello."), tok.eot]])
    result = await backbone.translate(np.zeros(32000, np.float32))
    assert result.text == "Hello."
    prompt = tokenizer.decode(engine.requests[0].prompt, skip_special_tokens=False)
    assert prompt.startswith("<|BOT|>system\n请仔细聆听这段语音，然后将其内容翻译成英文。<|EOT|>")
    assert engine.requests[0].params.temperature == pytest.approx(0.1)


async def test_budgets_are_seconds_of_speech(tokenizer, tok) -> None:
    backbone, engine = make(tokenizer, lambda r: [[tok.tts_end]], answer_s=60, max_tts_s=20)
    assert backbone.answer_budget.default_tokens == budgets.speech_tokens(60)
    assert budgets.speech_seconds(backbone.answer_budget.max_tokens) >= 180
    chinese = "今天天气很好。" * 3
    async for _ in backbone.synthesize(chinese, voice="default"):
        pass
    assert engine.requests[0].params.max_tokens >= 9 * len(chinese)
    # and the cap holds for a long text
    async for _ in backbone.synthesize("word " * 400, voice="default"):
        pass
    assert engine.requests[1].params.max_tokens == budgets.speech_tokens(20)


async def test_think_needs_a_reasoning_checkpoint(tokenizer, tok) -> None:
    backbone, _engine = make(tokenizer, lambda r: [], think="off")
    with pytest.raises(BackboneError, match="think mode"):
        await run(backbone, ASK, reasoning_tokens=64)


async def test_a_synthesis_cut_at_its_budget_is_counted(tokenizer, tok, caplog) -> None:
    from voxgate.model.stepaudio2.backbone import TTS_CUT

    before = TTS_CUT._value.get()
    backbone, _engine = make(tokenizer, lambda r: [ta4(tokenizer, tok, "one two three")])
    async for _ in backbone.synthesize("one two three four", voice="default"):
        pass
    assert TTS_CUT._value.get() == before + 1
    assert "cut at its budget" in caplog.text


async def test_a_clip_longer_than_one_prompt_is_refused_before_the_engine(tokenizer, tok):
    backbone, engine = make(tokenizer, lambda r: [[tok.eot]], audio_pieces_per_prompt=2)
    with pytest.raises(RequestRejected, match="more than one prompt holds"):
        await backbone.describe(np.zeros(51 * 16000, np.float32))
    assert engine.requests == []
    assert (await backbone.describe(np.zeros(49 * 16000, np.float32))) == ""


def test_the_splitter_decodes_incrementally_and_exactly(tokenizer, tok) -> None:
    from voxgate.model.stepaudio2.parsing import OutputSplitter, TextPiece

    text = "Hello, 世界! Ça va? " * 20
    ids = encode(tokenizer, text)
    splitter = OutputSplitter(tokenizer, tok)
    pieces = []
    for token in ids:  # one token at a time, as the engine streams them
        pieces += [p.text for p in splitter.push([token]) if isinstance(p, TextPiece)]
    pieces.append(splitter.finish())
    assert "".join(pieces) == text == splitter.text
    assert not any("\ufffd" in p for p in pieces)  # no half characters handed out


# --- the batched vocoder ------------------------------------------------------------------------

AUDIO_ATOL = 2e-4
"""Batched against per-stream audio: the tolerance of tests/unit/test_token2wav_batched.py
(float32 rounding of the masked, padded static step)."""
ONE_TOKENIZER = pytest.mark.parametrize("tokenizer", ["text"], indirect=True)
"""The vocoder does not depend on how think markers are written: one vocabulary is enough."""


@pytest.fixture(scope="module")
def t2w(tmp_path_factory: pytest.TempPathFactory) -> Token2Wav:
    return Token2Wav.load(write_tiny_token2wav(tmp_path_factory.mktemp("t2w"), seed=0))


@pytest.fixture
def batched(t2w: Token2Wav) -> Iterator[VocoderScheduler]:
    """The batched vocoder as `start()` builds it, with two slots."""
    scheduler = start_vocoder_scheduler(
        t2w, StepAudio2Options(batched_vocoder="on", vocoder_slots=2)
    )
    yield scheduler
    scheduler.shutdown()


def test_the_batched_vocoder_is_on_by_default_on_cuda_only() -> None:
    assert StepAudio2Options().vocoder_batched is False  # the CPU: per-stream
    assert StepAudio2Options(vocoder_device="cuda").vocoder_batched is True
    assert StepAudio2Options(vocoder_device="cuda:1").vocoder_batched is True
    assert StepAudio2Options(vocoder_device="cuda", batched_vocoder="off").vocoder_batched is False
    assert StepAudio2Options(batched_vocoder="on").vocoder_batched is True


def hold_first_step_until_both_wait(scheduler: VocoderScheduler) -> list[list[int]]:
    """Hold the scheduler's first step until two streams have a push waiting on it, so two
    concurrent answers meet in the scheduler whatever the threads' timing. Returns the
    priorities of the streams of each step, as they are served."""
    both_waiting = threading.Event()
    waiting: list[object] = []
    served: list[list[int]] = []
    open_stream, step = scheduler.open, scheduler.vocoder.step

    def counted_open(voice: Any, priority: int = 0) -> Any:
        stream = open_stream(voice, priority)
        push = stream.push

        def counted_push(tokens: Any) -> Any:
            future = push(tokens)
            if not future.done() and stream not in waiting:
                waiting.append(stream)
                if len(waiting) == 2:
                    both_waiting.set()
            return future

        stream.push = counted_push  # type: ignore[method-assign]
        return stream

    def held_step(streams: Any) -> Any:
        assert both_waiting.wait(timeout=60)
        served.append([s.priority for s in streams])
        return step(streams)

    scheduler.open = counted_open  # type: ignore[method-assign]
    scheduler.vocoder.step = held_step  # type: ignore[method-assign]
    return served


@ONE_TOKENIZER
async def test_concurrent_answers_sound_the_same_with_the_batched_vocoder(
    tokenizer, tok, t2w, batched
) -> None:
    """A realtime answer and a REST synthesis at once, each push 2.4 chunks of codes: with
    the batched vocoder (stepped together, the live turn's row first) each gets the audio the
    per-stream vocoder gives it, within float rounding, and the text that goes with it."""
    answers = {
        "r1": ta4(tokenizer, tok, "Hello there, my friend.", codes_per_word=60),
        "tts": ta4(tokenizer, tok, "One two three.", codes_per_word=60),
    }

    def script(request: Request) -> list[list[int]]:
        ids = answers[request.request_id.split("-")[0]]
        return [ids[:70], ids[70:140], [*ids[140:], tok.tts_end]]

    async def speak(backbone: StepAudio2Backbone) -> list[tuple[str, np.ndarray]]:
        async def synthesis() -> list[Any]:
            return [chunk async for chunk in backbone.synthesize("One two three.", voice="default")]

        heard = []
        for out in await asyncio.gather(run(backbone, ASK), synthesis()):
            words = "".join(o.text for o in out if isinstance(o, TextDelta))
            audio = np.concatenate([o.samples for o in out if isinstance(o, AudioChunk)])
            heard.append((words, audio))
        return heard

    per_stream = await speak(make(tokenizer, script, t2w)[0])
    served = hold_first_step_until_both_wait(batched)
    together = await speak(make(tokenizer, script, t2w, batched)[0])

    assert [0, 10] in served  # steps shared by both streams, realtime before REST
    assert together[0][0] == per_stream[0][0] == "Hello there, my friend."
    for (_, alone), (_, shared) in zip(per_stream, together, strict=True):
        assert len(shared) == len(alone) > 0
        np.testing.assert_allclose(shared, alone, rtol=0, atol=AUDIO_ATOL)
    assert sorted(batched.vocoder._free) == [0, 1]  # both slots given back at the end


@ONE_TOKENIZER
@pytest.mark.parametrize("when", ["during its step", "between its chunks"])
async def test_a_cancelled_answer_gives_its_vocoder_slot_back(tokenizer, tok, t2w, when) -> None:
    """One slot. The first answer is cancelled midway (a barge-in): its slot must be free for
    the next answer, which runs batched, not alone."""
    scheduler = start_vocoder_scheduler(
        t2w, StepAudio2Options(batched_vocoder="on", vocoder_slots=1)
    )
    long = ta4(tokenizer, tok, "This answer is long and it goes on and on.", codes_per_word=30)
    short = ta4(tokenizer, tok, "Okay.", codes_per_word=30)
    answers = iter([[long[:40], long[40:]], [[*short, tok.tts_end]]])
    backbone, _engine = make(tokenizer, lambda r: next(answers), t2w, scheduler)
    stepping, go = threading.Event(), threading.Event()
    in_slot: list[bool] = []
    step = scheduler.vocoder.step

    def watched(streams: Any) -> Any:
        stepping.set()
        assert go.wait(timeout=60)
        audio = step(streams)
        in_slot.extend(s.alone is None for s in streams)
        return audio

    scheduler.vocoder.step = watched  # type: ignore[method-assign]
    try:
        if when == "during its step":
            answer = asyncio.create_task(run(backbone, ASK))
            assert await asyncio.to_thread(stepping.wait, 60)
            answer.cancel()  # while its push waits on the step
            with pytest.raises(asyncio.CancelledError):
                await answer
            go.set()
        else:
            go.set()
            opts = ResponseOptions(request_id="r1", instructions="", voice="default")
            stream = backbone.respond(ASK, opts, TurnTrace())
            async for item in stream:
                if isinstance(item, AudioChunk):
                    break  # the consumer stops: the answer is closed between chunks
            await stream.aclose()
        in_slot.clear()
        out = await run(backbone, ASK)
        assert any(isinstance(o, AudioChunk) for o in out)
        assert in_slot and all(in_slot)  # the next answer had the slot
        assert scheduler.vocoder._free == [0]
    finally:
        go.set()
        scheduler.shutdown()
