"""Turn-taking carried out: the session's side of `TurnPolicy`.

`TurnTaker` tells the policy what happened (the VAD's turn events, the client's commits and
clears, transcripts, responses beginning and ending) and carries out what it decides: it
commits and transcribes user turns, starts early work on a pause (speculative start) and
adopts or drops it, ends a turn early after a complete thought, answers turns, and stops,
holds or releases the agent's answer when the user barges in. What to do is the policy's
business; how (tasks, audio, events) is this module's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxgate.model.backbone import Backbone
from voxgate.model.types import Role, Transcription, TurnTrace
from voxgate.streaming.config import SessionConfig, TurnDetection
from voxgate.streaming.conversation import Conversation
from voxgate.streaming.events import (
    ErrorReported,
    InputCommitted,
    InputTranscribed,
    InputTranscriptionFailed,
    Item,
    ItemAdded,
    ItemDone,
    SessionEvent,
    SpeechStartedEvent,
    SpeechStoppedEvent,
)
from voxgate.streaming.listening import Listener
from voxgate.streaming.outbox import Outbox
from voxgate.streaming.requests import ResponseRequest, new_id
from voxgate.streaming.responding import Responder, Running
from voxgate.streaming.turn_decisions import (
    Adopt,
    Answer,
    AnswerEarly,
    AnswerOnRequest,
    Commit,
    Configured,
    Decision,
    DropDraft,
    DropSpeculation,
    EarlyTranscript,
    EndTurnNow,
    Hold,
    Interrupt,
    Release,
    ReleaseDraft,
    ResponseRequested,
    SetMinSpeech,
    SetSilence,
    Speculate,
    StopHeld,
    Transcript,
    TurnInput,
    Unanswered,
    UserCleared,
    UserCommitted,
    UserFinished,
    UserPaused,
    UserResumed,
    UserStarted,
)
from voxgate.streaming.turn_policy import TurnPolicy
from voxgate.streaming.turns import SpeechResumed, TurnEnded, TurnEvent, TurnMayEnd
from voxgate.streaming.vad import SpeechStarted, SpeechStopped

log = logging.getLogger(__name__)

Words = Transcription | Exception
"""What ASR made of a turn: its transcription, or why it failed."""


@dataclass(slots=True)
class _Speech:
    """The user's current turn, between speech_started and commit."""

    item_id: str
    trace: TurnTrace = field(default_factory=TurnTrace)


@dataclass(frozen=True, slots=True)
class _Heard:
    """The audio of the user's turn that a decision about it works on."""

    speech: _Speech
    audio: np.ndarray
    speech_end_at: float | None = None
    """Monotonic arrival time of the turn's last voiced audio."""


@dataclass(slots=True)
class _Speculation:
    """Work started on a turn that has probably ended (speculative start): its words, and
    perhaps an early answer, held until the turn does end."""

    number: int
    speech: _Speech
    audio: np.ndarray
    trace: TurnTrace
    words: asyncio.Task[Words]
    text: str = ""
    answer: Running | None = None


