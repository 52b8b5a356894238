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
import math
import time
from array import array
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, aclosing, asynccontextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import Counter
from pydantic import BaseModel, Field

from voxgate.model import tools
from voxgate.model.engine import EngineConfig, EngineHost
from voxgate.model.lm import PromptBuilder
from voxgate.model.memory import SUMMARY_INSTRUCTIONS, SUMMARY_TOKENS, summary_request, with_summary
from voxgate.model.priority import PriorityExecutor
from voxgate.model.startup import UNREPORTED, StartupStage, StartupStages
from voxgate.model.stepaudio2 import audio, budgets, parsing, regimes
from voxgate.model.stepaudio2.budgets import ReadingPace
from voxgate.model.stepaudio2.parsing import OutputSplitter, SpeechCodes, TextPiece
from voxgate.model.stepaudio2.regimes import Prompt, PromptWriter, Regime
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AnswerBudget,
    AudioChunk,
    BackboneError,
    ContextBudgetExceeded,
    ReasoningDelta,
    RequestRejected,
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    Segment,
    TextDelta,
    ToolCall,
    ToolSpec,
    Transcription,
    Turn,
    TurnTrace,
    UnknownVoiceError,
    Voice,
)

if TYPE_CHECKING:
    from voxgate.model.stepaudio2.token2wav import Token2Wav, VocoderScheduler

log = logging.getLogger(__name__)

TTS_CUT = Counter(
    "voxgate_tts_cut_at_budget",
    "Syntheses that reached their token budget (the text's reading time, within max_tts_s) "
    "before the model ended them: the speech may stop short of the text.",
)
TOOL_DECISION_TOKENS = 512
"""Longest arguments object a call may write."""
TOOL_NAME_TOKENS = 32
HINT_REFUSED = (
    "a transcription prompt is not supported by this backbone: Step-Audio-2's published ASR "
    "prompt is a fixed instruction, and a hint added to it changes what the model does "
    "(it may follow or translate the hint)"
)

SAMPLES_PER_CODE = 960
"""One speech code is 40 ms at 24 kHz (25 codes per second)."""
MAX_VOCODER_BATCH = 64
"""Streams one batched vocoder step takes at most: a CUDA graph is captured per padded batch
size up to it (1, 2, 4, ... 64); more ready streams wait for the next step."""
VOCODER_VOICES = 4
"""Voice prompts the batched vocoder keeps on the device; a stream in a fifth voice at once
runs alone (~0.4 GB per voice of a 6 s prompt at the published size in float32)."""


class StepAudio2Options(BaseModel):
    """Settings of the unified backbone (nested under `VOXGATE_STEPAUDIO2__*`)."""

    speculative: Literal["ngram", "none"] = "ngram"
    """Engine-wide speculative decoding. Lossless: drafts are verified by the backbone, so the
    greedy ASR regime's transcripts are identical with and without it."""
    num_speculative_tokens: int = Field(4, ge=1, le=8)
    prompt_lookup_max: int = Field(4, ge=1)
    prompt_lookup_min: int = Field(2, ge=1)
    context_tokens: int = Field(8192, ge=512)
    """Prompt + answer budget of a realtime turn (the engine's max_model_len unless that is
    set). Input audio counts 12.5 tokens a second, spoken output 31.25 (see `budgets`): the
    default holds a 60 s answer beside ~5 minutes of conversation audio."""
    answer_s: float = Field(60.0, gt=0)
    """A realtime answer's default length in seconds of speech (`max_output_tokens` a session
    starts with); a client may ask for less, or more up to `max_answer_s`."""
    max_answer_s: float = Field(180.0, gt=0)
    """The longest realtime answer any client may ask for ("inf"), in seconds of speech."""
    audio_pieces_per_prompt: int = Field(8, ge=1)
    """25 s pieces one prompt may carry (8 = 200 s)."""
    max_tts_s: float = Field(300.0, gt=0)
    """Cap on one synthesis, in seconds of speech; each request's own budget comes from its
    text (`reading_pace`)."""
    reading_pace: ReadingPace = ReadingPace()
    """How long a text may take to read, per script: sizes each synthesis' token budget."""
    voice: str | None = None
    """Default voice (the first in the model's voices/ folder if unset)."""
    think: Literal["auto", "on", "off"] = "auto"
    """Think mode. "auto": on when the vocabulary has think tokens (Step-Audio-R1.1) or the
    model folder's name says it reasons ("Think", "R1": Step-Audio-2-mini-Think writes its
    markers as text, so its vocabulary cannot tell)."""
    vocoder_device: str = "cpu"
    """torch device of the token2wav vocoder ("cuda" beside the engine on a GPU machine)."""
    vocoder_threads: int = Field(1, ge=1)
    """torch threads for the vocoder on CPU: one leaves the other core to the engine."""
    batched_vocoder: Literal["auto", "on", "off"] = "auto"
    """Run the live streams' vocoder chunks together: one thread steps every stream that has
    a chunk ready in one forward (`token2wav.VocoderScheduler`), replayed as CUDA graphs on
    CUDA. "auto": on when the vocoder runs on CUDA (one stream at a time is bound by kernel
    launches there); off on the CPU, where the static step costs ~20% more per stream than
    the per-stream path. Off: each stream's chunks run alone, on one thread in priority
    order. A stream's audio is the same either way, within float rounding."""
    vocoder_slots: int = Field(64, ge=1)
    """Streams the batched vocoder keeps on the device at once; a stream that finds every
    slot taken runs alone (the per-stream arithmetic, on the same thread). Preallocated at
    start, each slot holds a stream's caches for `answer_s` of speech (an answer that goes on
    longer continues alone): at the published size in float32 ~200 MB of DiT caches plus
    57 kB per token (voice prompt + 25 a second), ~300 MB per slot at the 60 s default,
    ~19 GB for 64 (half that in bfloat16)."""

    @property
    def vocoder_batched(self) -> bool:
        """Whether `batched_vocoder` is on for this `vocoder_device`."""
        if self.batched_vocoder == "auto":
            return self.vocoder_device.split(":")[0] == "cuda"
        return self.batched_vocoder == "on"

    def engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"limit_mm_per_prompt": {"audio": self.audio_pieces_per_prompt}}
        if self.speculative == "ngram":
            args["speculative_config"] = {
                "method": "ngram",
                "num_speculative_tokens": self.num_speculative_tokens,
                "prompt_lookup_max": self.prompt_lookup_max,
                "prompt_lookup_min": self.prompt_lookup_min,
            }
        return args


