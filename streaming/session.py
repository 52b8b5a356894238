"""The per-connection realtime session: what the server calls, one method per client event.

The server calls one method per client event (`append_audio`, `commit`, `create_response`, ...)
and forwards `events` to the client. Methods that refuse a request raise `SessionRejected`,
which the server maps to an `error` event; the session stays usable. Nothing refused reaches the
backbone.

The session is a facade over its parts: `Listener` (input audio, noise suppression, server
VAD), `TurnTaker` (turn-taking: it carries out the decisions of the pure `TurnPolicy`),
`Responder` (responses) and `Conversation` (the items). It checks and applies the
configuration, and owns the outbox (`events`) and the tasks its parts run.

Concurrency: the server's reader calls the methods one at a time. Work that outlives a method
(ASR of a turn, a response) runs in tasks owned by the session and ended by `close()`. A
task that fails unexpectedly is logged and reported to the client as an `error` event: nothing
fails silently, leaving the client waiting.

Bounds (`SessionLimits`): every text a client hands over is capped in characters
(`string_above_max_length`), a conversation's client-added text together too
(`conversation_too_large`), instructions in tokens against the model's context
(`context_length_exceeded`, checked by the backbone in a thread when they are set), and
out-of-band responses in number, per session and over the server (`response_limit_reached`).
Each is refused before anything reaches the backbone. A session keeps nothing outside itself:
its context window (`ContextWindow`) goes with it; with an `AnswerLog` (the server's feedback
capture), it tells the log of each answer (`streaming/answer_log.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from voxgate.model.backbone import Backbone
from voxgate.model.types import BackboneError, UnknownVoiceError
from voxgate.model.voices import VoiceBook
from voxgate.streaming.answer_log import AnswerLog
from voxgate.streaming.audio import AudioFormat, AudioFormatError, InputDecoder
from voxgate.streaming.config import SessionConfig, SessionLimits
from voxgate.streaming.conversation import Conversation, older_voices_kept
from voxgate.streaming.denoise import NoiseSuppressor
from voxgate.streaming.echo import EchoGuard
from voxgate.streaming.events import (
    ErrorReported,
    InputCleared,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemRetrieved,
    ItemTruncated,
    OutputAudioDelta,
    SessionConfigured,
    SessionEvent,
)
from voxgate.streaming.listening import MIN_COMMIT_MS, Listener
from voxgate.streaming.outbox import Outbox
from voxgate.streaming.requests import ResponseRequest, SessionRejected, new_id, too_long
from voxgate.streaming.responding import Responder
from voxgate.streaming.slots import Slots
from voxgate.streaming.turn_decisions import TurnInput
from voxgate.streaming.turn_taking import TurnTaker
from voxgate.streaming.vad import SileroVad

__all__ = [
    "MIN_COMMIT_MS",
    "EventQueue",
    "RealtimeSession",
    "ResponseRequest",
    "SessionRejected",
    "new_id",
    "older_voices_kept",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeReply:
    """The server edge's reply to a client event the session does not handle (an extension of
    the protocol), queued so that it goes out in order with what the session says. The
    session never looks inside `wire`: the edge made it, and sends it."""

    wire: object


Queued = SessionEvent | EdgeReply
"""What the session's outbox holds."""


