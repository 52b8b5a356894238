"""`/v1/realtime`: one WebSocket connection = one `RealtimeSession`, run by a reader and a writer.

The reader parses each client event once, at the edge, and calls the session; anything wrong
with an event becomes an `error` event carrying its `event_id`, and the connection carries on.
The writer turns session events into wire events, in order, and is the only task that sends
(besides the closers, which send a last `error` and close, under the same lock). With feedback
capture on, the session's answers go to the feedback store (`server/feedback_capture.py`), and
the reader takes the client's ratings of them.

A connection ends when the client hangs up, or the server ends it with an `error` and a close
code: the drain (1001), an idle or too old session (`idle_timeout`, `session_expired`: 1000),
the engine's death (`engine_unavailable`: 1011). Refusals before a session starts (wrong key,
too many sessions, draining) are an `error` event and a close; once the engine is dead, and
for a page of a foreign origin (`server/browsers.py`), the handshake itself is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from voxgate.server import auth, feedback_capture, json_input, logs, metrics, protocol, translate
from voxgate.server.drain import CLOSE_GOING_AWAY, TurnActivity
from voxgate.server.engine_watch import MESSAGE as ENGINE_DEAD_MESSAGE
from voxgate.server.errors import validation_error
from voxgate.server.feedback_capture import SessionCapture
from voxgate.server.outgoing import Outgoing, error_event
from voxgate.server.protocol import (
    ConversationItemCreate,
    ConversationItemDelete,
    ConversationItemRetrieve,
    ConversationItemTruncate,
    FeedbackCreate,
    InputAudioBufferAppend,
    InputAudioBufferClear,
    InputAudioBufferCommit,
    OutputAudioBufferClear,
    PreferenceCreate,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    Unsupported,
)
from voxgate.streaming.events import ErrorReported, OutputAudioDelta, ResponseFinished
from voxgate.streaming.session import Queued, RealtimeSession, SessionRejected, new_id
from voxgate.streaming.timings import turn_timings

if TYPE_CHECKING:
    from voxgate.server.services import Services
    from voxgate.streaming.config import SessionConfig

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
PARSE_IN_THREAD_BYTES = 64 << 10
"""Events larger than this (audio appends, long instructions) are parsed in a worker thread:
JSON and validation of megabytes would hold the event loop for every other session."""


async def realtime_endpoint(websocket: WebSocket) -> None:
    await RealtimeConnection(websocket, websocket.app.state.services).run()


class RealtimeConnection:
    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self._ws = websocket
        self._services = services
        self._settings = services.settings.realtime
        self._metrics = metrics.SessionMetrics(services.backbone.name)
        self._activity = TurnActivity()
        self._send_lock = asyncio.Lock()
        """Held by whoever sends: the writer, or a closer ending the socket between events."""
        self._ended_by: str | None = None
        """Why the server closed the connection (a sessions_ended reason), if it did."""
        self._last_heard = time.monotonic()
        """When the client last sent anything (the idle timeout counts from here)."""
        self._capture: SessionCapture | None = None
        """The session's answers into the feedback store (None: capture is off)."""

    async def run(self) -> None:
        ws = self._ws
        services = self._services
        if services.engine_watch.dead:
            await self._deny(503, "engine_unavailable", ENGINE_DEAD_MESSAGE)
            return
        if not auth.is_authorised(ws, services.settings.api_key):
            await self._refuse(
                "invalid_api_key", "missing or wrong API key", CLOSE_POLICY_VIOLATION
            )
            return
        if services.drain.draining:
            await self._refuse(
                "server_shutting_down",
                "this server is shutting down; connect again to reach another one",
                CLOSE_TRY_AGAIN_LATER,
            )
            return
        secret = auth.client_secret(ws)  # a client secret's session config is the initial one
        if secret is not None and not services.client_secrets.open_session(secret):
            await self._refuse(
                "session_limit_reached",
                f"this client secret already has {services.client_secrets.max_sessions} "
                "sessions open; close one or mint another secret",
                CLOSE_TRY_AGAIN_LATER,
            )
            return
        try:
            if not services.sessions.try_acquire():
                await self._refuse(
                    "session_limit_reached",
                    f"this server is at its limit of {self._settings.max_sessions} realtime "
                    "sessions; try again later",
                    CLOSE_TRY_AGAIN_LATER,
                )
                return
            try:
                await self._serve(secret.config if secret else services.default_session_config())
            finally:
                services.sessions.release()
        finally:
            if secret is not None:
                services.client_secrets.close_session(secret)

    async def _serve(self, config: SessionConfig) -> None:
        ws = self._ws
        services = self._services
        session_id = new_id("sess")
        logs.SESSION_ID.set(session_id)  # for every log line of this connection's tasks
        store = services.feedback
        if store.enabled:
            priority = services.settings.rest.priority  # a second candidate is batch work
            self._capture = SessionCapture(store, session_id, services.model_name, priority)
        session = RealtimeSession(
            services.backbone,
            services.new_vad,
            config,
            self._settings.session,
            services.out_of_band_responses,
            services.voices,
            services.rnnoise.suppressor if services.rnnoise is not None else None,
            answer_log=self._capture,
        )
        suppressor = services.settings.realtime.noise_suppressor if services.rnnoise else None
        feedback = feedback_capture.capture_object(store)
        outgoing = Outgoing(session_id, services.model_name, suppressor, feedback)
        try:
            await ws.accept(subprotocol=auth.reply_subprotocol(ws))
            log.info("realtime session %s opened", session_id)
            self._metrics.opened()
            ended = "server_error"
            try:
                await session.start()
                async with asyncio.TaskGroup() as tasks:
                    closers = [
                        tasks.create_task(self._write(session, outgoing)),
                        tasks.create_task(self._close_when_drained()),
                        tasks.create_task(self._close_when_engine_dies()),
                        tasks.create_task(self._close_when_expired()),
                    ]
                    await self._read(session)
                    for task in closers:
                        task.cancel()
                ended = self._ended_by or "client_closed"
            except asyncio.CancelledError:
                ended = "cancelled"
                raise
            except Exception:
                # A failure of the connection itself (not of one event): say so, close 1011.
                log.exception("realtime session %s failed", session_id)
                await self._end(
                    "server_error",
                    "the session failed inside the server; connect again",
                    CLOSE_INTERNAL_ERROR,
                    "server_error",
                )
            finally:
                await session.close()
                self._metrics.closed(ended)
        finally:
            if self._capture is not None:
                await self._capture.close()  # after the session: it writes what is left
            log.info("realtime session %s closed", session_id)

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        error = ErrorReported(code, message)
        metrics.session_refused(code)
        # A client that leaves before hearing why is no failure of the server.
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
            await self._ws.accept(subprotocol=auth.reply_subprotocol(self._ws))
            await self._ws.send_text(error_event(error).to_json())
            await self._ws.close(close_code, message[:120])

    async def _deny(self, status: int, code: str, message: str) -> None:
        """Refuse the handshake itself with an HTTP error (OpenAI's body shape)."""
        metrics.session_refused(code)
        retry = {"Retry-After": str(self._services.settings.rest.retry_after_s)}
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
            await self._ws.send_denial_response(JSONResponse(body, status, headers=retry))

    async def _end(self, code: str, message: str, close_code: int, reason: str) -> None:
        """Send a last `error` and close the connection (between two events of the writer)."""
        async with self._send_lock:
            if self._ended_by is not None:
                return
            self._ended_by = reason
            error = error_event(ErrorReported(code, message, type="server_error"))
            metrics.REALTIME_ERRORS.labels(code=code).inc()
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
                await self._ws.send_text(error.to_json())
                await self._ws.close(close_code, message[:120])

    # --- writer ---------------------------------------------------------------------------

    async def _write(self, session: RealtimeSession, outgoing: Outgoing) -> None:
        connected = True
        while True:
            event = await session.events.get()
            if not connected:
                # The client is gone. Keep draining so nothing in the session blocks on a full
                # queue; the reader sees the disconnect and ends the session.
                self._done_with(event)
                continue
            try:
                async with self._send_lock:
                    if self._ended_by is not None:
                        connected = False  # a closer has ended the connection
                        self._done_with(event)
                        continue
                    for wire in outgoing.wire_events(event):
                        await self._ws.send_text(wire.to_json())
            except (WebSocketDisconnect, WebSocketDisconnected, OSError):
                # The client is gone (uvicorn's ClientDisconnected is an OSError). Anything
                # else is a bug: it propagates and the connection ends with `server_error`.
                connected = False
                self._done_with(event)
                continue
            if isinstance(event, OutputAudioDelta) and (
                "first_audio_sent" not in event.response.trace.marks
            ):
                event.response.trace.mark("first_audio_sent")
                self._metrics.first_audio_sent(event.response)
            self._metrics.sent(event)
            self._activity.observe(event, session.config.turn_detection)
            self._done_with(event)
            if isinstance(event, ResponseFinished):
                _log_finished(event)

    def _done_with(self, event: Queued) -> None:
        """The writer is done with `event` (sent, or the client is gone): an answer's
        capture is written once its `response.done` is."""
        if self._capture is not None and isinstance(event, ResponseFinished):
            self._capture.sent(event)

    async def _close_when_drained(self) -> None:
        """When the server drains: close with 1001 between turns, or at the drain's deadline."""
        await self._services.drain.until_quiet(self._activity.quiet)
        async with self._send_lock:
            if self._ended_by is not None:
                return
            self._ended_by = "draining"
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
                await self._ws.close(CLOSE_GOING_AWAY, "server shutting down")

    async def _close_when_engine_dies(self) -> None:
        await self._services.engine_watch.failed.wait()
        await self._end(
            "engine_unavailable", ENGINE_DEAD_MESSAGE, CLOSE_INTERNAL_ERROR, "engine_unavailable"
        )

    async def _close_when_expired(self) -> None:
        """End the session at its maximum age, or once it has been idle too long: nothing
        heard from the client and no turn under way."""
        idle_s, max_age_s = self._settings.idle_timeout_s, self._settings.max_session_s
        started = time.monotonic()
        while True:
            now = time.monotonic()
            if max_age_s is not None and now >= started + max_age_s:
                minutes = max_age_s / 60
                await self._end(
                    "session_expired",
                    f"the session reached its maximum duration of {minutes:g} minutes",
                    CLOSE_NORMAL,
                    "session_expired",
                )
                return
            if idle_s is not None and now >= self._last_heard + idle_s:
                if self._activity.quiet.is_set():
                    await self._end(
                        "idle_timeout",
                        f"nothing was received for {idle_s:g} s; the session is closed",
                        CLOSE_NORMAL,
                        "idle_timeout",
                    )
                    return
                self._last_heard = now  # an answer under way is not idleness
            deadlines = []
            if idle_s is not None:
                deadlines.append(self._last_heard + idle_s)
            if max_age_s is not None:
                deadlines.append(started + max_age_s)
            if not deadlines:
                return
            # Sleep to the nearer deadline, then look again (the client may have spoken).
            await asyncio.sleep(max(0.0, min(deadlines) - now))

    # --- reader ---------------------------------------------------------------------------

    async def _read(self, session: RealtimeSession) -> None:
        while True:
            message = await self._ws.receive()
            received_at = self._last_heard = time.monotonic()
            if message["type"] == "websocket.disconnect":
                return
            if (text := message.get("text")) is None:
                await session.report_error(
                    ErrorReported(
                        "invalid_event", "binary frames are not supported; send JSON text"
                    )
                )
                continue
            await self._handle(session, text, received_at)

    async def _handle(self, session: RealtimeSession, text: str, received_at: float) -> None:
        parsed = _Parsed()
        try:
            if len(text) > PARSE_IN_THREAD_BYTES:
                await asyncio.to_thread(_parse_event, text, self._settings.max_event_bytes, parsed)
            else:
                _parse_event(text, self._settings.max_event_bytes, parsed)
            await self._dispatch(session, parsed.event, received_at)
        except SessionRejected as e:
            await session.report_error(
                ErrorReported(e.code, e.message, param=e.param, event_id=parsed.event_id)
            )
        except ValidationError as e:
            await session.report_error(validation_error(e, parsed.event_id))
        except Unsupported as e:
            await session.report_error(
                ErrorReported(
                    "unsupported_feature", str(e), param=e.param, event_id=parsed.event_id
                )
            )
        except Exception:
            # A bug in handling one event must not end a healthy session: log it, say so.
            log.exception("failed to handle a client event")
            await session.report_error(
                ErrorReported(
                    "server_error",
                    "the server failed to handle this event",
                    "server_error",
                    event_id=parsed.event_id,
                )
            )

    async def _dispatch(self, session: RealtimeSession, event: Any, received_at: float) -> None:
        match event:
            case InputAudioBufferAppend(audio=data):
                audio = await _decoded(data, "audio")
                await session.append_audio(audio, received_at)
                self._metrics.audio_received(len(audio), session.config.input_format)
            case SessionUpdate(session=params):
                try:
                    # Tool schemas are checked here: CPU work, off the event loop.
                    config = await asyncio.to_thread(
                        translate.session_config, session.config, params, session.limits
                    )
                except ValidationError as e:
                    raise SessionRejected(
                        "invalid_value", str(e.errors()[0]["msg"]), "session"
                    ) from e
                await session.configure(config)
            case InputAudioBufferCommit():
                await session.commit()
            case InputAudioBufferClear():
                await session.clear()
            case ConversationItemCreate(item=wire, previous_item_id=previous):
                item, audio = translate.conversation_item(wire, new_id("item"))
                param = "item.content[0].audio"
                data = await _decoded(audio, param) if audio is not None else None
                await session.add_item(item, previous, data)
            case ConversationItemDelete(item_id=item_id):
                await session.delete_item(item_id)
            case ConversationItemRetrieve(item_id=item_id):
                await session.retrieve_item(item_id)
            case ConversationItemTruncate(
                item_id=item_id, content_index=index, audio_end_ms=end_ms
            ):
                await session.truncate_item(item_id, index, end_ms)
            case ResponseCreate(response=params):
                request = await asyncio.to_thread(
                    translate.response_request, params, session.config.tools, session.limits
                )
                await session.create_response(request, translate.candidates(params))
            case ResponseCancel(response_id=response_id):
                await session.cancel_response(response_id)
            case OutputAudioBufferClear():
                raise Unsupported("type", "output_audio_buffer.clear (a WebRTC/SIP event)")
            case FeedbackCreate():
                store = self._services.feedback
                await session.reply(await feedback_capture.rate(store, self._capture, event))
            case PreferenceCreate():
                store = self._services.feedback
                await session.reply(await feedback_capture.prefer(store, self._capture, event))
            case _:
                raise AssertionError(f"unhandled client event {event!r}")