class TurnTaker:
    """One session's turn-taking: its `TurnPolicy`, and the work that carries it out."""

    def __init__(
        self,
        backbone: Backbone,
        listener: Listener,
        conversation: Conversation,
        responder: Responder,
        outbox: Outbox,
        transcribing: dict[str, asyncio.Task[None]],
        config: Callable[[], SessionConfig],
    ) -> None:
        self._backbone = backbone
        self._listener = listener
        self._conversation = conversation
        self._responder = responder
        self._outbox = outbox
        self._transcribing = transcribing
        """ASR under way, by item id (an answer waits for it)."""
        self._config = config
        self._policy = TurnPolicy()
        self._traces: dict[str, TurnTrace] = {}
        """The traces of committed turns the policy may still answer (by item id)."""
        self._speech: _Speech | None = None
        self._speculation: _Speculation | None = None
        self._draft: _Speculation | None = None
        """An adopted speculation whose early answer waits for the turn's words."""

    # --- what happened ------------------------------------------------------------------

    async def configured(self, detection: TurnDetection | None) -> None:
        """Turn detection was (re)set; the listener has a fresh detector for it."""
        await self.report(Configured(detection))

    async def on_turn_events(self, events: list[TurnEvent]) -> None:
        for event in events:
            await self._on_turn_event(event)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        match event:
            case SpeechStarted(audio_start_ms=start_ms):
                speech = self._speech = _Speech(new_id("item"))
                await self._carry_out(
                    self._policy.step(UserStarted(speech.item_id)),
                    announce=SpeechStartedEvent(speech.item_id, start_ms),
                )
            case SpeechStopped(audio_end_ms=end_ms):
                speech = self._speech or _Speech(new_id("item"))
                self._speech = speech
                await self._outbox.emit(SpeechStoppedEvent(speech.item_id, end_ms))
            case TurnMayEnd(audio=samples) if self._speech is not None and len(samples):
                heard = _Heard(self._speech, samples, event.speech_end_at)
                await self.report(UserPaused(self._speech.item_id), heard)
            case SpeechResumed():
                await self.report(UserResumed())
            case TurnEnded(audio=samples, speech_end_at=speech_end_at):
                speech = self._speech or _Speech(new_id("item"))
                self._speech = None
                if speech_end_at is not None:
                    speech.trace.mark("speech_end", speech_end_at)
                speech.trace.mark("turn_end")
                await self.report(UserFinished(speech.item_id), _Heard(speech, samples))

    async def commit(self, samples: np.ndarray) -> None:
        """The client committed the input buffer (`samples`)."""
        speech = self._speech or _Speech(new_id("item"))
        self._speech = None
        speech.trace.mark("turn_end")
        await self.report(UserCommitted(speech.item_id), _Heard(speech, samples))

    async def clear(self) -> None:
        """The client cleared the input buffer."""
        self._speech = None
        await self.report(UserCleared())

    def requested(self) -> TurnTrace:
        """The client asked for a response: the trace of the turn it answers."""
        trace = TurnTrace()
        for decision in self._policy.step(ResponseRequested()):
            assert isinstance(decision, AnswerOnRequest)
            trace = self._traces.pop(decision.turn)
        return trace

    async def report(self, event: TurnInput, heard: _Heard | None = None) -> None:
        """Tell the policy what happened, and carry out what it decides."""
        await self._carry_out(self._policy.step(event), heard)

    # --- carrying out decisions ---------------------------------------------------------

    async def _carry_out(
        self,
        decisions: list[Decision],
        heard: _Heard | None = None,
        announce: SessionEvent | None = None,
    ) -> None:
        """Carry out `decisions` in order; `announce` goes out once the agent's output has
        stopped or paused: that takes back its unsent audio, so the announcement is not stuck
        behind it."""
        stopped: Running | None = None
        for decision in decisions:  # at once, before anything that may wait
            match decision:
                case Interrupt(response=response):
                    log.info("the user interrupts response %s", response)
                    stopped = self._responder.stop("turn_detected")
                case Hold():
                    self._responder.hold()
                case StopHeld(response=response):
                    log.info("the user interrupted held response %s", response)
                    self._responder.stop_held()
                case Commit(turn=turn):
                    assert heard is not None
                    self._traces[turn] = heard.speech.trace
                case Adopt(turn=turn, speculation=number):
                    assert self._speculation is not None and self._speculation.number == number
                    self._traces[turn] = self._speculation.trace
        if announce is not None:
            await self._outbox.emit(announce)
        for decision in decisions:
            await self._do(decision, heard, stopped)

    async def _do(self, decision: Decision, heard: _Heard | None, stopped: Running | None) -> None:
        match decision:
            case SetMinSpeech(ms=ms):
                self._listener.set_thresholds(min_speech_ms=ms)
            case SetSilence(ms=ms):
                self._listener.set_thresholds(silence_duration_ms=ms)
            case Speculate(speculation=number):
                assert heard is not None
                self._speculate(number, heard)
            case EndTurnNow(speculation=number):
                events = await self._listener.end_turn_now(lambda: self._is_on(number))
                await self.on_turn_events(events)
            case AnswerEarly(speculation=number):
                await self._answer_early(number)
            case DropSpeculation(speculation=number):
                await self._drop(self._take_speculation(number))
            case Adopt(speculation=number):
                assert heard is not None
                await self._adopt(self._take_speculation(number), heard.audio)
            case Commit():
                assert heard is not None
                await self._commit(heard.speech.item_id, heard.speech.trace, heard.audio)
            case ReleaseDraft(turn=turn):
                draft = self._take_draft(turn)
                self._traces.pop(turn, None)
                assert draft.answer is not None
                await self._responder.adopt(draft.answer)
            case DropDraft(turn=turn):
                await self._stop_early_answer(self._take_draft(turn))
            case Answer(turn=turn):
                await self._responder.start(ResponseRequest(), self._traces.pop(turn))
            case Unanswered(turn=turn, why=why):
                self._traces.pop(turn, None)
                log.info("turn %s is not answered: %s", turn, why)
            case Interrupt() if stopped is not None:
                await self._responder.wait_cancelled(stopped)
            case StopHeld():
                await self._responder.finish_held()
            case Release():
                await self._responder.release_held()

    # --- speculative start ----------------------------------------------------------------

    def _speculate(self, number: int, heard: _Heard) -> None:
        """The user paused: transcribe (and perhaps answer) now, in case the turn ends here."""
        trace = TurnTrace()
        if heard.speech_end_at is not None:
            trace.mark("speech_end", heard.speech_end_at)
        words = self._outbox.spawn(self._words(heard.audio, trace))
        spec = _Speculation(number, heard.speech, heard.audio, trace, words)
        self._speculation = spec
        self._outbox.spawn(self._hear_early(spec))

    async def _hear_early(self, spec: _Speculation) -> None:
        result = await spec.words
        if isinstance(result, Exception):
            log.error("speculative transcription failed", exc_info=result)
            return
        spec.text = result.text
        await self.report(EarlyTranscript(spec.number, result.text))

    async def _answer_early(self, number: int) -> None:
        spec = self._speculation
        assert spec is not None and spec.number == number
        provisional = Item(
            spec.speech.item_id, Role.USER, audio=True, transcript=spec.text, samples=spec.audio
        )
        request = ResponseRequest(provisional=provisional)
        spec.answer = await self._responder.start(request, spec.trace, held=True)

    def _is_on(self, number: int) -> bool:
        return self._speculation is not None and self._speculation.number == number

    def _take_speculation(self, number: int) -> _Speculation:
        spec, self._speculation = self._speculation, None
        assert spec is not None and spec.number == number
        return spec

    def _take_draft(self, turn: str) -> _Speculation:
        draft, self._draft = self._draft, None
        assert draft is not None and draft.speech.item_id == turn
        return draft

    async def _drop(self, spec: _Speculation) -> None:
        """The early work is not used: stop it (the engine request is aborted)."""
        spec.words.cancel()
        await self._stop_early_answer(spec)

    async def _stop_early_answer(self, spec: _Speculation) -> None:
        if spec.answer is not None:
            await self._responder.discard(spec.answer)  # without a word to the client

    async def _adopt(self, spec: _Speculation, samples: np.ndarray) -> None:
        """The turn ended where it paused: commit it with the words heard early (its early
        answer, if any, waits for them)."""
        spec.trace.mark("turn_end")
        if spec.answer is not None:
            self._draft = spec
        await self._commit(spec.speech.item_id, spec.trace, samples, spec.words)

    # --- committed turns ----------------------------------------------------------------

    async def _commit(
        self,
        item_id: str,
        trace: TurnTrace,
        samples: np.ndarray,
        words: Awaitable[Words] | None = None,
    ) -> None:
        """Commit a user turn and transcribe it (or take the words already on their way)."""
        item = Item(item_id, Role.USER, audio=True)
        self._conversation.keep_voice(item, samples)
        previous = self._conversation.append(item)
        await self._outbox.emit(InputCommitted(item.id, previous))
        await self._outbox.emit(ItemAdded(item, previous))
        self._start_transcribing(item, trace, words or self._words(samples, trace))

    def transcribe(self, item: Item, samples: np.ndarray) -> None:
        """Give a client's audio item the transcript of `samples`."""
        trace = TurnTrace()
        self._start_transcribing(item, trace, self._words(samples, trace))

    def _start_transcribing(self, item: Item, trace: TurnTrace, words: Awaitable[Words]) -> None:
        """Transcribe in a task an answer can wait for (`transcribing`)."""
        self._transcribing[item.id] = self._outbox.spawn(self._transcribe(item, trace, words))

    async def _words(self, samples: np.ndarray, trace: TurnTrace) -> Words:
        trace.mark("asr_start")
        try:
            return await self._backbone.transcribe(samples, **self._asr_options())
        except Exception as e:
            return e
        finally:
            trace.mark("asr_end")

    async def _transcribe(self, item: Item, trace: TurnTrace, words: Awaitable[Words]) -> None:
        try:
            result = await words
        finally:
            self._transcribing.pop(item.id, None)
        if isinstance(result, Exception):
            log.error("transcription of %s failed", item.id, exc_info=result)
            item.transcript = ""
            item.samples = None  # a turn not understood is not answered, nor kept as voice
            await self._transcription_failed(item, str(result) or type(result).__name__)
        else:
            item.transcript = result.text
            if not result.text.strip():
                item.samples = None  # a turn without words is not answered, nor kept as voice
            if self._config().transcription is not None:
                await self._outbox.emit(InputTranscribed(item.id, result.text, result.duration_s))
        await self._outbox.emit(ItemDone(item))
        # In a task of its own: an answer waits for this one to end (`_start_transcribing`).
        self._outbox.spawn(self.report(Transcript(item.id, item.transcript or "")))

    async def _transcription_failed(self, item: Item, reason: str) -> None:
        """Tell the client that a user turn could not be transcribed (so it goes unanswered):
        as OpenAI does when it asked for transcripts, else with an `error`, never silently."""
        if self._config().transcription is not None:
            await self._outbox.emit(InputTranscriptionFailed(item.id, reason))
            return
        await self._outbox.emit(
            ErrorReported(
                "transcription_failed",
                f"the user audio of item {item.id} could not be transcribed ({reason}); "
                "it is not answered",
                type="server_error",
            )
        )

    def _asr_options(self) -> dict[str, Any]:
        transcription = self._config().transcription
        if transcription is None:
            return {}
        return {"language": transcription.language, "prompt": transcription.prompt}
