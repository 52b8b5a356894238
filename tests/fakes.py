"""A fake `Backbone` for tests of the layers above the model: scripted, deterministic, no engine.

`FakeBackbone` follows the Protocol in `voxgate.model.backbone`. It records every call, so a test
can check what the session asked for (the conversation passed to `respond`, the options) and
whether a response stream was stopped before it finished (barge-in, response.cancel).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    TEXT_ANSWER_BUDGET,
    AudioChunk,
    BackboneError,
    ContextBudgetExceeded,
    DescriptionUnsupported,
    ReasoningDelta,
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    Role,
    Segment,
    TextDelta,
    ToolCall,
    Transcription,
    TranslationUnsupported,
    Turn,
    TurnTrace,
    UnknownVoiceError,
    Voice,
    Word,
)

VOICE = Voice("joe", "en_US", 22050)
FACT = re.compile(r"\b(my|i am|i'm|i live|i like)\b", re.IGNORECASE)
TONE_HZ = 220.0
CHUNK_SECONDS = 0.1
"""Audio per synthesised piece (2205 samples at the fake voice's rate)."""


def tone(seconds: float = CHUNK_SECONDS, rate: int = VOICE.sample_rate) -> np.ndarray:
    """A 220 Hz sine at 0.3 full scale: clearly not silence, the same every time."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


Outcome = Literal["running", "finished", "closed", "cancelled", "failed"]


@dataclass(slots=True)
class RespondCall:
    """One `respond()` stream as the fake saw it."""

    conversation: list[Turn]
    """What was said, as text (audio stripped: see `heard`)."""
    options: ResponseOptions
    trace: TurnTrace
    heard: list[np.ndarray | None] = field(default_factory=list)
    """Per turn, the user audio the backbone was given (None for text-only turns)."""
    outcome: Outcome = "running"
    """finished: yielded its ResponseEnd; closed: aclose() before that; cancelled: its consumer's
    task was cancelled while the fake waited between chunks."""
    yielded: list[ResponseOutput] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        return self.outcome in ("closed", "cancelled")


@dataclass(frozen=True, slots=True)
class TranscribeCall:
    audio: np.ndarray
    language: str | None
    prompt: str | None
    temperature: float = 0.0
    timestamps: str = "none"
    priority: int = 0


@dataclass(frozen=True, slots=True)
class TranslateCall:
    audio: np.ndarray
    temperature: float = 0.0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class DescribeCall:
    audio: np.ndarray
    kind: str
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SynthesizeCall:
    text: str
    voice: str
    speed: float
    instructions: str | None = None
    priority: int = 0


class FakeBackbone:
    """Scripted speech backbone.

    - `transcript`: what `transcribe` returns, a string or a function of the audio (default
      "hello"); `transcribe_gate`, when set, holds every transcription until it is set. Asked
      for timestamps, it returns one segment over the whole audio, its words spread evenly.
      `takes_transcription_prompt` is settable (default True).
    - `translate` returns `translation` (no segments); with `can_translate` False it raises
      `TranslationUnsupported` instead, before recording the call.
    - `describe` returns `description`; with `can_describe` False it raises
      `DescriptionUnsupported` instead, before recording the call.
    - `synthesize` yields `synth_chunks` tone chunks per call; `synthesize_gate`, when set,
      holds every call after the first until it is set (to show that a caller streams the
      first call's audio before asking for more); `follows_instructions` is settable.
    - `reply`: the pieces of every answer; `respond` yields TextDelta(piece) and, for audio
      responses, one AudioChunk per piece, then ResponseEnd(`finish_reason`).
    - `chunk_delay_s`: a pause before each piece after the first, so a test can interrupt a
      response while it streams; `fail_after`: raise BackboneError after that many pieces.
    """

    name = "fake"

    def __init__(
        self,
        *,
        transcript: str | Callable[[np.ndarray], str] = "hello",
        reply: Sequence[str] = ("Hi there.", " How can I help?"),
        chunk_delay_s: float = 0.0,
        finish_reason: Literal["stop", "length"] = "stop",
        fail_after: int | None = None,
    ) -> None:
        self.transcript = transcript
        self.reply = list(reply)
        self.chunk_delay_s = chunk_delay_s
        self.finish_reason: Literal["stop", "length"] = finish_reason
        self.fail_after = fail_after
        self.failure: Exception = BackboneError("the fake backbone failed on purpose")
        """What `respond` raises after `fail_after` pieces."""
        self.translation = "hello in English"
        self.can_translate = True
        self.description = "a person says hello"
        self.can_describe = True
        self.takes_transcription_prompt = True
        self.transcribe_gate: asyncio.Event | None = None
        self.synthesize_gate: asyncio.Event | None = None
        self.synth_chunks = 3
        self.is_healthy = True
        self.follows_instructions = False
        self.can_reason = False
        self.answer_budget = TEXT_ANSWER_BUDGET
        self.reasoning = ["Let me think. ", "The user greets me."]
        """Think mode: what the fake 'thinks' before answering (when asked to)."""
        self.tool_arguments: str | None = None
        """When set and tools are offered, the fake calls the first tool with these arguments."""
        self.context_window: int | None = None
        """When set, only the newest this-many turns 'fit': older ones are reported dropped."""
        self.context_tokens: int | None = None
        """When set, instructions (one 'token' per character) plus the answer's budget must fit
        in this many, or `check_instructions` refuses them."""
        self.summarize_calls: list[tuple[str, list[Turn], int]] = []
        self.transcribe_calls: list[TranscribeCall] = []
        self.translate_calls: list[TranslateCall] = []
        self.describe_calls: list[DescribeCall] = []
        self.synthesize_calls: list[SynthesizeCall] = []
        self.respond_calls: list[RespondCall] = []

    @property
    def voices(self) -> Sequence[Voice]:
        return (VOICE,)

    @property
    def reply_text(self) -> str:
        return "".join(self.reply)

    def _check_voice(self, voice: str) -> None:
        if voice != VOICE.name:
            raise UnknownVoiceError(voice, [VOICE.name])

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        timestamps: Literal["none", "segment", "word"] = "none",
        priority: int = 0,
    ) -> Transcription:
        self.transcribe_calls.append(
            TranscribeCall(audio, language, prompt, temperature, timestamps, priority)
        )
        if self.transcribe_gate is not None:
            await self.transcribe_gate.wait()
        text = self.transcript(audio) if callable(self.transcript) else self.transcript
        duration = len(audio) / INPUT_SAMPLE_RATE
        segments: tuple[Segment, ...] = ()
        if timestamps != "none" and text:
            words: tuple[Word, ...] = ()
            if timestamps == "word" and (spoken := text.split()):
                step = duration / len(spoken)
                words = tuple(Word(i * step, (i + 1) * step, w) for i, w in enumerate(spoken))
            segments = (Segment(0.0, duration, text, words),)
        return Transcription(text, duration, "en", segments)

    async def translate(
        self, audio: np.ndarray, *, temperature: float = 0.0, priority: int = 0
    ) -> Transcription:
        if not self.can_translate:
            raise TranslationUnsupported("the fake backbone cannot translate")
        self.translate_calls.append(TranslateCall(audio, temperature, priority))
        return Transcription(self.translation, len(audio) / INPUT_SAMPLE_RATE, "en")

    async def describe(self, audio: np.ndarray, kind: str = "caption", *, priority: int = 0) -> str:
        if not self.can_describe:
            raise DescriptionUnsupported("the fake backbone cannot describe audio")
        self.describe_calls.append(DescribeCall(audio, kind, priority))
        return self.description

    async def synthesize(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        instructions: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[AudioChunk]:
        self._check_voice(voice)
        self.synthesize_calls.append(SynthesizeCall(text, voice, speed, instructions, priority))
        if len(self.synthesize_calls) > 1 and self.synthesize_gate is not None:
            await self.synthesize_gate.wait()
        for _ in range(self.synth_chunks):
            yield AudioChunk(tone(), VOICE.sample_rate)

    def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        if options.audio:
            self._check_voice(options.voice)
        call = RespondCall(
            [Turn(t.role, t.text) for t in conversation],
            options,
            trace,
            heard=[t.audio for t in conversation],
        )
        self.respond_calls.append(call)
        return self._respond(call)

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        if self.context_tokens is not None:
            if len(instructions) + max_output_tokens > self.context_tokens:
                raise ContextBudgetExceeded(
                    f"{len(instructions)} + {max_output_tokens} > {self.context_tokens} tokens"
                )

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        """Keeps the user's statements about themselves ("my ...", "I ..."): a stand-in for an
        LM told to keep names and facts."""
        self.summarize_calls.append((summary, list(turns), priority))
        facts = [t.text for t in turns if t.role is Role.USER and FACT.search(t.text)]
        return " ".join([summary, *facts]).strip()

    def _outputs(self, call: RespondCall) -> Iterator[ResponseOutput]:
        options = call.options
        if options.reasoning_tokens:
            if not self.can_reason:
                raise BackboneError("the fake backbone cannot reason")
            for piece in self.reasoning:
                yield ReasoningDelta(piece)
        start = 0
        if self.context_window is not None:
            start = max(0, len(call.conversation) - self.context_window)
        if options.tools and options.tool_choice != "none" and self.tool_arguments is not None:
            tool = options.tools[0]
            yield ToolCall(f"call_{len(self.respond_calls)}", tool.name, self.tool_arguments)
            yield ResponseEnd("stop", input_tokens=11, output_tokens=5, context_start=start)
            return
        for i, piece in enumerate(self.reply):
            if self.fail_after is not None and i == self.fail_after:
                raise self.failure
            yield TextDelta(piece)
            if call.options.audio:
                yield AudioChunk(tone(), VOICE.sample_rate)
        yield ResponseEnd(self.finish_reason, input_tokens=11, output_tokens=7, context_start=start)

    async def _respond(self, call: RespondCall) -> AsyncIterator[ResponseOutput]:
        trace = call.trace
        trace.mark("lm_submit")
        try:
            for output in self._outputs(call):
                if isinstance(output, TextDelta):
                    if call.yielded and self.chunk_delay_s:
                        await asyncio.sleep(self.chunk_delay_s)
                    trace.mark("lm_first_token")
                    trace.mark("first_clause")
                elif isinstance(output, AudioChunk):
                    trace.mark("tts_first_chunk")
                call.yielded.append(output)
                yield output
            call.outcome = "finished"
        except Exception:
            call.outcome = "failed"
            raise
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        except GeneratorExit:
            call.outcome = "closed"
            raise


def backbone_factory(backbone: FakeBackbone):
    """A `create_app` backbone factory that serves `backbone`."""

    @asynccontextmanager
    async def factory(settings: object) -> AsyncIterator[FakeBackbone]:
        yield backbone

    return factory