class DialogueWindow(PromptBuilder):
    """The bounded realtime context, in Step-Audio-2's prompt format."""

    def __init__(
        self,
        writer: PromptWriter,
        tokenizer: Any,
        context_tokens: int,
        tools: Sequence[ToolSpec] = (),
    ) -> None:
        super().__init__(tokenizer, context_tokens)
        self._writer = writer
        self._tools = tools
        """Offered to the model in its `tool_json_schemas` turn (this window is per request)."""

    def render(self, instructions: str, turns: Sequence[Turn]) -> Prompt:
        return self._writer.dialogue(instructions, turns, tools=self._tools)

    def size(self, prompt: Prompt) -> int:
        return prompt.length

    def fit_last_turn(self, instructions: str, turn: Turn, budget: int) -> Prompt:
        if turn.audio is None:
            return super().fit_last_turn(instructions, turn, budget)
        room = budget - self.render(instructions, [Turn(turn.role, "")]).length - 4
        if room < 1:
            raise ContextBudgetExceeded("the instructions alone exceed the context budget")
        # Keep the end of what the user said: 12.5 tokens per second of audio.
        keep = int(room / 12.5 * INPUT_SAMPLE_RATE)
        return self.render(instructions, [Turn(turn.role, turn.text, turn.audio[-keep:])])


def start_vocoder_scheduler(vocoder: Token2Wav, options: StepAudio2Options) -> VocoderScheduler:
    """The batched vocoder with its slots allocated and, on CUDA, its step captured as CUDA
    graphs, and the thread that steps it. Blocking (the capture takes seconds)."""
    from voxgate.model.stepaudio2.token2wav import BatchedVocoder, StepShapes, VocoderScheduler

    names = vocoder.voices()
    longest_prompt = max(len(vocoder.voice(name).prompt_tokens) for name in names)
    shapes = StepShapes(
        max_batch=min(options.vocoder_slots, MAX_VOCODER_BATCH),
        slots=options.vocoder_slots,
        context_tokens=longest_prompt + math.ceil(options.answer_s * budgets.CODES_PER_SECOND),
        voices=min(len(names), VOCODER_VOICES),
    )
    batched = BatchedVocoder(vocoder, shapes)
    captured = batched.capture()
    log.info(
        "batched vocoder: %d slots of %d tokens, up to %d streams a step, %s",
        shapes.slots,
        shapes.context_tokens,
        shapes.max_batch,
        f"CUDA graphs for {batched.captured}" if captured else "eager steps",
    )
    return VocoderScheduler(batched)


