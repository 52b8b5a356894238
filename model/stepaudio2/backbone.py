"""The unified backbone: one Step-Audio-2 engine serves ASR, TTS and realtime dialogue.

All three are regimes of the same vLLM engine (see `regimes`): ASR is greedy and text-only, so
the engine's speculative decoding is verified token for token by the backbone; TTS and dialogue
prefill `<tts_start>` and stream interleaved text and speech codes, which the token2wav vocoder
turns into 24 kHz audio chunk by chunk while the LM is still generating. Realtime requests run at
a higher engine priority than REST work, in the engine and in the vocoder: either one thread
that runs each stream's chunks in priority order, or (`batched_vocoder`) the batched vocoder,
whose thread steps every stream with a chunk ready together, lower priority numbers first.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import Counter

from voxgate.model.engine import EngineConfig, EngineHost
from voxgate.model.memory import SUMMARY_INSTRUCTIONS, SUMMARY_TOKENS, summary_request, with_summary
from voxgate.model.startup import UNREPORTED, StartupStage, StartupStages
from voxgate.model.stepaudio2 import audio, budgets, parsing, regimes
from voxgate.model.stepaudio2.decoding import Decoder
from voxgate.model.stepaudio2.dialogue import DialogueWindow, think
from voxgate.model.stepaudio2.options import StepAudio2Options
from voxgate.model.stepaudio2.parsing import OutputSplitter
from voxgate.model.stepaudio2.regimes import Prompt, PromptWriter
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.stepaudio2.tool_calls import ToolCalls
from voxgate.model.stepaudio2.vocoding import SpeechStreamer, start_vocoder_scheduler
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AnswerBudget,
    AudioChunk,
    BackboneError,
    RequestRejected,
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    Segment,
    TextDelta,
    Transcription,
    Turn,
    TurnTrace,
    UnknownVoiceError,
    Voice,
)

if TYPE_CHECKING:
    from voxgate.model.stepaudio2.token2wav import VocoderScheduler

log = logging.getLogger(__name__)

TTS_CUT = Counter(
    "voxgate_tts_cut_at_budget",
    "Syntheses that reached their token budget (the text's reading time, within max_tts_s) "
    "before the model ended them: the speech may stop short of the text.",
)
HINT_REFUSED = (
    "a transcription prompt is not supported by this backbone: Step-Audio-2's published ASR "
    "prompt is a fixed instruction, and a hint added to it changes what the model does "
    "(it may follow or translate the hint)"
)


class StepAudio2Backbone:
    """The `Backbone` protocol over one engine: each request written in its regime's prompt,
    decoded (`Decoder`), voiced (`SpeechStreamer`) and its tool calls checked (`ToolCalls`)."""

    name = "stepaudio2"

    def __init__(
        self,
        engine: EngineHost,
        tokenizer: Any,
        vocoder: Any,
        options: StepAudio2Options,
        vocoder_scheduler: VocoderScheduler | None = None,
    ) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._tokens = TokenMap.from_tokenizer(tokenizer)
        self._writer = PromptWriter(tokenizer, self._tokens, options.audio_pieces_per_prompt)
        self._window = DialogueWindow(self._writer, tokenizer, options.context_tokens)
        self._vocoder = vocoder
        self._options = options
        names = vocoder.voices()
        if not names:
            raise BackboneError("the model has no voices (voices/*.npz)")
        self._default_voice = options.voice or names[0]
        if self._default_voice not in names:
            raise BackboneError(f"voice {self._default_voice!r} is not among {names}")
        self._voices = tuple(
            Voice(n, "multilingual", vocoder.sample_rate)
            for n in [self._default_voice, *(n for n in names if n != self._default_voice)]
        )
        self._decoder = Decoder(engine, tokenizer, self._tokens)
        self._speech = SpeechStreamer(self._decoder, vocoder, vocoder_scheduler)
        self._tool_calls = ToolCalls(self._decoder, self._writer)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        model_dir: Path,
        engine_config: EngineConfig,
        options: StepAudio2Options,
        stages: StartupStages = UNREPORTED,
    ) -> AsyncIterator[StepAudio2Backbone]:
        from transformers import AutoTokenizer

        from voxgate.model.stepaudio2 import register
        from voxgate.model.stepaudio2.token2wav import Token2Wav

        if not (model_dir / "config.json").is_file():
            raise BackboneError(f"{model_dir} is not a Step-Audio-2 model folder (no config.json)")
        register()  # this process reads the config and tokenizer too
        if options.vocoder_device == "cpu":
            import torch

            torch.set_num_threads(options.vocoder_threads)
        stages.begin(StartupStage.LOADING_MODELS)
        tokenizer, vocoder = await asyncio.gather(
            asyncio.to_thread(AutoTokenizer.from_pretrained, model_dir),
            asyncio.to_thread(Token2Wav.load, model_dir, options.vocoder_device),
        )
        # The checkpoint's own dtype (bfloat16 for the published weights) and a context that
        # holds the realtime budget, unless the operator chose otherwise.
        engine_config = engine_config.for_backbone("stepaudio2", options.context_tokens, "auto")
        stages.begin(StartupStage.STARTING_ENGINE)
        async with EngineHost.start(
            model_dir, engine_config, f"voxgate-{cls.name}", **options.engine_args()
        ) as engine:
            stages.begin(StartupStage.WARMING_UP)
            scheduler = None
            try:
                if options.vocoder_batched:
                    # After the engine: vLLM refuses to start while less than its share of the
                    # GPU's memory (gpu_memory_utilization) is free; the slots take gigabytes.
                    scheduler = await asyncio.to_thread(start_vocoder_scheduler, vocoder, options)
                backbone = cls(engine, tokenizer, vocoder, options, scheduler)
                try:
                    await backbone.warm_up()
                    yield backbone
                finally:
                    backbone._speech.shutdown()
            finally:
                if scheduler is not None:
                    scheduler.shutdown()

    async def warm_up(self) -> None:
        """One request per regime: compiles the n-gram proposer, loads the vocoder's caches."""
        await self.transcribe(np.zeros(INPUT_SAMPLE_RATE, dtype=np.float32))
        async for _ in self.synthesize("Hello.", voice=self._default_voice):
            pass

    # --- Backbone protocol ----------------------------------------------------------------

    @property
    def voices(self) -> Sequence[Voice]:
        return self._voices

    @property
    def is_healthy(self) -> bool:
        return self._engine.is_healthy

    @property
    def follows_instructions(self) -> bool:
        return True  # instructions go into the TTS regime's system prompt

    def _check_voice(self, voice: str) -> Any:
        try:
            return self._vocoder.voice(voice)
        except KeyError:
            raise UnknownVoiceError(voice, [v.name for v in self._voices]) from None

    async def transcribe(
        self,
        audio_16k: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        timestamps: Literal["none", "segment", "word"] = "none",
        priority: int = regimes.REALTIME_PRIORITY,
    ) -> Transcription:
        if prompt:
            raise RequestRejected(HINT_REFUSED)
        duration = len(audio_16k) / INPUT_SAMPLE_RATE
        if audio.num_audio_tokens(len(audio_16k)) < 2:
            return Transcription("", duration, language)
        request = self._writer.asr(audio_16k)
        params = self._decoder.params(
            regimes.ASR,
            max_tokens=32 + int(10 * duration),
            temperature=temperature,
            allowed=[*self._decoder.text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._decoder.generate(
            request, params, f"asr-{_rid()}", priority
        )
        segments = (Segment(0.0, duration, text),) if timestamps != "none" and text else ()
        return Transcription(text.strip(), duration, language, segments)

    @property
    def takes_transcription_prompt(self) -> bool:
        return False  # the published ASR prompt is fixed (see HINT_REFUSED)

    async def translate(
        self,
        audio_16k: np.ndarray,
        *,
        temperature: float = 0.1,
        priority: int = regimes.REST_PRIORITY,
    ) -> Transcription:
        """Speech into English text: the reference's S2TT prompt (its decoding: 0.1)."""
        return await self._understand(
            self._writer.translate, audio_16k, "English", temperature, priority, "translate"
        )

    async def describe(
        self, audio_16k: np.ndarray, kind: str = "caption", *, priority: int = regimes.REST_PRIORITY
    ) -> str:
        """What is heard, in words: "caption" (events) or "paralinguistic" (voice, emotion,
        background), with the reference's audio caption prompts."""
        if kind not in regimes.DESCRIBE_SYSTEM:
            raise RequestRejected(
                f"unknown description {kind!r}: {sorted(regimes.DESCRIBE_SYSTEM)}"
            )
        result = await self._understand(
            self._writer.describe, audio_16k, kind, regimes.UNDERSTAND.temperature, priority, kind
        )
        return result.text

    async def _understand(
        self,
        write: Any,
        audio_16k: np.ndarray,
        what: str,
        temperature: float,
        priority: int,
        name: str,
    ) -> Transcription:
        duration = len(audio_16k) / INPUT_SAMPLE_RATE
        if audio.num_audio_tokens(len(audio_16k)) < 2:
            return Transcription("", duration)
        longest = self._options.audio_pieces_per_prompt * audio.MAX_PIECE_SECONDS
        if duration > longest:
            # One prompt holds the whole clip: refuse rather than let the engine reject it.
            raise RequestRejected(
                f"{duration:.0f} s of audio is more than one prompt holds ({longest:.0f} s)"
            )
        request = await asyncio.to_thread(write, audio_16k, what)
        params = self._decoder.params(
            regimes.UNDERSTAND,
            max_tokens=64 + int(16 * duration),
            temperature=temperature,
            allowed=[*self._decoder.text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._decoder.generate(
            request, params, f"{name}-{_rid()}", priority
        )
        return Transcription(text.strip(), duration)

    async def synthesize(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        instructions: str | None = None,
        priority: int = regimes.REST_PRIORITY,
    ) -> AsyncIterator[AudioChunk]:
        speaker = self._check_voice(voice)
        style = instructions or ""
        if speed != 1.0:
            # Step-Audio-2 has no speed knob: it is asked for the pace, like any other style.
            style = f"{style}\nSpeak at {speed:g} times the normal speed.".strip()
        request = await asyncio.to_thread(self._writer.tts, text, style or None)
        params = self._decoder.params(regimes.TTS, max_tokens=self.tts_tokens(text, speed))
        stream = self._speech.stream(
            request, params, f"tts-{_rid()}", priority, speaker, TurnTrace()
        )
        async with aclosing(stream):
            async for item in stream:
                if isinstance(item, AudioChunk):
                    yield item
                elif isinstance(item, ResponseEnd) and item.finish_reason == "length":
                    # The audio is already on its way: say it in the log and the metrics.
                    TTS_CUT.inc()
                    log.warning(
                        "synthesis of %d characters was cut at its budget of %d tokens (%.0f s)",
                        len(text),
                        params.max_tokens,
                        budgets.speech_seconds(params.max_tokens),
                    )

    async def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        speaker = self._check_voice(options.voice) if options.audio else None
        if options.reasoning_tokens and not self.can_reason:
            raise BackboneError(
                "think mode needs a reasoning Step-Audio-2 (mini-Think, R1): "
                "set VOXGATE_STEPAUDIO2__THINK=on if this checkpoint is one"
            )
        system = with_summary(options.instructions, options.summary)
        offered = options.tools if options.tool_choice != "none" else ()
        window = DialogueWindow(
            self._writer, self._tokenizer, self._options.context_tokens, offered
        )
        request, start = await asyncio.to_thread(
            window.build_window, system, conversation, options.max_output_tokens, options.window
        )
        kept = conversation[start:]
        if offered and options.tool_choice != "auto":
            # A call is required: the model writes it at once, under the tool's grammar.
            call, end = await self._tool_calls.forced(system, kept, options)
            yield call
            yield replace(end, context_start=start)
            return
        if options.reasoning_tokens:
            trace.mark("lm_submit")
            thought = think(self._decoder, self._writer, request, options, trace)
            async with aclosing(thought):
                async for item in thought:
                    if isinstance(item, Prompt):
                        request = item  # the answer continues after the reasoning
                    else:
                        yield item
        if speaker is None:
            if request.token_ids[-1] == self._tokens.tts_start:
                request = Prompt(request.token_ids[:-1], request.audio, request.length - 1)
            params = self._decoder.params(
                regimes.REALTIME,
                max_tokens=options.max_output_tokens,
                allowed=[*self._decoder.text_ids, self._tokens.eot],
            )
            trace.mark("lm_submit")
            text, _codes, end = await self._decoder.generate(
                request, params, options.request_id, options.priority, trace
            )
            words, native = parsing.split_calls(text) if offered else (text, [])
            if words:
                yield TextDelta(words)
            if native:
                written = request.extended(self._writer.encode(words))
                for call in await self._tool_calls.checked(native, written, options):
                    yield call
            yield replace(end, context_start=start)
            return
        params = self._decoder.params(
            regimes.REALTIME, max_tokens=options.max_output_tokens, until_turn_end=bool(offered)
        )
        trace.mark("lm_submit")
        splitter = self._decoder.splitter()
        stream = self._speech.stream(
            request, params, options.request_id, options.priority, speaker, trace, splitter
        )
        async with aclosing(stream):
            async for item in stream:
                if not isinstance(item, ResponseEnd):
                    yield item
                    continue
                spoken = self._spoken(splitter)
                end = replace(item, context_start=start, spoken_tokens=spoken)
                _words, native = parsing.split_calls(splitter.after_speech)
                if offered and native:
                    written = request.extended(spoken)
                    for call in await self._tool_calls.checked(native, written, options):
                        yield call
                yield end

    def _spoken(self, splitter: OutputSplitter) -> array[int]:
        """The answer's ids up to `<tts_end>` (calls after it are written back by name), 4
        bytes each: a session may hold 200 answers of minutes of speech."""
        ids = splitter.ids
        if self._tokens.tts_end in ids:
            ids = ids[: ids.index(self._tokens.tts_end) + 1]
        return array("i", (t for t in ids if t != self._tokens.eot))

    @property
    def answer_budget(self) -> AnswerBudget:
        return AnswerBudget(
            default_tokens=budgets.speech_tokens(self._options.answer_s),
            max_tokens=budgets.speech_tokens(self._options.max_answer_s),
        )

    def tts_tokens(self, text: str, speed: float = 1.0) -> int:
        """The token budget of reading `text` aloud: its reading time, within `max_tts_s`."""
        seconds = min(self._options.reading_pace.seconds(text, speed), self._options.max_tts_s)
        return budgets.speech_tokens(seconds)

    @property
    def can_reason(self) -> bool:
        match self._options.think:
            case "on":
                return True
            case "off":
                return False
        name = self._engine.model_dir.name.lower()
        return self._tokens.think.are_tokens or "think" in name or "r1" in name

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        await asyncio.to_thread(self._window.check_instructions, instructions, max_output_tokens)

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        request = await asyncio.to_thread(
            self._writer.text_request, SUMMARY_INSTRUCTIONS, summary_request(summary, turns).text
        )
        params = self._decoder.params(
            regimes.ASR,
            max_tokens=SUMMARY_TOKENS,
            allowed=[*self._decoder.text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._decoder.generate(
            request, params, f"summary-{_rid()}", priority
        )
        return text.strip() or summary


def _rid() -> str:
    import uuid

    return uuid.uuid4().hex[:16]