def _log_finished(event: ResponseFinished) -> None:
    response = event.response
    timings = {k: round(v * 1000, 1) for k, v in turn_timings(response.trace).items()}
    with logs.response_context(response.id):
        log.info(
            "response %s %s (turn latency %s ms)",
            response.id,
            response.status.value,
            timings.get("turn_latency", "n/a"),
            extra={
                "status": response.status.value,
                "reason": response.reason,
                "timings_ms": timings,
            },
        )


class _Parsed:
    """What parsing a client event found out, kept even when it fails part way (the
    `event_id` goes into the error)."""

    event_id: str | None = None
    event: Any = None


def _parse_event(text: str, max_bytes: int, out: _Parsed) -> None:
    """Parse and validate one client event into `out` (CPU work: big ones run in a thread)."""
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise SessionRejected(
            "message_too_large",
            f"event of {len(text.encode())} bytes exceeds the limit of {max_bytes} bytes; "
            "send audio in smaller appends",
        )
    try:
        raw = json_input.loads(text)
    except json_input.InvalidJson as e:
        raise SessionRejected("invalid_json", f"the message is {e}") from e
    if not isinstance(raw, dict):
        raise SessionRejected("invalid_event", "an event must be a JSON object")
    out.event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise SessionRejected("missing_required_parameter", "every event needs a `type`", "type")
    if kind not in protocol.CLIENT_EVENT_TYPES:
        raise SessionRejected("unknown_event_type", f"unknown event type {kind!r}", "type")
    out.event = protocol.CLIENT_EVENT.validate_python(raw)


async def _decoded(data: str, param: str) -> bytes:
    """Base64 audio decoded; megabytes of it in a worker thread."""
    if len(data) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(_b64_audio, data, param)
    return _b64_audio(data, param)


def _b64_audio(data: str, param: str) -> bytes:
    try:
        audio = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SessionRejected("invalid_audio", f"{param} is not valid base64: {e}", param) from e
    if not audio:
        raise SessionRejected("invalid_audio", f"{param} is empty", param)
    return audio