class _VocoderThreadStream:
    """One utterance on the per-stream vocoder, its chunks run on the vocoder thread in
    priority order (the path when `batched_vocoder` is off)."""

    def __init__(self, stream: Any, thread: PriorityExecutor, priority: int) -> None:
        self._stream = stream
        self._thread = thread
        self._priority = priority

    async def apush(self, codes: Sequence[int]) -> np.ndarray:
        return await self._thread.run(self._priority, self._stream.push, codes)

    async def afinish(self) -> np.ndarray:
        return await self._thread.run(self._priority, self._stream.finish)


class StepAudio2Backbone:
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
        self._text_ids = self._tokens.text_ids()
        # The vocoder runs on its own thread (heavy tensor work, never on the event loop), in
        # the engine's priority order: a live turn's audio is not queued behind REST synthesis.
        self._vocoder_thread = PriorityExecutor("token2wav")
        self._vocoder_scheduler = vocoder_scheduler
        """The batched vocoder's thread, which then runs every stream instead (the caller
        that passes it shuts it down)."""

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
                    backbone._vocoder_thread.shutdown()
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
        params = self._params(
            regimes.ASR,
            max_tokens=32 + int(10 * duration),
            temperature=temperature,
            allowed=[*self._text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._generate(request, params, f"asr-{_rid()}", priority)
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
        params = self._params(
            regimes.UNDERSTAND,
            max_tokens=64 + int(16 * duration),
            temperature=temperature,
            allowed=[*self._text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._generate(request, params, f"{name}-{_rid()}", priority)
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
        params = self._params(regimes.TTS, max_tokens=self.tts_tokens(text, speed))
        stream = self._speech(request, params, f"tts-{_rid()}", priority, speaker, TurnTrace())
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
            call, end = await self._forced_call(system, kept, options)
            yield call
            yield replace(end, context_start=start)
            return
        if options.reasoning_tokens:
            trace.mark("lm_submit")
            thought = self._think(request, options, trace)
            async with aclosing(thought):
                async for item in thought:
                    if isinstance(item, Prompt):
                        request = item  # the answer continues after the reasoning
                    else:
                        yield item
        if speaker is None:
            if request.token_ids[-1] == self._tokens.tts_start:
                request = Prompt(request.token_ids[:-1], request.audio, request.length - 1)
            params = self._params(
                regimes.REALTIME,
                max_tokens=options.max_output_tokens,
                allowed=[*self._text_ids, self._tokens.eot],
            )
            trace.mark("lm_submit")
            text, _codes, end = await self._generate(
                request, params, options.request_id, options.priority, trace
            )
            words, native = parsing.split_calls(text) if offered else (text, [])
            if words:
                yield TextDelta(words)
            if native:
                written = request.extended(self._writer.encode(words))
                for call in await self._checked_calls(native, written, options):
                    yield call
            yield replace(end, context_start=start)
            return
        params = self._params(
            regimes.REALTIME, max_tokens=options.max_output_tokens, until_turn_end=bool(offered)
        )
        trace.mark("lm_submit")
        splitter = OutputSplitter(self._tokenizer, self._tokens)
        stream = self._speech(
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
                    for call in await self._checked_calls(native, written, options):
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

    async def _think(
        self, request: Prompt, options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ReasoningDelta | Prompt]:
        """Think mode: reasoning first (streamed as text, never spoken), at most the budget;
        then yield the prompt the spoken answer continues from (reasoning closed)."""
        markers = self._tokens.think
        opening = self._writer.think_start()
        # The dialogue prompt ends `<|BOT|>assistant\n<tts_start>`: open the reasoning instead.
        base = Prompt(request.token_ids[:-1], request.audio, request.length - 1)
        prompt = base.extended(opening)
        params = self._params(
            regimes.REALTIME,
            max_tokens=options.reasoning_tokens,
            allowed=[*self._text_ids, *([markers.end_id] if markers.end_id is not None else [])],
        )
        if markers.end_id is not None:
            params.stop_token_ids = [markers.end_id]
        splitter = OutputSplitter(self._tokenizer, self._tokens)
        shown = 0
        thought = ""
        stream = self._engine.stream(
            prompt.token_ids,
            params,
            f"{options.request_id}-think",
            options.priority,
            prompt.multi_modal_data(),
        )
        async with aclosing(stream):
            async for output in stream:
                trace.mark("lm_first_token")
                splitter.push(output.outputs[0].token_ids)
                thought, ended = _before_marker(splitter.text, markers.end)
                # Hold back what could be the start of the end marker written as text.
                visible = len(thought) if ended else _safe_length(thought, markers.end)
                if visible > shown:
                    yield ReasoningDelta(thought[shown:visible])
                    shown = visible
                if ended:
                    break  # closing the stream aborts the request: reasoning is over
        if len(thought) > shown:
            yield ReasoningDelta(thought[shown:])
        # Reasoning over (or cut at its budget): close it and open the spoken answer.
        yield base.extended(self._writer.thought(thought))

    async def _checked_calls(
        self, native: list[parsing.NativeCall], written: Prompt, options: ResponseOptions
    ) -> list[ToolCall]:
        """The model's own calls, each checked against the offered tools; a call with an
        unknown name or arguments its schema refuses gets one retry under the tool's grammar,
        continuing from what the model said before it (`written`)."""
        calls = []
        by_name = {t.name: t for t in options.tools}
        for attempt in native:
            tool = by_name.get(attempt.name)
            if tool is not None and attempt.complete:
                try:
                    calls.append(tools.checked_call(tool, attempt.arguments))
                    continue
                except ValueError as e:
                    log.info("the model's call of %s is invalid (%s): retrying", tool.name, e)
            opened = written.extended(
                self._writer.encode(parsing.CALL_OPEN + parsing.CALL_KIND + "\n")
            )
            call, _end = await self._constrained_call(
                opened, options, tool.name if tool is not None else None
            )
            calls.append(call)
        return calls

    async def _forced_call(
        self, system: str, turns: Sequence[Turn], options: ResponseOptions
    ) -> tuple[ToolCall, ResponseEnd]:
        """tool_choice "required" or a name: the assistant turn opens with `<tool_call>`."""
        prompt = await asyncio.to_thread(
            self._writer.dialogue, system, turns, "call", options.tools
        )
        named = options.tool_choice if options.tool_choice != "required" else None
        return await self._constrained_call(prompt, options, named)

    async def _constrained_call(
        self, prompt: Prompt, options: ResponseOptions, name: str | None
    ) -> tuple[ToolCall, ResponseEnd]:
        """Finish a call opened by `prompt` (which ends `<tool_call>function\\n`): the name
        (one of the tools, when not given), then arguments under its JSON-schema grammar."""
        from vllm.sampling_params import StructuredOutputsParams

        names = [t.name for t in options.tools]
        used = 0
        if name is None:
            params = self._params(regimes.ASR, max_tokens=TOOL_NAME_TOKENS)
            params.structured_outputs = StructuredOutputsParams(choice=names)
            name, _codes, end = await self._generate(
                prompt, params, f"{options.request_id}-tool-name", options.priority
            )
            used += end.output_tokens
            name = name.strip()
        tool = next((t for t in options.tools if t.name == name), None)
        if tool is None:
            raise BackboneError(f"the model could not name one of the tools {names}")
        prompt = prompt.extended(self._writer.encode(f"{name}\n"))
        params = self._params(regimes.ASR, max_tokens=TOOL_DECISION_TOKENS)
        params.structured_outputs = StructuredOutputsParams(
            json=tool.parameters or {"type": "object"}
        )
        arguments, _codes, end = await self._generate(
            prompt, params, f"{options.request_id}-tool", options.priority
        )
        try:
            call = tools.checked_call(tool, arguments)
        except ValueError as e:
            raise BackboneError(f"the model could not produce a valid call: {e}") from e
        return call, replace(end, output_tokens=end.output_tokens + used)

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        request = await asyncio.to_thread(
            self._writer.text_request, SUMMARY_INSTRUCTIONS, summary_request(summary, turns).text
        )
        params = self._params(
            regimes.ASR, max_tokens=SUMMARY_TOKENS, allowed=[*self._text_ids, self._tokens.eot]
        )
        text, _codes, _end = await self._generate(request, params, f"summary-{_rid()}", priority)
        return text.strip() or summary

    # --- regimes on the engine ------------------------------------------------------------

    def _params(
        self,
        regime: Regime,
        *,
        max_tokens: int,
        temperature: float | None = None,
        allowed: list[int] | None = None,
        until_turn_end: bool = False,
    ) -> Any:
        """Sampling for `regime`. Speech stops at `<tts_end>` unless `until_turn_end`: with
        tools offered the model writes its calls after it, and stops at `<|EOT|>`."""
        from vllm import SamplingParams

        stops = [self._tokens.eot] if until_turn_end else [self._tokens.eot, self._tokens.tts_end]
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=regime.temperature if temperature is None else temperature,
            top_p=regime.top_p,
            repetition_penalty=regime.repetition_penalty,
            stop_token_ids=stops,
            allowed_token_ids=allowed,
            detokenize=False,  # we decode text ourselves; speech codes need no text at all
        )

    async def _generate(
        self,
        request: Prompt,
        params: Any,
        request_id: str,
        priority: int,
        trace: TurnTrace | None = None,
    ) -> tuple[str, list[int], ResponseEnd]:
        """Run one request to the end; its text, speech codes and usage."""
        splitter = OutputSplitter(self._tokenizer, self._tokens)
        codes: list[int] = []
        generated, finish = 0, "stop"
        async for output in self._engine.stream(
            request.token_ids, params, request_id, priority, request.multi_modal_data()
        ):
            completion = output.outputs[0]
            if trace is not None and completion.token_ids:
                trace.mark("lm_first_token")
            generated += len(completion.token_ids)
            for piece in splitter.push(completion.token_ids):
                if isinstance(piece, SpeechCodes):
                    codes += piece.codes
            finish = "length" if completion.finish_reason == "length" else finish
        if trace is not None:
            trace.mark("lm_done")
        splitter.finish()
        end = ResponseEnd(finish, request.length, generated, output_audio_tokens=len(codes))
        return splitter.text, codes, end

    def _open_vocoder(self, speaker: Any, priority: int) -> AbstractContextManager[Any]:
        """One utterance's vocoder, with `apush(codes)` and `afinish()` (audio out). Leaving
        it unfinished (a cancelled response) abandons the stream: a batched one gives back
        its slot."""
        if self._vocoder_scheduler is not None:
            return self._vocoder_scheduler.open(speaker, priority)
        stream = self._vocoder.stream(speaker)
        return nullcontext(_VocoderThreadStream(stream, self._vocoder_thread, priority))

    async def _speech(
        self,
        request: Prompt,
        params: Any,
        request_id: str,
        priority: int,
        speaker: Any,
        trace: TurnTrace,
        splitter: OutputSplitter | None = None,
    ) -> AsyncIterator[ResponseOutput]:
        """Stream an answer with speech: text is released with the audio that speaks it.
        `splitter` (given) keeps what the model wrote, for the caller to read at the end."""
        splitter = splitter or OutputSplitter(self._tokenizer, self._tokens)
        with self._open_vocoder(speaker, priority) as vocoder:
            held: list[tuple[int, str]] = []  # (speech codes before this text, text)
            codes_seen = samples_out = generated = 0
            finish = "stop"

            def release(upto_codes: int) -> list[TextDelta]:
                out = [TextDelta(t) for before, t in held if before <= upto_codes]
                held[:] = [(before, t) for before, t in held if before > upto_codes]
                return out

            stream = self._engine.stream(
                request.token_ids, params, request_id, priority, request.multi_modal_data()
            )
            async for output in stream:
                completion = output.outputs[0]
                if completion.token_ids:
                    trace.mark("lm_first_token")
                generated += len(completion.token_ids)
                finish = "length" if completion.finish_reason == "length" else finish
                for piece in splitter.push(completion.token_ids):
                    if isinstance(piece, TextPiece):
                        held.append((codes_seen, piece.text))
                        continue
                    codes_seen += len(piece.codes)
                    pushed_at = time.monotonic()
                    wave = await vocoder.apush(piece.codes)
                    if len(wave):
                        # The LM's share of the first audio ends when the vocoder
                        # had enough codes.
                        trace.mark("first_clause", pushed_at)
                        trace.mark("tts_first_chunk")
                        samples_out += len(wave)
                        for delta in release(samples_out // SAMPLES_PER_CODE):
                            yield delta
                        yield AudioChunk(wave, self._vocoder.sample_rate)
            trace.mark("lm_done")
            if tail := splitter.finish():
                held.append((codes_seen, tail))
            wave = await vocoder.afinish()
            for delta in release(codes_seen):
                yield delta
            if len(wave):
                trace.mark("tts_first_chunk")
                yield AudioChunk(wave, self._vocoder.sample_rate)
            yield ResponseEnd(finish, request.length, generated, output_audio_tokens=codes_seen)


def _rid() -> str:
    import uuid

    return uuid.uuid4().hex[:16]


def _before_marker(text: str, marker: str) -> tuple[str, bool]:
    """`text` up to `marker` (the end of reasoning written as text), and whether it came."""
    at = text.find(marker)
    return (text, False) if at < 0 else (text[:at], True)


def _safe_length(text: str, marker: str) -> int:
    """How much of `text` can be shown: all but a tail that may be the start of `marker`."""
    for keep in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)
