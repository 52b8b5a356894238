"""The unified backbone: one Step-Audio-2 engine serves ASR, TTS and realtime dialogue.

All three are regimes of the same vLLM engine (see `regimes`): ASR is greedy and text-only, so
the engine's speculative decoding is verified token for token by the backbone; TTS and dialogue
prefill `<tts_start>` and stream interleaved text and speech codes, which the token2wav vocoder
turns into 24 kHz audio chunk by chunk while the LM is still generating. Realtime requests run at
a higher engine priority than REST work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from voxgate.model import tools
from voxgate.model.engine import EngineConfig, EngineHost
from voxgate.model.lm import PromptBuilder
from voxgate.model.memory import SUMMARY_INSTRUCTIONS, SUMMARY_TOKENS, summary_request, with_summary
from voxgate.model.priority import PriorityExecutor
from voxgate.model.stepaudio2 import audio, budgets, regimes
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
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    Segment,
    TextDelta,
    ToolCall,
    Transcription,
    Turn,
    TurnTrace,
    UnknownVoiceError,
    Voice,
)

log = logging.getLogger(__name__)

TOOL_DECISION_TOKENS = 512

SAMPLES_PER_CODE = 960
"""One speech code is 40 ms at 24 kHz (25 codes per second)."""


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
    vocoder_device: str = "cpu"
    """torch device of the token2wav vocoder ("cuda" beside the engine on a GPU machine)."""
    vocoder_threads: int = Field(1, ge=1)
    """torch threads for the vocoder on CPU: one leaves the other core to the engine."""

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

    def __init__(self, writer: PromptWriter, tokenizer: Any, context_tokens: int) -> None:
        super().__init__(tokenizer, context_tokens)
        self._writer = writer

    def render(self, instructions: str, turns: Sequence[Turn]) -> Prompt:
        return self._writer.dialogue(instructions, turns)

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


class StepAudio2Backbone:
    name = "stepaudio2"

    def __init__(
        self, engine: EngineHost, tokenizer: Any, vocoder: Any, options: StepAudio2Options
    ) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._tokens = TokenMap.from_tokenizer(tokenizer)
        self._writer = PromptWriter(tokenizer, self._tokens)
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

    @classmethod
    @asynccontextmanager
    async def start(
        cls, model_dir: Path, engine_config: EngineConfig, options: StepAudio2Options
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
        tokenizer, vocoder = await asyncio.gather(
            asyncio.to_thread(AutoTokenizer.from_pretrained, model_dir),
            asyncio.to_thread(Token2Wav.load, model_dir, options.vocoder_device),
        )
        # The checkpoint's own dtype (bfloat16 for the published weights) and a context that
        # holds the realtime budget, unless the operator chose otherwise.
        engine_config = engine_config.for_backbone("stepaudio2", options.context_tokens, "auto")
        async with EngineHost.start(
            model_dir, engine_config, f"voxgate-{cls.name}", **options.engine_args()
        ) as engine:
            backbone = cls(engine, tokenizer, vocoder, options)
            try:
                await backbone.warm_up()
                yield backbone
            finally:
                backbone._vocoder_thread.shutdown()

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
        duration = len(audio_16k) / INPUT_SAMPLE_RATE
        if audio.num_audio_tokens(len(audio_16k)) < 2:
            return Transcription("", duration, language)
        request = self._writer.asr(audio_16k, hint=prompt)
        params = self._params(
            regimes.ASR,
            max_tokens=32 + int(10 * duration),
            temperature=temperature,
            allowed=[*self._text_ids, self._tokens.eot],
        )
        text, _codes, _end = await self._generate(request, params, f"asr-{_rid()}", priority)
        segments = (Segment(0.0, duration, text),) if timestamps != "none" and text else ()
        return Transcription(text.strip(), duration, language, segments)

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
        request = self._writer.tts(text, style or None)
        params = self._params(regimes.TTS, max_tokens=self.tts_tokens(text, speed))
        stream = self._speech(request, params, f"tts-{_rid()}", priority, speaker, TurnTrace())
        async with aclosing(stream):
            async for item in stream:
                if isinstance(item, AudioChunk):
                    yield item

    async def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        speaker = self._check_voice(options.voice) if options.audio else None
        if options.reasoning_tokens and not self.can_reason:
            raise BackboneError("think mode needs the Think variant of Step-Audio-2 (<think>)")
        system = with_summary(options.instructions, options.summary)
        request, start = await asyncio.to_thread(
            self._window.build_window,
            system,
            conversation,
            options.max_output_tokens,
            options.window,
        )
        kept = conversation[start:]
        if options.tools and options.tool_choice != "none":
            call, end = await self._decide_tool(system, kept, options)
            if call is not None:
                yield call
                yield replace(end, context_start=start)
                return
        if options.reasoning_tokens:
            trace.mark("lm_submit")
            thought = self._think(system, kept, options, trace)
            async with aclosing(thought):
                async for item in thought:
                    if isinstance(item, Prompt):
                        request = item  # the answer continues after the reasoning
                    else:
                        yield item
        if speaker is None:
            request.token_ids = request.token_ids[:-1]  # no <tts_start>: a text answer
            params = self._params(
                regimes.REALTIME,
                max_tokens=options.max_output_tokens,
                allowed=[*self._text_ids, self._tokens.eot],
            )
            trace.mark("lm_submit")
            text, _codes, end = await self._generate(
                request, params, options.request_id, options.priority, trace
            )
            if text:
                yield TextDelta(text)
            yield replace(end, context_start=start)
            return
        params = self._params(regimes.REALTIME, max_tokens=options.max_output_tokens)
        trace.mark("lm_submit")
        stream = self._speech(request, params, options.request_id, options.priority, speaker, trace)
        async with aclosing(stream):
            async for item in stream:
                yield replace(item, context_start=start) if isinstance(item, ResponseEnd) else item

    @property
    def answer_budget(self) -> AnswerBudget:
        return AnswerBudget(
            default_tokens=budgets.speech_tokens(self._options.answer_s),
            max_tokens=budgets.speech_tokens(self._options.max_answer_s),
            seconds_per_token=1 / budgets.TOKENS_PER_SECOND,
        )

    def tts_tokens(self, text: str, speed: float = 1.0) -> int:
        """The token budget of reading `text` aloud: its reading time, within `max_tts_s`."""
        seconds = min(self._options.reading_pace.seconds(text, speed), self._options.max_tts_s)
        return budgets.speech_tokens(seconds)

    @property
    def can_reason(self) -> bool:
        return self._tokens.think is not None and self._tokens.think_end is not None

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        await asyncio.to_thread(self._window.check_instructions, instructions, max_output_tokens)

    async def _think(
        self, system: str, turns: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ReasoningDelta | Prompt]:
        """Think mode: reasoning first (streamed as text, never spoken), at most the budget;
        then yield the prompt the spoken answer continues from (reasoning closed)."""
        prompt = await asyncio.to_thread(self._writer.dialogue, system, turns, "think")
        end_think = self._tokens.think_end
        assert end_think is not None
        params = self._params(
            regimes.REALTIME,
            max_tokens=options.reasoning_tokens,
            allowed=[*self._text_ids, end_think],
        )
        params.stop_token_ids = [end_think]
        splitter = OutputSplitter(self._tokenizer, self._tokens)
        thought: list[int] = []
        async for output in self._engine.stream(
            prompt.token_ids,
            params,
            f"{options.request_id}-think",
            options.priority,
            prompt.multi_modal_data(),
        ):
            ids = [t for t in output.outputs[0].token_ids if t != end_think]
            trace.mark("lm_first_token")
            thought += ids
            for piece in splitter.push(ids):
                if isinstance(piece, TextPiece):
                    yield ReasoningDelta(piece.text)
        if tail := splitter.finish():
            yield ReasoningDelta(tail)
        # Reasoning over (or cut at its budget): close it and open the spoken answer.
        answer = Prompt(
            token_ids=[
                *prompt.token_ids,
                *thought,
                end_think,
                *self._writer.encode("\n"),
                self._tokens.tts_start,
            ],
            audio=prompt.audio,
            length=prompt.length + len(thought) + 3,
        )
        yield answer

    async def _decide_tool(
        self, system: str, turns: Sequence[Turn], options: ResponseOptions
    ) -> tuple[ToolCall | None, ResponseEnd]:
        """The model's choice of function (or none), written under a JSON-schema grammar."""
        from vllm.sampling_params import StructuredOutputsParams

        prompt = await asyncio.to_thread(
            self._writer.dialogue,
            f"{system}\n\n{tools.instructions(options.tools, options.tool_choice)}",
            turns,
            "text",
        )
        params = self._params(regimes.ASR, max_tokens=TOOL_DECISION_TOKENS)
        params.structured_outputs = StructuredOutputsParams(
            json=tools.decision_schema(options.tools, options.tool_choice)
        )
        text, _codes, end = await self._generate(
            prompt, params, f"{options.request_id}-tool", options.priority
        )
        try:
            return tools.parse_decision(text, options.tools), end
        except ValueError as e:
            if options.tool_choice != "auto":
                raise BackboneError(f"the model could not produce the required call: {e}") from e
            log.warning("no usable tool decision (%s); answering in words", e)
            return None, end

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
    ) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=regime.temperature if temperature is None else temperature,
            top_p=regime.top_p,
            repetition_penalty=regime.repetition_penalty,
            stop_token_ids=[self._tokens.eot, self._tokens.tts_end],
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

    async def _speech(
        self,
        request: Prompt,
        params: Any,
        request_id: str,
        priority: int,
        speaker: Any,
        trace: TurnTrace,
    ) -> AsyncIterator[ResponseOutput]:
        """Stream an answer with speech: text is released with the audio that speaks it."""
        splitter = OutputSplitter(self._tokenizer, self._tokens)
        vocoder = self._vocoder.stream(speaker)
        held: list[tuple[int, str]] = []  # (speech codes before this text, text)
        codes_seen = samples_out = generated = 0
        finish = "stop"

        def release(upto_codes: int) -> list[TextDelta]:
            out = [TextDelta(t) for before, t in held if before <= upto_codes]
            held[:] = [(before, t) for before, t in held if before > upto_codes]
            return out

        async for output in self._engine.stream(
            request.token_ids, params, request_id, priority, request.multi_modal_data()
        ):
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
                wave = await self._vocoder_thread.run(priority, vocoder.push, piece.codes)
                if len(wave):
                    # The LM's share of the first audio ends when the vocoder had enough codes.
                    trace.mark("first_clause", pushed_at)
                    trace.mark("tts_first_chunk")
                    samples_out += len(wave)
                    for delta in release(samples_out // SAMPLES_PER_CODE):
                        yield delta
                    yield AudioChunk(wave, self._vocoder.sample_rate)
        trace.mark("lm_done")
        if tail := splitter.finish():
            held.append((codes_seen, tail))
        wave = await self._vocoder_thread.run(priority, vocoder.finish)
        for delta in release(codes_seen):
            yield delta
        if len(wave):
            trace.mark("tts_first_chunk")
            yield AudioChunk(wave, self._vocoder.sample_rate)
        yield ResponseEnd(finish, request.length, generated, output_audio_tokens=codes_seen)


def _rid() -> str:
    import uuid

    return uuid.uuid4().hex[:16]
