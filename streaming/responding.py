"""The conversation's responses: running them (`streaming/answering.py` streams what the
backbone says), stopping, holding and releasing their output, and folding what no longer fits
into the summary.

One response at a time answers in the conversation (`Responder.running`); out-of-band ones
(`conversation: "none"`) run beside it, bounded per session and over the server. A response
is stopped by cancelling its task; the task then reports `response.done` itself. A held
response keeps its events (`Response.held`) until it is released. Turn-taking hears when the
conversation's response begins and stops, and when the client is told a response is done.

With an `AnswerLog` (feedback capture on), each response is logged just before the client is
told it is done: the context the backbone was given, what it said, how it ended, and its audio
when the log keeps audio. A turn may then be answered by two candidates
(`streaming/candidates.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from voxgate.model.backbone import Backbone
from voxgate.model.memory import SUMMARY_PRIORITY
from voxgate.model.types import BackboneError, ResponseOptions, Role, ToolCall, Turn, TurnTrace
from voxgate.model.voices import VoiceBook
from voxgate.streaming.answer_log import AnswerLog
from voxgate.streaming.answer_notes import AnswerNotes
from voxgate.streaming.answering import stream_answer
from voxgate.streaming.candidates import Candidate, Pair, finished, remade
from voxgate.streaming.config import SessionConfig, SessionLimits
from voxgate.streaming.conversation import Conversation
from voxgate.streaming.events import (
    CancelReason,
    ErrorReported,
    Item,
    ItemDeleted,
    ItemStatus,
    OutputAudioDelta,
    OutputItemFinished,
    OutputItemStarted,
    ReasoningDone,
    Response,
    ResponseFinished,
    ResponseStarted,
    ResponseStatus,
    SummaryUpdated,
    response_id,
)
from voxgate.streaming.outbox import Outbox
from voxgate.streaming.requests import ResponseRequest, SessionRejected, new_id
from voxgate.streaming.slots import Slots
from voxgate.streaming.turn_decisions import ResponseBegan, ResponseDone, ResponseEnded, TurnInput

log = logging.getLogger(__name__)

REASONING_SHARES = {"minimal": 1 / 16, "low": 1 / 4, "medium": 1 / 2, "high": 3 / 4, "xhigh": 1.0}
"""The share of `max_reasoning_tokens` each reasoning effort may think."""


@dataclass(slots=True)
class Running:
    response: Response
    task: asyncio.Task[None]


class Responder:
    """Runs one session's responses; `running` is the conversation's, until it stops."""

    def __init__(
        self,
        backbone: Backbone,
        voices: VoiceBook,
        limits: SessionLimits,
        conversation: Conversation,
        outbox: Outbox,
        *,
        config: Callable[[], SessionConfig],
        transcribing: Mapping[str, asyncio.Task[None]],
        report: Callable[[TurnInput], Awaitable[None]],
        silenced: Callable[[], None],
        out_of_band_slots: Slots,
        answer_log: AnswerLog | None = None,
    ) -> None:
        self._backbone = backbone
        self._voices = voices
        """The backbone's voices and their aliases: a session keeps the name its client chose."""
        self._limits = limits
        self._conversation = conversation
        self._outbox = outbox
        self._config = config
        """The session's configuration now."""
        self._transcribing = transcribing
        """The session's ASR under way, by item id: an answer waits for it."""
        self._report = report
        """Tells turn-taking what happened to a response."""
        self._silenced = silenced
        """The client stops playing the agent's audio (the echo guard's reference ends)."""
        self._out_of_band_slots = out_of_band_slots
        """Out-of-band responses over the whole server (a session's own cap is in limits)."""
        self._out_of_band: dict[str, Running] = {}
        """Out-of-band responses of this session running now, by response id."""
        self._reserved = 0
        """Out-of-band slots taken for responses not started yet."""
        self._notes = AnswerNotes(answer_log)
        """What the answer log (if any) will be told of each response."""
        self._closed = False
        self.running: Running | None = None
        """The conversation's response, until it stops."""
        self._held: Running | None = None
        """The conversation's response held back by a possible interruption."""
        self._folding: asyncio.Task[None] | None = None

    def max_tokens(self, wanted: int | Literal["inf"] | None) -> int:
        """An answer's token budget: what was asked, within the server's cap ("inf": the cap)."""
        cap = self._limits.answer_cap(self._backbone.answer_budget)
        return cap if wanted in (None, "inf") else min(int(wanted), cap)

    def take_out_of_band_slot(self) -> None:
        """One more out-of-band response may start (`give_back_out_of_band_slot` if it does
        not)."""
        mine = self._limits.max_out_of_band_responses
        if len(self._out_of_band) + self._reserved >= mine:
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
        self._reserved += 1

    def give_back_out_of_band_slot(self) -> None:
        self._reserved -= 1
        self._out_of_band_slots.release()

    def close(self) -> None:
        """The session is closing: nothing new starts (its tasks are being cancelled)."""
        self._closed = True
        self.running = None

    # --- starting and stopping ------------------------------------------------------------

    async def start(
        self,
        request: ResponseRequest,
        trace: TurnTrace,
        *,
        held: bool = False,
        candidate: Candidate | None = None,
    ) -> Running:
        """Start a response task; a `held` one says nothing until it is released (and is not
        the conversation's response until then). An out-of-band one has its slot taken."""
        running = self._launch(request, trace, held, candidate)
        if request.in_conversation and not held:
            await self._begin(running)
        return running

    async def start_candidates(self, request: ResponseRequest, trace: TurnTrace) -> None:
        """Answer the turn twice (`streaming/candidates.py`); candidate 0 as `request` says,
        candidate 1 out of band once candidate 0 is over. Takes candidate 1's slot."""
        assert self._notes.log is not None, "candidates are for the answer log"
        self.take_out_of_band_slot()
        pair = Pair.asked(self._conversation, request.input_items)
        try:
            first = await self.start(request, trace, candidate=Candidate(pair, 0))
        except BaseException:
            self.give_back_out_of_band_slot()
            raise
        second = replace(request, in_conversation=False)

        def start_second(task: asyncio.Task[None]) -> None:
            if self._closed or (task.cancelled() and first.response.reason is None):
                self.give_back_out_of_band_slot()  # the session is closing
            else:
                self._launch(second, TurnTrace(), False, Candidate(pair, 1))

        first.task.add_done_callback(start_second)

    def _launch(
        self,
        request: ResponseRequest,
        trace: TurnTrace,
        held: bool,
        candidate: Candidate | None,
    ) -> Running:
        config = self._config()
        audio_output = config.audio_output if request.audio_output is None else request.audio_output
        max_tokens = self.max_tokens(request.max_output_tokens or config.max_output_tokens)
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
        self._notes.started(response, candidate)
        running = Running(
            response,
            self._outbox.spawn(self._run(response, request, candidate), name=response.id),
        )
        if not request.in_conversation:
            self._reserved -= 1  # its slot, taken before, is now held by the running task
            self._out_of_band[response.id] = running

            def done(_: asyncio.Task[None]) -> None:
                self._out_of_band.pop(response.id, None)
                self._out_of_band_slots.release()

            running.task.add_done_callback(done)
        return running

    async def _begin(self, running: Running) -> None:
        self.running = running
        await self._report(ResponseBegan(running.response.id, running.response.audio))

    async def end_running(self, response: Response) -> None:
        """`response` says no more: it is no longer the conversation's response under way."""
        if self.running is not None and self.running.response is response:
            self.running = None
            await self._report(ResponseEnded(response.id))

    async def cancel_out_of_band(self, response_id: str) -> bool:
        """response.cancel of an out-of-band response; False if there is none by that id."""
        other = self._out_of_band.get(response_id)
        if other is None:
            return False
        other.response.reason = "client_cancelled"
        other.task.cancel()
        await self.wait_cancelled(other)
        return True

    async def cancel(self, reason: CancelReason) -> None:
        running = self.stop(reason)
        if running is None:
            return
        await self.wait_cancelled(running)

    def stop(self, reason: CancelReason) -> Running | None:
        """Cancel the running response and take back its unsent audio (nobody will hear it,
        and a client busy sending must not wait for it to drain before being heard)."""
        running = self.running
        if running is None:
            return None
        running.response.reason = reason
        running.task.cancel()
        response = running.response
        self._outbox.purge(
            lambda e: isinstance(e, OutputAudioDelta) and e.response.id == response.id
        )
        self._silenced()  # the client stops playing it now
        return running

    async def discard(self, running: Running) -> None:
        """Drop an early answer nobody will hear: it ends without a word to the client, and
        nothing of it is logged."""
        running.task.cancel()  # reason None
        await asyncio.wait([running.task])
        self._notes.forget(running.response)

    async def wait_cancelled(self, running: Running) -> None:
        # The task reports response.done itself; wait so events stay in order.
        await asyncio.wait([running.task])
        if running.task.cancelled():
            # Cancelled before it ever ran (response.cancel right after response.create), so
            # it could not report: say for it that it started and was cancelled.
            await self.end_running(running.response)
            running.response.status = ResponseStatus.CANCELLED
            await self._outbox.emit(ResponseStarted(running.response))
            await self._finish(running.response, caused_by_request=False)

    # --- held output (a possible interruption, an early answer) ----------------------------

    def hold(self) -> None:
        """Pause the answer's output (the user may be interrupting): unsent audio waits too."""
        assert self.running is not None
        running = self._held = self.running
        response = running.response
        response.held = self._outbox.purge(lambda e: response_id(e) == response.id)

    def stop_held(self) -> None:
        """A held answer was interrupted after all: its audio is dropped, and it is cancelled
        (`finish_held` waits for it and sends the rest)."""
        assert self._held is not None
        response = self._held.response
        response.reason = "turn_detected"
        response.held = [e for e in response.held or [] if not isinstance(e, OutputAudioDelta)]
        self._held.task.cancel()
        self._silenced()

    async def finish_held(self) -> None:
        """The stopped held answer ends as interrupted, and what it said goes out."""
        running, self._held = self._held, None
        assert running is not None
        response = running.response
        await self.wait_cancelled(running)
        # It may have finished writing while held: it still ends as interrupted.
        response.status = ResponseStatus.CANCELLED
        for item in response.items:
            item.status = ItemStatus.INCOMPLETE
        response.held = [remade(e, response) for e in response.held or []]
        await self.release(response)

    async def release_held(self) -> None:
        """A false interruption: the held answer goes on where it paused."""
        running, self._held = self._held, None
        assert running is not None
        await self.release(running.response)

    async def adopt(self, running: Running) -> None:
        """An early answer is the answer to the turn now committed: it joins the conversation,
        runs on as its response, and what it said so far goes out."""
        response = running.response
        response.provisional = False  # items it starts from now on join at once
        if response.items:
            # The answer was written before the turn was committed: it follows it now.
            after = self._conversation.append(response.items[0], answer_of=response.id)
            response.held = [
                replace(e, previous_item_id=after) if isinstance(e, OutputItemStarted) else e
                for e in response.held or []
            ]
        if not running.task.done():
            await self._begin(running)
        await self.release(response)

    async def release(self, response: Response) -> None:
        """Send a response's held events, in order, and let the rest flow."""
        if any(isinstance(e, ResponseFinished) for e in response.held or ()):
            await self._notes.done(response)
        done = False
        while response.held:
            event = response.held.pop(0)
            self._outbox.note_sent_audio(event)
            await self._outbox.put(event)
            done = done or isinstance(event, ResponseFinished)
        response.held = None
        if done:
            await self._report(ResponseDone(response.id))

    # --- running ------------------------------------------------------------------------

    async def _run(
        self, response: Response, request: ResponseRequest, candidate: Candidate | None
    ) -> None:
        caused_by_request = False  # a failure the request itself caused (4xx, not 5xx)
        try:
            await self._outbox.emit(ResponseStarted(response))
            # A manual commit followed at once by response.create: its ASR may still be running.
            if pending := list(self._transcribing.values()):
                await asyncio.wait(pending)
            conversation = self._conversation
            context = request.input_items if request.input_items is not None else conversation.items
            summary = conversation.summary if request.input_items is None else ""
            if candidate is not None:  # both candidates answer the pair's context
                context, summary = candidate.pair.items, candidate.pair.summary
            if request.provisional is not None:
                context = [*context, request.provisional]
            entries = [
                (self._turn_of(i, text), i)
                for i in context
                if (text := i.content_text.strip()) or i.samples is not None
            ]
            config = self._config()
            effort = request.reasoning_effort or config.reasoning_effort
            options = ResponseOptions(
                request_id=response.id,
                instructions=request.instructions or config.instructions,
                voice=self._voices.resolve(response.voice),
                audio=response.audio,
                max_output_tokens=response.max_output_tokens,
                speed=config.speed,
                window=conversation.window if request.input_items is None else None,
                summary=summary,
                tools=request.tools if request.tools is not None else config.tools,
                tool_choice=request.tool_choice or config.tool_choice,
                reasoning_tokens=self._reasoning_budget(effort),
            )
            if candidate is not None and candidate.index > 0 and self._notes.log is not None:
                # Out of band and after the live answer: batch work for the engine.
                options = replace(options, window=None, priority=self._notes.log.candidate_priority)
            turns = [t for t, _ in entries]
            spoken = self._notes.asked(response, options, turns)
            outputs = self._backbone.respond(turns, options, response.trace)
            await stream_answer(
                outputs, response, self._outbox.emit, self._begin_item, self._limits, spoken
            )
            if response.context_start and request.input_items is None:
                # The oldest turns no longer fit: fold them into the summary, in the background.
                self._fold([i for _, i in entries[: response.context_start]])
        except asyncio.CancelledError:
            if response.reason is None:
                self._notes.forget(response)
                raise  # the session is closing, or an early answer is dropped: nobody to tell
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            response.status = ResponseStatus.CANCELLED
        except BackboneError as e:
            response.status, response.error = ResponseStatus.FAILED, (e.code, str(e))
            caused_by_request = e.status < 500
        except Exception:
            log.exception("response %s failed", response.id)
            response.status = ResponseStatus.FAILED
            response.error = ("server_error", "the response failed inside the server")
        await self.end_running(response)
        await self._finish(response, caused_by_request)

    async def _finish(self, response: Response, caused_by_request: bool) -> None:
        emit = self._outbox.emit
        candidate = self._notes.candidate(response)  # before its notes go with the log
        if response.reasoning and not response.reasoning_done:
            response.reasoning_done = True
            await emit(ReasoningDone(response))
        for index, item in enumerate(response.items):
            item.status = (
                ItemStatus.COMPLETED
                if response.status == ResponseStatus.COMPLETED
                else ItemStatus.INCOMPLETE
            )
            await emit(OutputItemFinished(response, item, index))
        if response.error is not None:
            # Before response.done: a client that ends its turn there must not miss it.
            code, message = response.error
            kind = "invalid_request_error" if caused_by_request else "server_error"
            await emit(ErrorReported(code, message, type=kind))
        end = finished(response, candidate)  # the response as it ends, now
        if response.held is None:  # else the client hears of it when it is released
            await self._notes.done(response)  # logged before the client is told
            await emit(end)
            await self._report(ResponseDone(response.id))
        else:
            await emit(end)

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
        return max(16, int(self._limits.max_reasoning_tokens * REASONING_SHARES[effort]))

    async def _begin_item(self, response: Response, item: Item) -> None:
        """An output item starts: it joins the conversation (unless the answer is still
        speculative) and the client hears of it."""
        joins = response.in_conversation and not response.provisional
        previous = self._conversation.append(item, answer_of=response.id) if joins else None
        response.items.append(item)
        await self._outbox.emit(
            OutputItemStarted(response, item, len(response.items) - 1, previous)
        )

    # --- compacted memory -----------------------------------------------------------------

    def _fold(self, items: list[Item]) -> None:
        """Fold `items` (older than the context holds) into the running summary, at low
        priority and off the turn's critical path; one fold at a time."""
        if self._folding is not None and not self._folding.done():
            return
        if items := [i for i in items if self._conversation.holds(i)]:
            self._folding = self._outbox.spawn(self._summarize(items))

    async def _summarize(self, items: list[Item]) -> None:
        turns = [Turn(self._role_of(i), i.content_text) for i in items if i.content_text.strip()]
        try:
            summary = await self._backbone.summarize(
                self._conversation.summary, turns, priority=SUMMARY_PRIORITY
            )
        except Exception:
            log.exception("folding %d items into the summary failed", len(items))
            return
        folded = self._conversation.fold(summary, items)
        for item in folded:
            await self._outbox.emit(ItemDeleted(item.id))
        await self._outbox.emit(SummaryUpdated(summary, len(folded)))
