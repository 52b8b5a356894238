"""The `Backbone` Protocol: what the layers above need from a speech backbone.

ASR, TTS and dialogue are three regimes of one backbone. The cascade backbone (the embedded CPU
default) implements them with three small models around one vLLM-hosted LM; the unified
backbone runs all three on one speech LM. Tests of the layers above use a fake that follows
this Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

import numpy as np

from voxgate.model.types import (
    AnswerBudget,
    AudioChunk,
    ResponseOptions,
    ResponseOutput,
    Transcription,
    Turn,
    TurnTrace,
    Voice,
)


class Backbone(Protocol):
    name: str
    """Short id ("cascade", "stepaudio2"), used in metrics and /v1/models."""

    @property
    def voices(self) -> Sequence[Voice]:
        """The voices `synthesize` and `respond` accept; the first is the default."""
        ...

    @property
    def is_healthy(self) -> bool:
        """False once the engine has died (readiness reports it)."""
        ...

    @property
    def answer_budget(self) -> AnswerBudget:
        """Default and largest realtime answer, in output tokens (see AnswerBudget)."""
        ...

    @property
    def can_reason(self) -> bool:
        """Whether think mode (`ResponseOptions.reasoning_tokens`) is available."""
        ...

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        """Raise `ContextBudgetExceeded` unless `instructions` fit the model's context beside an
        answer of `max_output_tokens` and some conversation (CPU work: off the event loop)."""
        ...

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        """Fold `turns` into the running `summary` (compacted memory), keeping names and facts."""
        ...

    @property
    def follows_instructions(self) -> bool:
        """Whether `synthesize(instructions=...)` changes how the speech sounds."""
        ...

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
        """Transcribe 16 kHz mono float32 audio (segments/words when `timestamps` asks)."""
        ...

    @property
    def takes_transcription_prompt(self) -> bool:
        """Whether `transcribe(prompt=...)` is used (Whisper's initial prompt); if not, a
        request with a prompt is refused rather than the hint silently dropped."""
        ...

    async def translate(
        self,
        audio: np.ndarray,
        *,
        temperature: float = 0.0,
        priority: int = 0,
    ) -> Transcription:
        """Translate 16 kHz mono float32 speech into English text (OpenAI's translations).
        Backbones that cannot raise `TranslationUnsupported` (before any work)."""
        ...

    async def describe(self, audio: np.ndarray, kind: str = "caption", *, priority: int = 0) -> str:
        """Describe 16 kHz mono float32 audio in words: "caption" (events) or
        "paralinguistic" (voices, emotion, background). Backbones that cannot raise
        `DescriptionUnsupported` before any work."""
        ...

    def synthesize(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        instructions: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[AudioChunk]:
        """Speak `text`; raises UnknownVoiceError before yielding for a voice it lacks.

        `instructions` says how to speak (style); backbones that cannot follow them ignore
        them and say so through `follows_instructions`.
        """
        ...

    def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        """Answer the conversation: TextDelta and AudioChunk as produced, then one ResponseEnd.

        Each TextDelta comes right before the audio that speaks it; ReasoningDelta (think mode)
        comes first and is never spoken; a ToolCall replaces the answer when the model calls a
        function. Closing or cancelling the iterator stops the work and aborts the engine
        request.
        """
        ...