class EventQueue:
    """The session's bounded outbox, which can also take back what is no longer worth sending.

    At most `maxsize` events wait; `put` waits for room (backpressure on the session). One
    reader takes them in order with `get`."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._events: deque[Queued] = deque()
        self._room = asyncio.Event()
        self._ready = asyncio.Event()

    async def put(self, event: Queued) -> None:
        while len(self._events) >= self._maxsize:
            self._room.clear()
            await self._room.wait()
        self._events.append(event)
        self._ready.set()

    async def get(self) -> Queued:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()

    def get_nowait(self) -> Queued:
        """The next event; `asyncio.QueueEmpty` if there is none."""
        if not self._events:
            raise asyncio.QueueEmpty
        event = self._events.popleft()
        self._room.set()
        return event

    def empty(self) -> bool:
        return not self._events

    def purge(self, stale: Callable[[SessionEvent], bool]) -> list[SessionEvent]:
        """Take back queued session events for which `stale(event)` is true (in order); wake
        senders waiting for room."""
        taken = [e for e in self._events if not isinstance(e, EdgeReply) and stale(e)]
        if taken:
            self._events = deque(
                e for e in self._events if isinstance(e, EdgeReply) or not stale(e)
            )
            self._room.set()
        return taken


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
        answer_log: AnswerLog | None = None,
    ) -> None:
        self._backbone = backbone
        self._answer_log = answer_log
        """Keeps this session's answers (None: none are kept)."""
        self._voices = voices or VoiceBook(backbone.voices)
        """The backbone's voices and their aliases: a session keeps the name its client chose."""
        self._limits = limits
        self.id = new_id("conv")
        self.config = config
        self.events = EventQueue(limits.event_queue_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._echo_decoders: dict[str, InputDecoder] = {}
        self._listener = Listener(
            vad_factory, noise_suppressor, limits.max_buffer_seconds, config.input_format
        )
        self._buffer = self._listener.buffer
        self._conversation = Conversation(limits)
        transcribing: dict[str, asyncio.Task[None]] = {}
        outbox = Outbox(
            emit=self._emit,
            put=self.events.put,
            purge=self.events.purge,
            note_sent_audio=self._note_sent_audio,
            spawn=self._spawn,
        )
        self._responder = Responder(
            backbone,
            self._voices,
            limits,
            self._conversation,
            outbox,
            config=lambda: self.config,
            transcribing=transcribing,
            report=self._report,
            silenced=self._listener.stop_echo,
            out_of_band_slots=out_of_band_slots or Slots(limits.max_out_of_band_responses),
            answer_log=answer_log,
        )
        self._turns = TurnTaker(
            backbone,
            self._listener,
            self._conversation,
            self._responder,
            outbox,
            transcribing,
            lambda: self.config,
        )

    @property
    def items(self) -> list[Item]:
        """The conversation, in order."""
        return self._conversation.items

    @property
    def summary(self) -> str:
        """What the conversation said before its oldest item still kept (compacted memory)."""
        return self._conversation.summary

    @property
    def limits(self) -> SessionLimits:
        return self._limits

    # --- configuration --------------------------------------------------------------------

    async def start(self) -> None:
        """Apply the initial configuration and announce it (session.created)."""
        await self._apply(self.config)
        await self._emit(SessionConfigured(self.config, created=True))

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
            raise too_long(param, instructions, self._limits.max_instructions_chars)
        try:
            await self._backbone.check_instructions(
                instructions, self._responder.max_tokens(max_output_tokens)
            )
        except BackboneError as e:
            raise SessionRejected(e.code, str(e), param) from e

    async def report_error(self, error: ErrorReported) -> None:
        """Queue an error for the client in order with everything else the session says."""
        await self._emit(error)

    async def reply(self, wire: object) -> None:
        """Queue the server edge's own reply to a client event (`EdgeReply`)."""
        await self.events.put(EdgeReply(wire))

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
        self._listener.set_format(config.input_format)
        detection = config.turn_detection
        if detection != self.config.turn_detection or self._listener.detector is None:
            await self._listener.set_turn_detection(detection)
            await self._turns.configured(detection)
        self._listener.set_noise_reduction(config.noise_reduction is not None)
        self.config = config

    # --- input audio ----------------------------------------------------------------------

    async def append_audio(self, data: bytes, arrived_at: float | None = None) -> None:
        """input_audio_buffer.append; `arrived_at` (monotonic) is when the message was read."""
        await self._turns.on_turn_events(await self._listener.hear(data, arrived_at))

    async def commit(self) -> None:
        """input_audio_buffer.commit: the buffered audio is a user turn. A manual commit
        answers only when asked (response.create); OpenAI's server VAD answers its own turns,
        and a commit during server VAD ends the turn the same way."""
        await self._turns.commit(self._listener.commit())

    async def clear(self) -> None:
        self._listener.clear()
        await self._turns.clear()
        await self._emit(InputCleared())

    # --- conversation ---------------------------------------------------------------------

    async def add_item(
        self, item: Item, previous_item_id: str | None = None, audio_data: bytes | None = None
    ) -> None:
        """`conversation.item.create`: a message, with user audio (session input format) to
        transcribe when it has no transcript."""
        self._conversation.check_new(item)
        samples = None
        if audio_data is not None:
            try:
                decoder = InputDecoder(self.config.input_format)
                samples = np.concatenate([decoder.feed(audio_data), decoder.flush()])
            except AudioFormatError as e:
                raise SessionRejected("invalid_audio", str(e), "item.content[0].audio") from e
        previous = self._conversation.append(item, previous_item_id)  # refuses an unknown one
        await self._emit(ItemAdded(item, previous))
        if samples is not None:
            self._conversation.keep_voice(item, samples)
        if samples is not None and item.transcript is None:
            self._turns.transcribe(item, samples)
        else:
            await self._emit(ItemDone(item))

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """conversation.item.truncate: the user heard only `audio_end_ms` of this answer, so
        its transcript (and the context of later turns) keeps only what was heard."""
        item = self._conversation.truncatable(item_id, content_index)
        running = self._responder.running
        if running is not None and item in running.response.items:
            await self._responder.cancel("client_cancelled")
        written_by = self._conversation.truncate(item, audio_end_ms)
        await self._emit(ItemTruncated(item_id, audio_end_ms))
        if written_by is not None and self._answer_log is not None:
            await self._answer_log.truncated(written_by, audio_end_ms)

    async def delete_item(self, item_id: str) -> None:
        self._conversation.delete(item_id)
        await self._emit(ItemDeleted(item_id))

    async def retrieve_item(self, item_id: str) -> None:
        await self._emit(ItemRetrieved(self._conversation.get(item_id, "retrieve")))

    # --- responses ------------------------------------------------------------------------

    async def create_response(self, request: ResponseRequest, candidates: int = 1) -> None:
        """response.create; `candidates` 2: the turn is answered twice, for a person to prefer
        one (`streaming/candidates.py`: only where answers are kept)."""
        if candidates > 1 and self._answer_log is None:
            raise SessionRejected(
                "invalid_value",
                "candidate answers are kept for feedback, and this server does not capture "
                "answers (VOXGATE_FEEDBACK__ENABLED)",
                "response.x_voxgate.candidates",
            )
        running = self._responder.running
        if running is not None and request.in_conversation:
            raise SessionRejected(
                "conversation_already_has_active_response",
                f"response {running.response.id} is still in progress; cancel it first",
            )
        self._check_voice(request.voice or self.config.voice, "response.audio.output.voice")
        self._check_reasoning(request.reasoning_effort, "response.reasoning")
        for i, item in enumerate(request.input_items or ()):
            self._conversation.check_item(item, f"response.input[{i}]")
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
            self._responder.take_out_of_band_slot()
        # A later response.create answers a turn left to it: its stages are timed on its trace.
        trace = self._turns.requested()
        try:
            if candidates > 1:
                await self._responder.start_candidates(request, trace)
            else:
                await self._responder.start(request, trace)
        except BaseException:
            if not request.in_conversation:
                self._responder.give_back_out_of_band_slot()
            raise

    async def cancel_response(self, response_id: str | None) -> None:
        """response.cancel: the conversation's response, or an out-of-band one by its id."""
        if response_id is not None and await self._responder.cancel_out_of_band(response_id):
            return
        running = self._responder.running
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
        await self._responder.cancel("client_cancelled")

    async def _report(self, event: TurnInput) -> None:
        """What happened to a response, for turn-taking."""
        await self._turns.report(event)

    # --- plumbing -------------------------------------------------------------------------

    @property
    def _echo(self) -> EchoGuard | None:
        """The echo guard of the input (None: off): it hears what the session plays."""
        return self._listener.echo

    async def _emit(self, event: SessionEvent) -> None:
        response = getattr(event, "response", None)
        if response is not None and (held := response.origin.held) is not None:
            held.append(event)  # speculative or paused: not for the client yet
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

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._reporting_failure(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before it ran never awaited `coro`: close it, unawaited warnings off.
        task.add_done_callback(lambda _: coro.close())
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
        self._responder.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._listener.close()
