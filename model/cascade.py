"""The cascade backbone, the embedded CPU default: Whisper -> SmolLM2 on vLLM -> Piper.

All models install from the package registry (see `artifacts`). The LM's text is cut into
clauses as it streams and each clause is spoken as soon as it is complete, so the first audio
leaves while the LM is still generating.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from voxgate.model import artifacts, smollm2, tools
from voxgate.model.artifacts import PIPER_JOE, WHISPER_TINY_EN
from voxgate.model.asr import WhisperASR
from voxgate.model.clauses import ClauseSplitter, clean_for_speech
from voxgate.model.engine import EngineConfig, EngineHost
from voxgate.model.lm import ChatLM, SamplingConfig
from voxgate.model.memory import SUMMARY_INSTRUCTIONS, SUMMARY_TOKENS, summary_request, with_summary
from voxgate.model.startup import UNREPORTED, StartupStage, StartupStages
from voxgate.model.tts import PiperTTS
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    TEXT_ANSWER_BUDGET,
    AnswerBudget,
    AudioChunk,
    BackboneError,
    DescriptionUnsupported,
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    TextDelta,
    ToolCall,
    Transcription,
    TranslationUnsupported,
    Turn,
    TurnTrace,
    UnknownVoiceError,
    Voice,
)

log = logging.getLogger(__name__)

VOICE_NAME = "joe"
TOOL_DECISION_TOKENS = 512
"""Enough for a function name and its arguments as JSON."""

CLAUSE_QUEUE_SIZE = 16
"""Clauses waiting for TTS. When full, the LM reader waits (vLLM keeps the tokens)."""


class CascadeConfig(BaseModel):
    """Settings of the embedded CPU default (nested under `VOXGATE_CASCADE__*`)."""

    asr_threads: int = Field(2, ge=1)
    """CTranslate2 threads for one Whisper request."""
    asr_window_s: float | None = Field(15.0, ge=10, le=30)
    """Whisper's window for a turn shorter than it, in seconds (None: every turn padded to
    30 s). The encoder's work shrinks with it; below ~8 s Whisper tiny falls apart (see
    bench/README.md, `asr_window.py`)."""
    asr_beam_size: int = Field(1, ge=1)
    """1 (greedy) is ~2x faster than 5 on short turns, at a small accuracy cost."""
    tts_threads: int = Field(1, ge=1)
    context_tokens: int = Field(1536, ge=256)
    """Prompt + answer budget of a turn (the engine's max_model_len unless that is set)."""
    temperature: float = Field(0.3, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.1, gt=0)
    worker_priority: bool = True
    """Whisper and Piper serve waiting work in priority order (a live turn before queued REST
    work, as the engine does); False: in arrival order (to measure the difference)."""
    batch_nice: int | None = Field(10, ge=1, le=19)
    """REST work (priority above 0) runs on Whisper and Piper threads of their own at this OS
    nice value, so a live turn neither waits for it nor shares the cores with it evenly (a
    second Whisper, ~75 MB). None: one thread each, REST jobs only queue behind live ones.
    Ignored when `worker_priority` is off."""
    min_clause_words: int = Field(4, ge=1)
    """A clause mark (,;:) ends a spoken piece once it holds this many words."""

    @property
    def lane_nice(self) -> int | None:
        """The batch lanes' nice value, None for no batch lanes."""
        return self.batch_nice if self.worker_priority else None


def ensure_artifacts(home: Path, fetch_missing: bool) -> None:
    """Verify (and, if allowed, fetch) every model file the cascade loads."""
    for artifact in artifacts.CPU_DEFAULT:
        if fetch_missing:
            artifacts.fetch(artifact, home)
        artifacts.verify(artifact, home)
    if fetch_missing:
        smollm2.prepare(home)
    smollm2.verify(home)


class CascadeBackbone:
    name = "cascade"

    def __init__(
        self, engine: EngineHost, lm: ChatLM, asr: WhisperASR, tts: PiperTTS, config: CascadeConfig
    ) -> None:
        self._engine = engine
        self._lm = lm
        self._asr = asr
        self._tts = tts
        self._config = config
        self._sampling = SamplingConfig(config.temperature, config.top_p, config.repetition_penalty)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        home: Path,
        config: CascadeConfig,
        engine_config: EngineConfig,
        fetch_missing: bool,
        stages: StartupStages = UNREPORTED,
    ) -> AsyncIterator[CascadeBackbone]:
        engine_config = engine_config.for_backbone(
            "cascade", config.context_tokens, smollm2.engine_dtype(), reader_spin_s=0.0
        )
        log.info("the LM runs in %s", engine_config.dtype)
        stages.begin(StartupStage.VERIFYING_MODELS)
        await asyncio.to_thread(ensure_artifacts, home, fetch_missing)
        lm_dir = smollm2.hf_directory(home)
        stages.begin(StartupStage.STARTING_ENGINE)
        async with EngineHost.start(lm_dir, engine_config, f"voxgate-{cls.name}") as engine:
            stages.begin(StartupStage.LOADING_MODELS)
            lm, asr, tts = await asyncio.gather(
                asyncio.to_thread(ChatLM, engine, lm_dir, config.context_tokens),
                asyncio.to_thread(
                    WhisperASR,
                    WHISPER_TINY_EN.directory(home),
                    config.asr_threads,
                    config.asr_beam_size,
                    config.asr_window_s,
                    config.lane_nice,
                ),
                asyncio.to_thread(
                    PiperTTS,
                    VOICE_NAME,
                    PIPER_JOE.path(home, "en_US-joe-medium.onnx"),
                    PIPER_JOE.path(home, "en_US-joe-medium.onnx.json"),
                    config.tts_threads,
                    config.lane_nice,
                ),
            )
            try:
                backbone = cls(engine, lm, asr, tts, config)
                stages.begin(StartupStage.WARMING_UP)
                await backbone.warm_up()
                yield backbone
            finally:
                asr.close()
                tts.close()

    async def warm_up(self) -> None:
        """Run each model once so the first user does not pay for lazy initialisation
        (the first Whisper call is ~3x slower than the next, the first LM step too)."""
        await self._asr.transcribe(np.zeros(INPUT_SAMPLE_RATE, dtype=np.float32))
        async for _ in self._tts.synthesize("Hello."):
            pass
        prompt = self._lm.prompts.build("Say hi.", [], max_output_tokens=1)
        async for _ in self._lm.stream(
            prompt, request_id="warm-up", max_output_tokens=1, sampling=self._sampling
        ):
            pass

    @property
    def voices(self) -> Sequence[Voice]:
        return (self._tts.voice,)

    @property
    def is_healthy(self) -> bool:
        return self._engine.is_healthy

    def _check_voice(self, voice: str) -> None:
        if voice != self._tts.voice.name:
            raise UnknownVoiceError(voice, [self._tts.voice.name])

    @property
    def follows_instructions(self) -> bool:
        return False  # Piper has one way of speaking per voice

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
        # Whisper runs beside the engine on its own thread, in the same priority order.
        return await self._asr.transcribe(
            audio, language, prompt, temperature, timestamps, priority=self._worker_rank(priority)
        )

    @property
    def takes_transcription_prompt(self) -> bool:
        return True  # Whisper's initial prompt

    async def translate(
        self, audio: np.ndarray, *, temperature: float = 0.0, priority: int = 0
    ) -> Transcription:
        raise TranslationUnsupported(
            "speech translation needs a multilingual backbone (stepaudio2); this server's "
            "Whisper tiny.en hears English only"
        )

    async def describe(self, audio: np.ndarray, kind: str = "caption", *, priority: int = 0) -> str:
        raise DescriptionUnsupported(
            "audio description needs an audio-language backbone (stepaudio2)"
        )

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
        rank = self._worker_rank(priority)
        async for chunk in self._tts.synthesize(clean_for_speech(text), speed, rank):
            yield chunk

    async def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        if options.audio:
            self._check_voice(options.voice)
        if options.reasoning_tokens:
            raise BackboneError("think mode needs a backbone that can reason; SmolLM2 cannot")
        system = with_summary(options.instructions, options.summary)
        if options.tools and options.tool_choice != "none":
            call, end = await self._decide_tool(system, conversation, options)
            if call is not None:
                yield call
                yield end
                return
        prompt, start = await asyncio.to_thread(
            self._lm.prompts.build_window,
            system,
            conversation,
            options.max_output_tokens,
            options.window,
        )
        trace.mark("lm_submit")
        text = self._lm.stream(
            prompt,
            request_id=options.request_id,
            max_output_tokens=options.max_output_tokens,
            sampling=self._sampling,
            priority=options.priority,
        )
        if not options.audio:
            async with aclosing(text):
                async for item in text:
                    if isinstance(item, str):
                        trace.mark("lm_first_token")
                        yield TextDelta(item)
                    else:
                        trace.mark("lm_done")
                        yield replace(item, context_start=start)
            return

        clauses: asyncio.Queue[str | ResponseEnd | BaseException] = asyncio.Queue(CLAUSE_QUEUE_SIZE)
        producer = asyncio.create_task(self._split_clauses(text, clauses, trace))
        try:
            first = True
            while not isinstance(item := await clauses.get(), ResponseEnd):
                if isinstance(item, BaseException):
                    raise item
                yield TextDelta(item if first else " " + item)
                first = False
                rank = self._worker_rank(options.priority)
                async for chunk in self._tts.synthesize(item, options.speed, rank):
                    trace.mark("tts_first_chunk")
                    yield chunk
            yield replace(item, context_start=start)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _decide_tool(
        self, system: str, conversation: Sequence[Turn], options: ResponseOptions
    ) -> tuple[ToolCall | None, ResponseEnd]:
        """Ask the LM, under a JSON-schema grammar, whether to call a function (and how)."""
        prompt = await asyncio.to_thread(
            self._lm.prompts.build,
            f"{system}\n\n{tools.instructions(options.tools, options.tool_choice)}",
            conversation,
            TOOL_DECISION_TOKENS,
        )
        text, end = "", ResponseEnd("stop", len(prompt), 0)
        decision = self._lm.stream(
            prompt,
            request_id=f"{options.request_id}-tool",
            max_output_tokens=TOOL_DECISION_TOKENS,
            sampling=SamplingConfig(0.0, 1.0, 1.0),
            priority=options.priority,
            schema=tools.decision_schema(options.tools, options.tool_choice),
        )
        async with aclosing(decision):
            async for item in decision:
                if isinstance(item, str):
                    text += item
                else:
                    end = item
        try:
            return tools.parse_decision(text, options.tools), end
        except ValueError as e:
            if options.tool_choice != "auto":
                raise BackboneError(f"the model could not produce the required call: {e}") from e
            log.warning("no usable tool decision (%s); answering in words", e)
            return None, end

    @property
    def can_reason(self) -> bool:
        return False

    def _worker_rank(self, priority: int) -> int:
        return priority if self._config.worker_priority else 0

    @property
    def answer_budget(self) -> AnswerBudget:
        return TEXT_ANSWER_BUDGET

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        await asyncio.to_thread(
            self._lm.prompts.check_instructions, instructions, max_output_tokens
        )

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        prompt = await asyncio.to_thread(
            self._lm.prompts.render, SUMMARY_INSTRUCTIONS, [summary_request(summary, turns)]
        )
        text = ""
        stream = self._lm.stream(
            prompt,
            request_id=f"summary-{uuid.uuid4().hex[:12]}",
            max_output_tokens=SUMMARY_TOKENS,
            sampling=SamplingConfig(0.0, 1.0, 1.1),
            priority=priority,
        )
        async with aclosing(stream):
            async for item in stream:
                if isinstance(item, str):
                    text += item
        return text.strip() or summary

    async def _split_clauses(
        self,
        text: AsyncIterator[str | ResponseEnd],
        out: asyncio.Queue[str | ResponseEnd | BaseException],
        trace: TurnTrace,
    ) -> None:
        splitter = ClauseSplitter(min_clause_words=self._config.min_clause_words)
        try:
            async for item in text:
                if isinstance(item, ResponseEnd):
                    trace.mark("lm_done")
                    for clause in splitter.flush():
                        await self._put_clause(out, clause, trace)
                    await out.put(item)
                    return
                trace.mark("lm_first_token")
                for clause in splitter.push(item):
                    await self._put_clause(out, clause, trace)
        except Exception as e:  # handed to the consumer, which re-raises it
            await out.put(e)

    @staticmethod
    async def _put_clause(out: asyncio.Queue, clause: str, trace: TurnTrace) -> None:
        if spoken := clean_for_speech(clause).strip():
            trace.mark("first_clause")
            await out.put(spoken)
