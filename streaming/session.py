"""The per-connection realtime session: conversation, input buffer, turns, responses.

The server calls one method per client event (`append_audio`, `commit`, `create_response`, ...)
and forwards `events` to the client. Methods that refuse a request raise `SessionRejected`,
which the server maps to an `error` event; the session stays usable. Nothing refused reaches the
backbone.

Concurrency: the server's reader calls the methods one at a time. Work that outlives a method
(ASR of a turn, a response) runs in tasks owned by the session and ended by `close()`. A
response is stopped by cancelling its task; the task then reports `response.done` itself. A
task that fails unexpectedly is logged and reported to the client as an `error` event: nothing
fails silently, leaving the client waiting.

Bounds (`SessionLimits`): every text a client hands over is capped in characters
(`string_above_max_length`), a conversation's client-added text together too
(`conversation_too_large`), instructions in tokens against the model's context
(`context_length_exceeded`, checked by the backbone in a thread when they are set), and
out-of-band responses in number, per session and over the server (`response_limit_reached`).
Each is refused before anything reaches the backbone. A session keeps nothing outside itself:
its context window (`ContextWindow`) goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from voxgate.model.backbone import Backbone
from voxgate.model.memory import SUMMARY_PRIORITY
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    BackboneError,
    ContextWindow,
    ReasoningDelta,
    ResponseEnd,
    ResponseOptions,
    Role,
    TextDelta,
    ToolCall,
    ToolSpec,
    Transcription,
    Turn,
    TurnTrace,
    UnknownVoiceError,
)
from voxgate.model.voices import VoiceBook
from voxgate.streaming import audio
from voxgate.streaming.audio import AudioFormat, AudioFormatError, InputDecoder, OutputEncoder
from voxgate.streaming.config import SessionConfig, SessionLimits, TurnDetection
from voxgate.streaming.denoise import NoiseSuppressor
from voxgate.streaming.echo import EchoGuard
from voxgate.streaming.events import (
    CancelReason,
    ErrorReported,
    FunctionCallArgumentsDelta,
    InputCleared,
    InputCommitted,
    InputTranscribed,
    InputTranscriptionFailed,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemRetrieved,
    ItemStatus,
    ItemTruncated,
    OutputAudioDelta,
    OutputItemFinished,
    OutputItemStarted,
    OutputTextDelta,
    ReasoningDeltaEvent,
    ReasoningDone,
    Response,
    ResponseFinished,
    ResponseStarted,
    ResponseStatus,
    SessionConfigured,
    SessionEvent,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    SummaryUpdated,
)
from voxgate.streaming.slots import Slots
from voxgate.streaming.turns import (
    InputAudioBuffer,
    InputBufferFull,
    SpeechResumed,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnMayEnd,
)
from voxgate.streaming.vad import SileroVad, SpeechStarted, SpeechStopped

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
"""A commit needs at least this much audio (as OpenAI's API requires)."""
SEMANTIC_EARLY_MS = 200
"""Silence after which semantic end of turn looks at the words so far."""
TRAILING_WORDS = frozenset(
    {"and", "but", "or", "so", "because", "um", "uh", "er", "like", "then", "the", "a", "to"}
)
"""A thought that ends on one of these is not finished: wait longer for the rest."""


class EventQueue(asyncio.Queue[SessionEvent]):
    """The session's bounded outbox, which can also take back what is no longer worth sending."""

    def purge(self, stale: Callable[[SessionEvent], bool]) -> list[SessionEvent]:
        """Take back queued events for which `stale(event)` is true (in order); wake senders
        waiting for room."""
        queued = list(self._queue)  # type: ignore[attr-defined]
        taken = [event for event in queued if stale(event)]
        self._queue.clear()  # type: ignore[attr-defined]
        self._queue.extend(event for event in queued if not stale(event))  # type: ignore[attr-defined]
        for _ in taken:
            self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return taken


def older_voices_kept(voices: int, limit: int) -> int:
    """How many of the `voices` user turns kept as audio stay so when a new one arrives.

    They are dropped in a block, not one per turn: when the new voice would pass `limit`, only
    the newest `limit // 2` stay. A turn that goes from audio to transcript changes the prompt
    from that turn on, so dropping one per turn would make every prompt differ from the last
    one there (vLLM's prefix cache then reuses only what comes before); in a block, the prompt
    changes there once every `limit // 2` turns. bench/stepaudio2_prompts.py measures it."""
    if voices + 1 <= limit:
        return voices
    return max(0, limit // 2 - 1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


class SessionRejected(Exception):
    """A client request the session refuses; it maps to an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(slots=True)
class ResponseRequest:
    """`response.create` in domain terms; None fields take the session's value."""

    instructions: str | None = None
    audio_output: bool | None = None
    voice: str | None = None
    output_format: AudioFormat | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    in_conversation: bool = True
    input_items: list[Item] | None = None
    """Context for this response instead of the conversation."""
    metadata: dict[str, str] | None = None
    provisional: Item | None = None
    """A user turn not yet committed that this (speculative) answer replies to."""
    tools: tuple[ToolSpec, ...] | None = None
    tool_choice: str | None = None
    reasoning_effort: str | None = None


@dataclass(slots=True)
class _Running:
    response: Response
    task: asyncio.Task[None]


def _too_long(param: str, text: str, limit: int) -> SessionRejected:
    return SessionRejected(
        "string_above_max_length",
        f"{param} has {len(text)} characters; this server takes at most {limit}",
        param,
    )


@dataclass(slots=True)
class _Speech:
    """The user's current turn, between speech_started and commit."""

    item_id: str
    trace: TurnTrace = field(default_factory=TurnTrace)


@dataclass(slots=True)
class _Speculation:
    """Work started on a turn that has probably ended (speculative start): adopted when the
    turn does end, dropped if the user goes on."""

    speech: _Speech
    audio: np.ndarray
    trace: TurnTrace
    transcribed: asyncio.Task[Transcription | None]
    response: Response | None = None
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Pause:
    """An answer held back by a possible interruption until the user's words are known."""

    running: _Running
    item_id: str


class RealtimeSession:
    def __init__(
        self,
        backbone: Backbone,
        vad_factory: Callable[[], SileroVad],
        config: SessionConfig,
        limits: SessionLimits,
        out_of_band_slots: Slots | None = None,
        voices: VoiceBook | None = None,
        noise_suppressor: Callable[[], NoiseSuppressor] | None = None,
    ) -> None:
        self._backbone = backbone
        self._voices = voices or VoiceBook(backbone.voices)
        """The backbone's voices and their aliases: a session keeps the name its client chose."""
        self._vad_factory = vad_factory
        self._limits = limits
        self._out_of_band_slots = out_of_band_slots or Slots(limits.max_out_of_band_responses)
        """Out-of-band responses over the whole server (a session's own cap is in limits)."""
        self._out_of_band: dict[str, _Running] = {}
        """Out-of-band responses of this session running now, by response id."""
        self._new_denoiser = noise_suppressor
        """Makes this session's noise suppressor, when the server has one switched on."""
        self._denoiser: NoiseSuppressor | None = None
        self._window = ContextWindow()
        """Where this conversation's prompts start (the backbone moves it; see model.lm)."""
        self.id = new_id("conv")
        self.config = config
        self.events = EventQueue(limits.event_queue_size)
        self.items: list[Item] = []
        self._buffer = InputAudioBuffer(limits.max_buffer_seconds)
        self._decoder = InputDecoder(config.input_format)
        self._vad: SileroVad | None = None
        self._detector: TurnDetector | None = None
        self._speech: _Speech | None = None
        self._running: _Running | None = None
        self._unanswered: TurnTrace | None = None
        """The trace of the last committed turn no response has answered yet."""
        self._answer_pending: TurnTrace | None = None
        """The trace of a turn to answer once the running response ends."""
        self._answering: set[asyncio.Task[None]] = set()
        """Turns waiting for their transcript before they are answered."""
        self._transcribing: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._echo: EchoGuard | None = None
        self._echo_decoders: dict[str, InputDecoder] = {}
        self._detector_lock = asyncio.Lock()
        """Held while the VAD runs (in a thread) or while the session ends a turn itself."""
        self._speculation: _Speculation | None = None
        self._pause: _Pause | None = None
        self._summary = ""
        """What the conversation said before its oldest item still kept (compacted memory)."""
        self._folding: asyncio.Task[None] | None = None

    # --- configuration --------------------------------------------------------------------

    async def start(self) -> None:
        """Apply the initial configuration and announce it (session.created)."""
        await self._apply(self.config)
        await self._emit(SessionConfigured(self.config, created=True))

    @property
    def limits(self) -> SessionLimits:
        return self._limits

    async def configure(self, config: SessionConfig) -> None:
        """session.update: all of `config` applies, or none of it (SessionRejected)."""
        if config.instructions != self.config.instructions or (
            config.max_output_tokens != self.config.max_output_tokens
        ):
            await self._check_instructions(
                config.instructions, config.max_output_tokens, "session.instructions"
            )
        await self._apply(config)
        await self._emit(SessionConfigured(config, created=False))

    async def _check_instructions(
        self, instructions: str, max_output_tokens: int | Literal["inf"] | None, param: str
    ) -> None:
        """Instructions must be short enough in characters, and fit the model's context in
        tokens beside the answer (counted by the backbone, in a thread)."""
        if len(instructions) > self._limits.max_instructions_chars:
            raise _too_long(param, instructions, self._limits.max_instructions_chars)
        try:
            await self._backbone.check_instructions(
                instructions, self._max_tokens(max_output_tokens)
            )
        except BackboneError as e:
            raise SessionRejected(e.code, str(e), param) from e

    def _max_tokens(self, wanted: int | Literal["inf"] | None) -> int:
        """An answer's token budget: what was asked, within the server's cap ("inf": the cap)."""
        cap = self._limits.answer_cap(self._backbone.answer_budget)
        return cap if wanted in (None, "inf") else min(int(wanted), cap)

    async def report_error(self, error: ErrorReported) -> None:
        """Queue an error for the client in order with everything else the session says."""
        await self._emit(error)

    def _check_voice(self, voice: str, param: str) -> None:
        try:
            self._voices.resolve(voice)
        except UnknownVoiceError as e:
            raise SessionRejected("invalid_value", str(e), param) from e

    def _check_transcription_prompt(self, prompt: str | None) -> None:
        if prompt and not self._backbone.takes_transcription_prompt:
            raise SessionRejected(
                "unsupported_parameter",
                f"the {self._backbone.name} backbone takes no transcription prompt: its "
                "published ASR instruction is fixed, and a hint would change what it does",
                "session.audio.input.transcription.prompt",
            )

    def _check_reasoning(self, effort: str | None, param: str) -> None:
        if effort is not None and not self._backbone.can_reason:
            raise SessionRejected(
                "unsupported_feature",
                f"think mode (reasoning) needs a backbone that can reason; "
                f"{self._backbone.name} cannot",
                param,
            )

    async def _apply(self, config: SessionConfig) -> None:
        self._check_voice(config.voice, "session.audio.output.voice")
        self._check_reasoning(config.reasoning_effort, "session.reasoning")
        if config.transcription is not None:
            self._check_transcription_prompt(config.transcription.prompt)
        if config.input_format != self.config.input_format:
            self._decoder = InputDecoder(config.input_format)
        if config.turn_detection != self.config.turn_detection or self._detector is None:
            await self._set_turn_detection(config.turn_detection)
        self._set_noise_reduction(config.noise_reduction is not None)
        self.config = config

    def _set_noise_reduction(self, on: bool) -> None:
        if on and self._denoiser is None and self._new_denoiser is not None:
            self._denoiser = self._new_denoiser()
        elif not on and self._denoiser is not None:
            self._denoiser.close()
            self._denoiser = None

    async def _set_turn_detection(self, detection: TurnDetection | None) -> None:
        if detection is None:
            self._detector = None
            return
        if self._vad is None:
            self._vad = await asyncio.to_thread(self._vad_factory)
        self._detector = TurnDetector(self._vad, detection.vad, self._buffer)
        if detection.echo_guard:
            self._echo = self._echo or EchoGuard()
            self._detector.echo = self._echo
        else:
            self._echo = None
        # Semantic end of turn needs the words of a pause too, so it listens early as well.
        early = detection.speculative_start_ms
        if early is None and detection.eagerness is not None:
            early = SEMANTIC_EARLY_MS
        self._detector.early_ms = early

    # --- input audio ----------------------------------------------------------------------

    async def append_audio(self, data: bytes, arrived_at: float | None = None) -> None:
        """input_audio_buffer.append; `arrived_at` (monotonic) is when the message was read."""
        # Refuse what cannot fit before the decoder's resampler has seen any of it.
        fmt = self._decoder.format
        arriving = len(data) // fmt.bytes_per_sample * INPUT_SAMPLE_RATE // fmt.sample_rate
        fits = self._buffer.has_room if self._detector is None else self._buffer.fits
        if not fits(arriving):
            raise SessionRejected(
                "input_audio_buffer_full", str(InputBufferFull(self._buffer.max_seconds)), "audio"
            )
        try:
            samples = self._decoder.feed(data)
        except AudioFormatError as e:
            raise SessionRejected("invalid_audio", str(e), "audio") from e
        try:
            if self._detector is None:
                if self._denoiser is not None:
                    samples = await asyncio.to_thread(self._denoiser.process, samples)
                self._buffer.append(samples, arrived_at)
                return
            async with self._detector_lock:
                self._tune_interruptions()
                events = await asyncio.to_thread(self._hear, samples, arrived_at)
        except InputBufferFull as e:
            raise SessionRejected("input_audio_buffer_full", str(e), "audio") from e
        for event in events:
            await self._on_turn_event(event)

    def _hear(self, samples: np.ndarray, arrived_at: float | None) -> list[TurnEvent]:
        """Input audio through the noise suppressor (if on) and the turn detector (a thread)."""
        assert self._detector is not None
        if self._denoiser is not None:
            samples = self._denoiser.process(samples)
        return self._detector.feed(samples, arrived_at)

    def _tune_interruptions(self) -> None:
        """While the agent talks, speech must last min_interruption_ms to count as a turn."""
        td = self.config.turn_detection
        if td is None or self._detector is None:
            return
        talking = (
            td.interrupt_response and self._running is not None and self._running.response.audio
        )
        floor = td.vad.min_speech_ms
        self._detector.machine.min_speech_ms = (
            max(floor, td.min_interruption_ms) if talking else floor
        )

    async def _on_turn_event(self, event: TurnEvent) -> None:
        match event:
            case SpeechStarted(audio_start_ms=start_ms):
                self._speech = _Speech(new_id("item"))
                detection = self.config.turn_detection
                interrupted = None
                if detection and detection.interrupt_response:
                    # The user goes on speaking: a turn still waiting for its transcript is
                    # answered with the next one instead (it stays in the conversation).
                    for answering in list(self._answering):
                        answering.cancel()
                    self._answer_pending = None
                    if self._pause is not None:
                        # Speaking again before the last interruption was judged: it was one.
                        pause, self._pause = self._pause, None
                        interrupted = self._stop_held(pause.running)
                    elif detection.min_interruption_words and self._running is not None:
                        self._hold(self._running, self._speech.item_id)
                    else:
                        interrupted = self._stop_running("turn_detected")
                if interrupted is not None:
                    log.info(
                        "speech at %d ms of input interrupts response %s",
                        start_ms,
                        interrupted.response.id,
                    )
                # Stopping first made room: speech_started is not stuck behind stale audio.
                await self._emit(SpeechStartedEvent(self._speech.item_id, start_ms))
                if interrupted is not None:
                    await self._await_cancelled(interrupted)
            case SpeechStopped(audio_end_ms=end_ms):
                speech = self._speech or _Speech(new_id("item"))
                self._speech = speech
                await self._emit(SpeechStoppedEvent(speech.item_id, end_ms))
            case TurnMayEnd():
                self._speculate(event)
            case SpeechResumed():
                await self._void_speculation()
            case TurnEnded():
                speech = self._speech or _Speech(new_id("item"))
                self._speech = None
                self._reset_silence()
                spec, self._speculation = self._speculation, None
                if spec is not None and spec.speech is speech:
                    await self._adopt(spec, event.audio)
                    return
                if spec is not None:
                    await self._drop(spec)
                if event.speech_end_at is not None:
                    speech.trace.mark("speech_end", event.speech_end_at)
                speech.trace.mark("turn_end")
                detection = self.config.turn_detection
                answer = detection is not None and detection.create_response
                await self._commit_audio(event.audio, speech, answer=answer)

    # --- speculative start and semantic end of turn ---------------------------------------

    def _speculate(self, event: TurnMayEnd) -> None:
        """The user paused: transcribe (and answer) now, in case the turn ends here."""
        td, speech = self.config.turn_detection, self._speech
        if td is None or speech is None or not len(event.audio):
            return
        trace = TurnTrace()
        if event.speech_end_at is not None:
            trace.mark("speech_end", event.speech_end_at)
        spec = _Speculation(
            speech, event.audio, trace, self._spawn(self._speculative_asr(event.audio, trace))
        )
        self._speculation = spec
        self._spawn(self._speculate_answer(spec))

    async def _speculative_asr(self, samples: np.ndarray, trace: TurnTrace) -> Transcription | None:
        trace.mark("asr_start")
        try:
            return await self._backbone.transcribe(samples, **self._asr_options())
        except Exception:
            log.exception("speculative transcription failed")
            return None
        finally:
            trace.mark("asr_end")

    async def _speculate_answer(self, spec: _Speculation) -> None:
        result = await spec.transcribed
        if result is None or not result.text.strip() or self._speculation is not spec:
            return
        td = self.config.turn_detection
        if td is None:
            return
        if td.eagerness is not None:
            await self._semantic_end_of_turn(spec, result.text)
        if (
            self._speculation is not spec
            or td.speculative_start_ms is None
            or not td.create_response
            or self._running is not None
            or self._pause is not None
        ):
            return  # adopted or void already, or the agent still talks: answered the usual way
        provisional = Item(
            spec.speech.item_id, Role.USER, audio=True, transcript=result.text, samples=spec.audio
        )
        spec.response, spec.task = self._start_response(
            ResponseRequest(provisional=provisional), spec.trace, held=True
        )

    async def _semantic_end_of_turn(self, spec: _Speculation, text: str) -> None:
        """End the turn now after a complete thought; wait longer after one that trails off."""
        td = self.config.turn_detection
        if td is None or self._detector is None:
            return
        words = text.strip().lower()
        last = words.rstrip(".,!?;:").rsplit(None, 1)[-1] if words else ""
        trailing = words.endswith((",", "...", "-")) or last in TRAILING_WORDS
        if trailing:
            self._detector.machine.silence_duration_ms = 2 * td.vad.silence_duration_ms
            return
        if not words.endswith((".", "!", "?")) or td.eagerness == "low":
            return
        async with self._detector_lock:
            if self._speculation is not spec:
                return
            events = self._detector.end_turn_now()
        for event in events:
            await self._on_turn_event(event)

    def _reset_silence(self) -> None:
        td = self.config.turn_detection
        if td is not None and self._detector is not None:
            self._detector.machine.silence_duration_ms = td.vad.silence_duration_ms

    async def _void_speculation(self) -> None:
        self._reset_silence()
        spec, self._speculation = self._speculation, None
        if spec is not None:
            await self._drop(spec)

    async def _drop(self, spec: _Speculation) -> None:
        """The user went on: stop the early work (the engine request is aborted)."""
        spec.transcribed.cancel()
        if spec.task is not None:
            spec.task.cancel()  # reason None: it ends without a word to the client
            await asyncio.wait([spec.task])

    async def _adopt(self, spec: _Speculation, samples: np.ndarray) -> None:
        """The turn ended where it paused: commit it and use what was started early."""
        trace = spec.trace
        trace.mark("turn_end")
        item = Item(spec.speech.item_id, Role.USER, audio=True)
        self._keep_voice(item, samples)
        previous = self._append_item(item)
        await self._emit(InputCommitted(item.id, previous))
        await self._emit(ItemAdded(item, previous))
        result = await spec.transcribed
        if result is None:
            item.transcript = ""
            await self._transcription_failed(item, "transcription failed")
            await self._emit(ItemDone(item))
            if spec.task is not None:
                spec.task.cancel()
            return
        item.transcript = result.text
        if not result.text.strip():
            item.samples = None  # a turn without words is not answered, nor kept as voice
        if self.config.transcription is not None:
            await self._emit(InputTranscribed(item.id, result.text, result.duration_s))
        await self._emit(ItemDone(item))
        td = self.config.turn_detection
        answer = td is not None and td.create_response
        if spec.response is not None and spec.task is not None:
            response = spec.response
            response.provisional = False  # items it starts from now on join at once
            if response.items:
                # The answer was written before the turn was committed: it follows it now.
                assistant = response.items[0]
                after = self._append_item(assistant)
                response.held = [
                    replace(e, previous_item_id=after) if isinstance(e, OutputItemStarted) else e
                    for e in response.held or []
                ]
            if not spec.task.done():
                self._running = _Running(response, spec.task)
            await self._release(response)
        elif answer and result.text.strip():
            if self._running is not None:
                self._answer_pending = trace
            else:
                self._start_response(ResponseRequest(), trace)
        elif not answer:
            self._unanswered = trace

    # --- interruptions ------------------------------------------------------------------

    def _hold(self, running: _Running, item_id: str) -> None:
        """Pause the answer's output (the user may be interrupting): unsent audio waits too."""
        response = running.response
        response.held = self.events.purge(lambda e: getattr(e, "response", None) is response)
        self._pause = _Pause(running, item_id)

    def _stop_held(self, running: _Running) -> _Running:
        """A held answer was interrupted after all: its audio is dropped, the rest goes out."""
        response = running.response
        response.reason = "turn_detected"
        response.held = [e for e in response.held or [] if not isinstance(e, OutputAudioDelta)]
        running.task.cancel()
        if self._echo is not None:
            self._echo.stop(self._buffer.end)
        return running

    async def _judge_interruption(self, item: Item) -> bool:
        """The interrupting turn's words are known: True if it really interrupted."""
        pause, self._pause = self._pause, None
        td = self.config.turn_detection
        assert pause is not None and td is not None
        words = len((item.transcript or "").split())
        if words >= td.min_interruption_words:
            await self._finish_interrupted(pause.running)
            return True
        if td.false_interruption == "resume":
            await self._release(pause.running.response)  # a backchannel: the agent goes on
        else:
            await self._finish_interrupted(pause.running)  # stay silent
        return False

    async def _finish_interrupted(self, running: _Running) -> None:
        response = running.response
        self._stop_held(running)
        await asyncio.wait([running.task])
        if self._running is running:
            self._running = None
        # It may have finished writing while held: it still ends as interrupted.
        response.status = ResponseStatus.CANCELLED
        for item in response.items:
            item.status = ItemStatus.INCOMPLETE
        await self._release(response)

    async def _release(self, response: Response) -> None:
        """Send a response's held events, in order, and let the rest flow."""
        while response.held:
            event = response.held.pop(0)
            self._note_sent_audio(event)
            await self.events.put(event)
        response.held = None

    async def commit(self) -> None:
        tail = self._decoder.flush()
        if len(tail) and self._buffer.has_room(len(tail)):
            self._buffer.append(tail)
        if self._buffer.duration_ms < MIN_COMMIT_MS:
            raise SessionRejected(
                "input_audio_buffer_commit_empty",
                f"buffer too small: {self._buffer.duration_ms} ms of audio, "
                f"a commit needs at least {MIN_COMMIT_MS} ms",
            )
        speech = self._speech or _Speech(new_id("item"))
        self._speech = None
        speech.trace.mark("turn_end")
        if self._detector is not None:
            self._detector.restart()  # the VAD's turn is over, whether it saw the end or not
        # A manual commit answers only when asked (response.create); OpenAI's server VAD
        # answers its own turns, and a commit during server VAD ends the turn the same way.
        detection = self.config.turn_detection
        answer = detection is not None and detection.create_response
        await self._commit_audio(self._buffer.take(), speech, answer=answer)

    async def clear(self) -> None:
        self._decoder.flush()
        self._buffer.clear()
        self._speech = None
        if self._detector is not None:
            self._detector.restart()  # a turn under way went with the buffer
        await self._emit(InputCleared())

    def _keep_voice(self, item: Item, samples: np.ndarray) -> None:
        """Keep the audio of the newest user turns (the backbone hears how they were said),
        at most `audio_turns_kept`: older turns live on as transcripts (see `older_voices_kept`)."""
        voices = [i for i in self.items if i.samples is not None and i is not item]
        keep = older_voices_kept(len(voices), self._limits.audio_turns_kept)
        for older in voices[: len(voices) - keep]:
            older.samples = None
        item.samples = samples

    async def _commit_audio(self, samples: np.ndarray, speech: _Speech, *, answer: bool) -> None:
        item = Item(speech.item_id, Role.USER, audio=True)
        self._keep_voice(item, samples)
        previous = self._append_item(item)
        await self._emit(InputCommitted(item.id, previous))
        await self._emit(ItemAdded(item, previous))
        task = self._spawn(self._transcribe(item, samples, speech.trace))
        self._transcribing[item.id] = task
        # A later response.create answers this turn: its stages are timed on the same trace.
        self._unanswered = None if answer else speech.trace
        if answer:
            answering = self._spawn(self._answer_turn(task, item, speech.trace))
            self._answering.add(answering)
            answering.add_done_callback(self._answering.discard)

    async def _transcribe(self, item: Item, samples: np.ndarray, trace: TurnTrace) -> None:
        trace.mark("asr_start")
        try:
            result = await self._backbone.transcribe(samples, **self._asr_options())
        except Exception as e:
            log.exception("transcription of %s failed", item.id)
            item.transcript = ""
            item.samples = None  # a turn not understood is not answered, nor kept as voice
            await self._transcription_failed(item, str(e) or type(e).__name__)
            await self._emit(ItemDone(item))
            return
        finally:
            trace.mark("asr_end")
            self._transcribing.pop(item.id, None)
        item.transcript = result.text
        if not result.text.strip():
            item.samples = None  # a turn without words is not answered, nor kept as voice
        if self.config.transcription is not None:
            await self._emit(InputTranscribed(item.id, result.text, result.duration_s))
        await self._emit(ItemDone(item))

    async def _transcription_failed(self, item: Item, reason: str) -> None:
        """Tell the client that a user turn could not be transcribed (so it goes unanswered):
        as OpenAI does when it asked for transcripts, else with an `error`, never silently."""
        if self.config.transcription is not None:
            await self._emit(InputTranscriptionFailed(item.id, reason))
            return
        await self._emit(
            ErrorReported(
                "transcription_failed",
                f"the user audio of item {item.id} could not be transcribed ({reason}); "
                "it is not answered",
                type="server_error",
            )
        )

    def _asr_options(self) -> dict[str, Any]:
        transcription = self.config.transcription
        if transcription is None:
            return {}
        return {"language": transcription.language, "prompt": transcription.prompt}

    async def _answer_turn(
        self, transcribed: asyncio.Task[None], item: Item, trace: TurnTrace
    ) -> None:
        await asyncio.wait([transcribed])
        if self._pause is not None and self._pause.item_id == item.id:
            if not await self._judge_interruption(item):
                log.info("turn %s was a false interruption", item.id)
                return
        if not (item.transcript or "").strip():
            log.info("turn %s had no words; not answering", item.id)
            return
        if self._running is not None:
            # interrupt_response is off and the agent is still talking: answer after it.
            self._answer_pending = trace
            return
        self._start_response(ResponseRequest(), trace)

    # --- conversation ---------------------------------------------------------------------

    def _append_item(self, item: Item, after: str | None = None) -> str | None:
        """Insert `item` (at the end, or after the item `after`); return its predecessor's id."""
        index = len(self.items)
        if after is not None:
            index = 0 if after == "root" else self._index_of(after) + 1
        self.items.insert(index, item)
        if (excess := len(self.items) - self._limits.max_items) > 0:
            # Forget the oldest items, never the one just added (it may go in at the root).
            forgotten = [old for old in self.items if old is not item][:excess]
            self.items = [kept for kept in self.items if all(kept is not f for f in forgotten)]
            index = self.items.index(item)
        return self.items[index - 1].id if index > 0 else None

    def _index_of(self, item_id: str, param: str = "previous_item_id", action: str = "") -> int:
        """The item's index; an unknown id is refused with OpenAI's code for the action
        (`item_retrieve_invalid_item_id`, ...: frameworks key on them, pipecat waits for
        its retrieval's), `item_not_found` for a `previous_item_id`."""
        for i, existing in enumerate(self.items):
            if existing.id == item_id:
                return i
        if action:
            raise SessionRejected(
                f"item_{action}_invalid_item_id",
                f"Error {action.removesuffix('e')}ing item: the item with id {item_id!r} "
                "does not exist.",
                param,
            )
        raise SessionRejected("item_not_found", f"no conversation item with id {item_id!r}", param)

    async def add_item(
        self, item: Item, previous_item_id: str | None = None, audio_data: bytes | None = None
    ) -> None:
        """`conversation.item.create`: a message, with user audio (session input format) to
        transcribe when it has no transcript."""
        if any(existing.id == item.id for existing in self.items):
            raise SessionRejected(
                "item_create_duplicate_item_id", f"item id {item.id!r} already exists", "item.id"
            )
        self._check_item(item, "item")
        held = sum(len(i.content_text) for i in self.items)
        if held + len(item.content_text) > self._limits.max_conversation_chars:
            raise SessionRejected(
                "conversation_too_large",
                f"the conversation holds {held} characters of text; this item would pass the "
                f"limit of {self._limits.max_conversation_chars}: delete items first",
                "item",
            )
        if item.kind == "function_call_output":
            calls = [
                i for i in self.items if i.kind == "function_call" and i.call_id == item.call_id
            ]
            if not calls:
                raise SessionRejected(
                    "invalid_value",
                    f"no function call with call_id {item.call_id!r} in the conversation",
                    "item.call_id",
                )
            item.name = calls[-1].name
        samples = None
        if audio_data is not None:
            try:
                decoder = InputDecoder(self.config.input_format)
                samples = np.concatenate([decoder.feed(audio_data), decoder.flush()])
            except AudioFormatError as e:
                raise SessionRejected("invalid_audio", str(e), "item.content[0].audio") from e
        if previous_item_id not in (None, "root"):
            self._index_of(previous_item_id)  # refuse before changing anything
        previous = self._append_item(item, previous_item_id)
        await self._emit(ItemAdded(item, previous))
        if samples is not None:
            self._keep_voice(item, samples)
        if samples is not None and item.transcript is None:
            self._transcribing[item.id] = self._spawn(self._transcribe(item, samples, TurnTrace()))
        else:
            await self._emit(ItemDone(item))

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """conversation.item.truncate: the user heard only `audio_end_ms` of this answer, so
        its transcript (and the context of later turns) keeps only what was heard."""
        item = self.items[self._index_of(item_id, "item_id", "truncate")]
        if item.role is not Role.ASSISTANT or not item.audio:
            raise SessionRejected(
                "invalid_value", "only assistant audio messages can be truncated", "item_id"
            )
        if content_index != 0:
            raise SessionRejected(
                "invalid_value", "the message has one content part", "content_index"
            )
        if self._running is not None and item in self._running.response.items:
            await self._cancel_running("client_cancelled")
        if not 0 <= audio_end_ms <= item.audio_ms:
            raise SessionRejected(
                "invalid_value",
                f"audio_end_ms {audio_end_ms} is outside the item's {item.audio_ms} ms of audio",
                "audio_end_ms",
            )
        item.transcript = item.heard_transcript(audio_end_ms)
        item.audio_ms = audio_end_ms
        item.tokens = None  # what the model wrote is no longer what was said
        item.spoken = [(ms, off) for ms, off in item.spoken if ms < audio_end_ms]
        await self._emit(ItemTruncated(item_id, audio_end_ms))

    async def delete_item(self, item_id: str) -> None:
        del self.items[self._index_of(item_id, "item_id", "delete")]
        await self._emit(ItemDeleted(item_id))

    async def retrieve_item(self, item_id: str) -> None:
        await self._emit(ItemRetrieved(self.items[self._index_of(item_id, "item_id", "retrieve")]))

    def _check_item(self, item: Item, param: str) -> None:
        """Every text of an item within `max_item_chars`."""
        limit = self._limits.max_item_chars
        for name in ("text", "transcript", "arguments", "output"):
            value = getattr(item, name) or ""
            if len(value) > limit:
                raise _too_long(f"{param}.{name}", value, limit)

    # --- responses ------------------------------------------------------------------------

    async def create_response(self, request: ResponseRequest) -> None:
        if self._running is not None and request.in_conversation:
            raise SessionRejected(
                "conversation_already_has_active_response",
                f"response {self._running.response.id} is still in progress; cancel it first",
            )
        self._check_voice(request.voice or self.config.voice, "response.audio.output.voice")
        self._check_reasoning(request.reasoning_effort, "response.reasoning")
        for i, item in enumerate(request.input_items or ()):
            self._check_item(item, f"response.input[{i}]")
        if request.input_items is not None and len(request.input_items) > self._limits.max_items:
            raise SessionRejected(
                "invalid_value",
                f"response.input has {len(request.input_items)} items; at most "
                f"{self._limits.max_items}",
                "response.input",
            )
        max_tokens = request.max_output_tokens or self.config.max_output_tokens
        if request.instructions is not None:
            await self._check_instructions(
                request.instructions, max_tokens, "response.instructions"
            )
        elif request.max_output_tokens is not None:
            await self._check_instructions(
                self.config.instructions, max_tokens, "response.max_output_tokens"
            )
        if not request.in_conversation:
            self._take_out_of_band_slot()
        trace, self._unanswered = self._unanswered or TurnTrace(), None
        try:
            self._start_response(request, trace)
        except BaseException:
            if not request.in_conversation:
                self._out_of_band_slots.release()
            raise

    def _take_out_of_band_slot(self) -> None:
        mine = self._limits.max_out_of_band_responses
        if len(self._out_of_band) >= mine:
            raise SessionRejected(
                "response_limit_reached",
                f"this session already runs {mine} out-of-band responses; wait for one to end "
                "or cancel it (response.cancel with its response_id)",
            )
        if not self._out_of_band_slots.try_acquire():
            raise SessionRejected(
                "response_limit_reached",
                f"this server already runs its limit of {self._out_of_band_slots.limit} "
                "out-of-band responses; try again shortly",
            )

    def _start_response(
        self, request: ResponseRequest, trace: TurnTrace, *, held: bool = False
    ) -> tuple[Response, asyncio.Task[None]]:
        """Start a response task; a `held` one says nothing until it is released (and is not
        the running response until then)."""
        config = self.config
        audio_output = config.audio_output if request.audio_output is None else request.audio_output
        max_tokens = self._max_tokens(request.max_output_tokens or config.max_output_tokens)
        response = Response(
            id=new_id("resp"),
            audio=audio_output,
            voice=request.voice or config.voice,
            audio_format=(request.output_format or config.output_format).value,
            in_conversation=request.in_conversation,
            max_output_tokens=max_tokens,
            metadata=request.metadata,
            trace=trace,
            held=[] if held else None,
            provisional=request.provisional is not None,
        )
        task = asyncio.create_task(self._run_response(response, request), name=response.id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if request.in_conversation and not held:
            self._running = _Running(response, task)
        elif not request.in_conversation:
            self._out_of_band[response.id] = _Running(response, task)

            def done(_: asyncio.Task[None]) -> None:
                self._out_of_band.pop(response.id, None)
                self._out_of_band_slots.release()

            task.add_done_callback(done)
        return response, task

    async def cancel_response(self, response_id: str | None) -> None:
        """response.cancel: the conversation's response, or an out-of-band one by its id."""
        if response_id is not None and (other := self._out_of_band.get(response_id)):
            other.response.reason = "client_cancelled"
            other.task.cancel()
            await self._await_cancelled(other)
            return
        running = self._running
        if running is None:
            # OpenAI's words: LiveKit recognises a late cancel (its barge-in races the
            # response's end) by them and does not report it as a failure.
            raise SessionRejected(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        if response_id is not None and response_id != running.response.id:
            raise SessionRejected(
                "invalid_value",
                f"response {response_id!r} is not in progress (in progress: {running.response.id})",
                "response_id",
            )
        await self._cancel_running("client_cancelled")

    async def _cancel_running(self, reason: CancelReason) -> None:
        running = self._stop_running(reason)
        if running is None:
            return
        await self._await_cancelled(running)

    def _stop_running(self, reason: CancelReason) -> _Running | None:
        """Cancel the running response and take back its unsent audio (nobody will hear it,
        and a client busy sending must not wait for it to drain before being heard)."""
        running = self._running
        if running is None:
            return None
        running.response.reason = reason
        running.task.cancel()
        response = running.response
        self.events.purge(lambda e: isinstance(e, OutputAudioDelta) and e.response is response)
        if self._echo is not None:
            self._echo.stop(self._buffer.end)  # the client stops playing it now
        return running

    async def _await_cancelled(self, running: _Running) -> None:
        # The task reports response.done itself; wait so events stay in order.
        await asyncio.wait([running.task])
        if running.task.cancelled():
            # Cancelled before it ever ran (response.cancel right after response.create), so
            # it could not report: say for it that it started and was cancelled.
            if self._running is running:
                self._running = None
            running.response.status = ResponseStatus.CANCELLED
            await self._emit(ResponseStarted(running.response))
            await self._emit(ResponseFinished(running.response))

    async def _run_response(self, response: Response, request: ResponseRequest) -> None:
        caused_by_request = False  # a failure the request itself caused (4xx, not 5xx)
        try:
            await self._emit(ResponseStarted(response))
            # A manual commit followed at once by response.create: its ASR may still be running.
            if pending := list(self._transcribing.values()):
                await asyncio.wait(pending)
            context = request.input_items if request.input_items is not None else self.items
            if request.provisional is not None:
                context = [*context, request.provisional]
            entries = [
                (self._turn_of(i, text), i)
                for i in context
                if (text := i.content_text.strip()) or i.samples is not None
            ]
            config = self.config
            effort = request.reasoning_effort or config.reasoning_effort
            options = ResponseOptions(
                request_id=response.id,
                instructions=request.instructions or config.instructions,
                voice=self._voices.resolve(response.voice),
                audio=response.audio,
                max_output_tokens=response.max_output_tokens,
                speed=config.speed,
                window=self._window if request.input_items is None else None,
                summary=self._summary if request.input_items is None else "",
                tools=request.tools if request.tools is not None else config.tools,
                tool_choice=request.tool_choice or config.tool_choice,
                reasoning_tokens=self._reasoning_budget(effort),
            )
            await self._stream_response(response, [t for t, _ in entries], options)
            if response.context_start and request.input_items is None:
                # The oldest turns no longer fit: fold them into the summary, in the background.
                self._fold([i for _, i in entries[: response.context_start]])
        except asyncio.CancelledError:
            if response.reason is None:
                raise  # the session is closing: nobody is left to tell
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            response.status = ResponseStatus.CANCELLED
        except BackboneError as e:
            response.status, response.error = ResponseStatus.FAILED, (e.code, str(e))
            caused_by_request = e.status < 500
        except Exception:
            log.exception("response %s failed", response.id)
            response.status = ResponseStatus.FAILED
            response.error = ("server_error", "the response failed inside the server")
        if self._running is not None and self._running.response is response:
            self._running = None
        if response.reasoning and not response.reasoning_done:
            response.reasoning_done = True
            await self._emit(ReasoningDone(response))
        for index, item in enumerate(response.items):
            item.status = (
                ItemStatus.COMPLETED
                if response.status == ResponseStatus.COMPLETED
                else ItemStatus.INCOMPLETE
            )
            await self._emit(OutputItemFinished(response, item, index))
        if response.error is not None:
            # Before response.done: a client that ends its turn there must not miss it.
            code, message = response.error
            kind = "invalid_request_error" if caused_by_request else "server_error"
            await self._emit(ErrorReported(code, message, type=kind))
        await self._emit(ResponseFinished(response))
        if self._answer_pending is not None and self._running is None:
            trace, self._answer_pending = self._answer_pending, None
            self._start_response(ResponseRequest(), trace)

    def _turn_of(self, item: Item, text: str) -> Turn:
        call = None
        if item.kind == "function_call":
            call = ToolCall(item.call_id, item.name, item.arguments)
        return Turn(
            self._role_of(item), text, item.samples, key=item.id, tokens=item.tokens, call=call
        )

    @staticmethod
    def _role_of(item: Item) -> Role:
        return {"function_call": Role.ASSISTANT, "function_call_output": Role.TOOL}.get(
            item.kind, item.role
        )

    def _reasoning_budget(self, effort: str | None) -> int:
        if effort is None:
            return 0
        share = {"minimal": 1 / 16, "low": 1 / 4, "medium": 1 / 2, "high": 3 / 4, "xhigh": 1.0}
        return max(16, int(self._limits.max_reasoning_tokens * share[effort]))

    async def _begin_item(self, response: Response, item: Item) -> None:
        """An output item starts: it joins the conversation (unless the answer is still
        speculative) and the client hears of it."""
        joins = response.in_conversation and not response.provisional
        previous = self._append_item(item) if joins else None
        response.items.append(item)
        await self._emit(OutputItemStarted(response, item, len(response.items) - 1, previous))

    async def _stream_response(
        self, response: Response, turns: Sequence[Turn], options: ResponseOptions
    ) -> None:
        fmt = AudioFormat(response.audio_format)
        encoder = OutputEncoder(fmt)
        chunk_ms = self._limits.output_chunk_ms
        sent = 0  # samples of audio sent, at the output rate
        item: Item | None = None  # the spoken (or written) answer, made at its first output
        outputs = self._backbone.respond(turns, options, response.trace)
        async with aclosing(outputs):
            async for output in outputs:
                if (
                    response.reasoning
                    and not response.reasoning_done
                    and not isinstance(output, ReasoningDelta)
                ):
                    response.reasoning_done = True  # over: say so before the answer begins
                    await self._emit(ReasoningDone(response))
                if isinstance(output, TextDelta | AudioChunk) and item is None:
                    item = Item(
                        new_id("item"),
                        Role.ASSISTANT,
                        audio=response.audio,
                        transcript="" if response.audio else None,
                        status=ItemStatus.IN_PROGRESS,
                    )
                    await self._begin_item(response, item)
                match output:
                    case ReasoningDelta(text=text):
                        response.reasoning += text
                        await self._emit(ReasoningDeltaEvent(response, text))
                    case ToolCall(call_id=call_id, name=name, arguments=arguments):
                        call = Item(
                            new_id("item"),
                            Role.ASSISTANT,
                            kind="function_call",
                            call_id=call_id,
                            name=name,
                            status=ItemStatus.IN_PROGRESS,
                        )
                        await self._begin_item(response, call)
                        call.arguments = arguments
                        await self._emit(FunctionCallArgumentsDelta(response, call, arguments))
                    case TextDelta(text=text) if item is not None:
                        if response.audio:
                            item.spoken.append((item.audio_ms, len(item.transcript or "")))
                            item.transcript = (item.transcript or "") + text
                        else:
                            item.text += text
                        await self._emit(OutputTextDelta(response, item, text))
                    case AudioChunk() if item is not None:
                        for piece in audio.iter_slices(encoder.encode(output), fmt, chunk_ms):
                            sent += len(piece) // fmt.bytes_per_sample
                            item.audio_ms = audio.samples_to_ms(sent, fmt.sample_rate)
                            await self._emit(OutputAudioDelta(response, item, piece))
                    case ResponseEnd():
                        if item is not None and output.spoken_tokens is not None:
                            item.tokens = output.spoken_tokens
                        response.input_tokens = output.input_tokens
                        response.output_tokens = output.output_tokens
                        response.output_audio_tokens = output.output_audio_tokens
                        response.context_start = output.context_start
                        if output.finish_reason == "length":
                            response.status = ResponseStatus.INCOMPLETE
                            response.reason = "max_output_tokens"
                        else:
                            response.status = ResponseStatus.COMPLETED
        if item is not None and response.audio and (tail := encoder.flush()):
            sent += len(tail) // fmt.bytes_per_sample
            item.audio_ms = audio.samples_to_ms(sent, fmt.sample_rate)
            await self._emit(OutputAudioDelta(response, item, tail))
        if response.status == ResponseStatus.IN_PROGRESS:
            response.status = ResponseStatus.COMPLETED

    # --- compacted memory -----------------------------------------------------------------

    def _fold(self, items: list[Item]) -> None:
        """Fold `items` (older than the context holds) into the running summary, at low
        priority and off the turn's critical path; one fold at a time."""
        if self._folding is not None and not self._folding.done():
            return
        if items := [i for i in items if any(i is kept for kept in self.items)]:
            self._folding = self._spawn(self._summarize(items))

    async def _summarize(self, items: list[Item]) -> None:
        turns = [Turn(self._role_of(i), i.content_text) for i in items if i.content_text.strip()]
        try:
            summary = await self._backbone.summarize(
                self._summary, turns, priority=SUMMARY_PRIORITY
            )
        except Exception:
            log.exception("folding %d items into the summary failed", len(items))
            return
        self._summary = summary
        folded = [i for i in items if any(i is kept for kept in self.items)]
        self.items = [kept for kept in self.items if all(kept is not f for f in folded)]
        for item in folded:
            await self._emit(ItemDeleted(item.id))
        await self._emit(SummaryUpdated(summary, len(folded)))

    # --- plumbing -------------------------------------------------------------------------

    async def _emit(self, event: SessionEvent) -> None:
        if isinstance(event, ItemAdded | ItemDone | ItemRetrieved):
            # The writer serialises later; the item may change meanwhile (its transcript).
            event = replace(event, item=replace(event.item))
        response = getattr(event, "response", None)
        if response is not None and response.held is not None:
            response.held.append(event)  # speculative or paused: not for the client yet
            return
        self._note_sent_audio(event)
        await self.events.put(event)

    def _note_sent_audio(self, event: SessionEvent) -> None:
        """The echo guard's reference: audio going to the client, on the input's timeline."""
        if self._echo is None or not isinstance(event, OutputAudioDelta):
            return
        response = event.response
        decoder = self._echo_decoders.get(response.id)
        if decoder is None:
            self._echo_decoders.clear()  # one response speaks at a time
            decoder = self._echo_decoders[response.id] = InputDecoder(
                AudioFormat(response.audio_format)
            )
        self._echo.play(decoder.feed(event.audio), self._buffer.end)

    def _spawn(self, coro) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._reporting_failure(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reporting_failure(self, coro) -> Any:
        """Run a session task; if it fails, log it and tell the client (an `error` event),
        so that a turn that will never be answered does not leave the client waiting."""
        try:
            return await coro
        except Exception:
            log.exception("a session task failed")
            await self._emit(
                ErrorReported(
                    "server_error",
                    "the server failed while handling this session's audio or turn; "
                    "the turn may be unanswered",
                    type="server_error",
                )
            )
            return None  # reported: nobody else awaits the failure

    async def close(self) -> None:
        """Stop every task of this session (responses end without events)."""
        self._running = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._set_noise_reduction(False)
