"""Every voxgate Prometheus metric, and the small observers that fill them.

The metrics live in prometheus_client's default registry, which vLLM fills too (`vllm:*`:
running and waiting requests, KV-cache use, tokens, speculative decoding); `GET /metrics` serves
them all. Engine figures are vLLM's own and are not repeated here; `model/engine.py` adds
`voxgate_engine_requests_aborted_total` and the `voxgate_spec_decode_*` gauges derived from
vLLM's counters.

Where each figure is taken:
- realtime turns and sessions: `SessionMetrics`, one per connection, told by the connection's
  writer what it has just sent (`sent`), by its reader what audio it accepted, and by `run()`
  when the session starts and ends. Turn stages come from the response's `TurnTrace`, the same
  spans `response.done` reports in `x_voxgate.timings_ms` (`streaming/timings.py`).
- ASR and TTS real-time factors: `MeteredBackbone`, which wraps the backbone and times each
  `transcribe` call and each `synthesize` stream (realtime and REST alike).
- HTTP: `HttpMetrics`, an ASGI middleware (requests, status, time to the last body byte), and
  `rest_error` for the stable error codes of REST answers.
- feedback: the feedback store counts what it stored (`feedback_stored`, `preference_stored`),
  whichever way it came (realtime event or REST); a session's capture counts the answers it
  could not keep (`CAPTURES_DROPPED`).

Label values are bounded: backbone names, stage names, status codes, error codes, route
templates. Session and response ids never become labels (they are in the JSON logs instead).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxgate.model.backbone import Backbone
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    ResponseOptions,
    ResponseOutput,
    Transcription,
    Turn,
    TurnTrace,
    Voice,
)
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.events import (
    ErrorReported,
    OutputAudioDelta,
    Response,
    ResponseFinished,
    SessionEvent,
)
from voxgate.streaming.timings import TURN_STAGES, turn_timings

SPEECH_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0,
)  # fmt: skip
"""Seconds: from a fast GPU stage (tens of ms) to a slow CPU turn (seconds)."""
REAL_TIME_FACTOR_BUCKETS = (
    0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
"""Processing time / audio time: below 1 is faster than real time."""
SESSION_DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
HTTP_DURATION_BUCKETS = (*SPEECH_LATENCY_BUCKETS, 60.0, 120.0, 300.0)
"""A long transcription takes minutes."""

# --- realtime turns ---------------------------------------------------------------------------

TURN_LATENCY = Histogram(
    "voxgate_turn_latency_seconds",
    "Realtime turn latency: from the end of the user's speech to the first answer audio byte "
    "sent. Start: when the server received the last input audio message its VAD found voiced "
    "(the reader's receive time). End: when the writer finished sending the answer's first "
    "response.output_audio.delta on the WebSocket. Observed once per answer that sent audio, "
    "for turns ended by the server VAD; equals response.done's x_voxgate.timings_ms.turn_latency.",
    ["backbone"],
    buckets=SPEECH_LATENCY_BUCKETS,
)
TURN_STAGE = Histogram(
    "voxgate_turn_stage_seconds",
    "Where a realtime turn's latency goes, per stage, observed when the response ends (for each "
    "stage it went through): end_of_turn_wait (last voiced audio -> VAD ends the turn), asr "
    "(transcription of the turn), lm_first_token and lm_first_sentence (LM request submitted -> "
    "first token / first speakable clause), tts_first_chunk (that clause -> its first audio), "
    "server_overhead (turn latency minus end_of_turn_wait, asr, lm_first_sentence and "
    "tts_first_chunk: queues, scheduling, encoding, the socket).",
    ["backbone", "stage"],
    buckets=SPEECH_LATENCY_BUCKETS,
)
RESPONSES = Counter(
    "voxgate_responses",
    "Realtime responses by final status (completed, cancelled, incomplete, failed).",
    ["status"],
)
BARGE_INS = Counter(
    "voxgate_barge_ins",
    "Realtime responses cancelled because the user spoke over them (reason turn_detected).",
)
REALTIME_ERRORS = Counter(
    "voxgate_realtime_errors",
    "Error events sent to realtime clients, by their stable code (refusals of a connection too).",
    ["code"],
)

# --- realtime sessions ------------------------------------------------------------------------

SESSIONS_ACTIVE = Gauge("voxgate_sessions_active", "Realtime sessions open now.")
SESSIONS_STARTED = Counter("voxgate_sessions_started", "Realtime sessions accepted.")
SESSIONS_ENDED = Counter(
    "voxgate_sessions_ended",
    "Realtime sessions ended, by reason: client_closed (the client hung up), draining (the "
    "server closed it while shutting down), idle_timeout, session_expired (its maximum age), "
    "engine_unavailable (the engine died), server_error (the connection failed).",
    ["reason"],
)
SESSIONS_REFUSED = Counter(
    "voxgate_sessions_refused",
    "Realtime connections refused before a session started, by the error code they were sent "
    "(invalid_api_key, session_limit_reached, server_shutting_down).",
    ["reason"],
)
SESSION_DURATION = Histogram(
    "voxgate_session_duration_seconds",
    "How long realtime sessions lasted, from accept to close.",
    buckets=SESSION_DURATION_BUCKETS,
)
AUDIO_INPUT = Counter(
    "voxgate_session_audio_input_seconds",
    "Seconds of input audio accepted from realtime clients (input_audio_buffer.append).",
)
AUDIO_OUTPUT = Counter(
    "voxgate_session_audio_output_seconds",
    "Seconds of answer audio sent to realtime clients (response.output_audio.delta).",
)

# --- backbone regimes -------------------------------------------------------------------------

ASR_REAL_TIME_FACTOR = Histogram(
    "voxgate_asr_real_time_factor",
    "Transcription time / seconds of audio transcribed, per backbone transcribe() call "
    "(a realtime turn, or a piece of a REST upload).",
    ["backbone"],
    buckets=REAL_TIME_FACTOR_BUCKETS,
)
TTS_REAL_TIME_FACTOR = Histogram(
    "voxgate_tts_real_time_factor",
    "Synthesis time / seconds of audio synthesised, per backbone synthesize() stream (REST "
    "speech, one per sentence). Counts only the time spent waiting on the backbone, not on "
    "the client reading the stream.",
    ["backbone"],
    buckets=REAL_TIME_FACTOR_BUCKETS,
)
TTS_FIRST_CHUNK = Histogram(
    "voxgate_synthesis_first_chunk_seconds",
    "Backbone synthesize() call -> its first audio chunk (REST speech, per sentence). A "
    "realtime answer's equivalent is the tts_first_chunk stage of voxgate_turn_stage_seconds.",
    ["backbone"],
    buckets=SPEECH_LATENCY_BUCKETS,
)

# --- HTTP -------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "voxgate_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["endpoint", "method", "status"],
)
HTTP_DURATION = Histogram(
    "voxgate_http_request_duration_seconds",
    "HTTP request -> last byte of its answer (a streamed answer counts to its end), by route.",
    ["endpoint", "method"],
    buckets=HTTP_DURATION_BUCKETS,
)
REST_ERRORS = Counter(
    "voxgate_rest_errors",
    "REST error answers by route template and stable error code (400s, 429, 503, backbone "
    "failures, also those reported inside a stream).",
    ["endpoint", "code"],
)

# --- feedback ---------------------------------------------------------------------------------

FEEDBACK = Counter(
    "voxgate_feedback",
    "Ratings of answers stored (realtime voxgate.feedback.create and POST /v1/feedback), by the "
    "regime of the rated answer (realtime, speech) and the rating: up or down (thumbs), 1 to 5 "
    "(stars).",
    ["regime", "rating"],
)
FEEDBACK_PREFERENCES = Counter(
    "voxgate_feedback_preferences",
    "Preferred candidates of a pair stored (voxgate.preference.create and POST "
    "/v1/feedback/preferences), by the regime of the answers.",
    ["regime"],
)
CAPTURES_DROPPED = Counter(
    "voxgate_feedback_captures_dropped",
    "Captures of answers (or of their truncation, or of a pair) not kept, by reason: "
    "queue_full (a session already had its most writes waiting, or REST its most background "
    "recordings: the database is slow or down), store_error (the store failed to write it; "
    "logged with the error), "
    "session_closed (still waiting when the session had ended a while).",
    ["reason"],
)

DRAINING = Gauge(
    "voxgate_draining", "1 while the server is shutting down gracefully (draining), else 0."
)
ENGINE_DEAD = Gauge(
    "voxgate_engine_dead",
    "1 once the vLLM engine has died (the process then refuses work and exits), else 0.",
)
EVENT_LOOP_LAG = Histogram(
    "voxgate_event_loop_lag_seconds",
    "How late the event loop ran a timer set to fire every 100 ms: the time one piece of "
    "work held the loop (everything else, every session, waited that long).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def audio_seconds(nbytes: int, fmt: AudioFormat) -> float:
    return nbytes / (fmt.bytes_per_sample * fmt.sample_rate)


class SessionMetrics:
    """The metrics of one realtime connection, from what it accepted and sent."""

    def __init__(self, backbone: str) -> None:
        self._backbone = backbone
        self._opened_at: float | None = None

    def opened(self) -> None:
        self._opened_at = time.monotonic()
        SESSIONS_STARTED.inc()
        SESSIONS_ACTIVE.inc()

    def closed(self, reason: str) -> None:
        if self._opened_at is None:
            return
        SESSIONS_ACTIVE.dec()
        SESSIONS_ENDED.labels(reason=reason).inc()
        SESSION_DURATION.observe(time.monotonic() - self._opened_at)
        self._opened_at = None

    def audio_received(self, nbytes: int, fmt: AudioFormat) -> None:
        AUDIO_INPUT.inc(audio_seconds(nbytes, fmt))

    def first_audio_sent(self, response: Response) -> None:
        """The writer has just sent the first audio of `response` (and marked its trace)."""
        if (latency := turn_timings(response.trace).get("turn_latency")) is not None:
            TURN_LATENCY.labels(backbone=self._backbone).observe(latency)

    def sent(self, event: SessionEvent) -> None:
        """The writer has just sent `event`'s wire events."""
        match event:
            case OutputAudioDelta(response=response, audio=data):
                AUDIO_OUTPUT.inc(audio_seconds(len(data), AudioFormat(response.audio_format)))
            case ErrorReported(code=code):
                REALTIME_ERRORS.labels(code=code).inc()
            case ResponseFinished(response=response):
                RESPONSES.labels(status=response.status.value).inc()
                if response.reason == "turn_detected":
                    BARGE_INS.inc()
                timings = turn_timings(response.trace)
                for stage in TURN_STAGES:
                    if (seconds := timings.get(stage)) is not None:
                        TURN_STAGE.labels(backbone=self._backbone, stage=stage).observe(seconds)


def session_refused(code: str) -> None:
    SESSIONS_REFUSED.labels(reason=code).inc()
    REALTIME_ERRORS.labels(code=code).inc()


def feedback_stored(regime: str, scale: str, rating: int) -> None:
    """A rating was stored: thumbs are counted as up or down, stars by their number."""
    label = ("up" if rating > 0 else "down") if scale == "thumbs" else str(rating)
    FEEDBACK.labels(regime=regime, rating=label).inc()


def preference_stored(regime: str) -> None:
    FEEDBACK_PREFERENCES.labels(regime=regime).inc()


# --- the backbone, timed ----------------------------------------------------------------------


class MeteredBackbone:
    """A `Backbone` that times its ASR and TTS regimes (real-time factors, first chunk).

    Everything else passes straight through; `respond` is timed by its `TurnTrace` instead.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.inner = backbone
        self.name = backbone.name

    @property
    def voices(self) -> Sequence[Voice]:
        return self.inner.voices

    @property
    def is_healthy(self) -> bool:
        return self.inner.is_healthy

    @property
    def follows_instructions(self) -> bool:
        return self.inner.follows_instructions

    def __getattr__(self, name: str) -> Any:
        # What a particular backbone offers beyond the Protocol.
        return getattr(self.inner, name)

    async def transcribe(self, audio: np.ndarray, **options: Any) -> Transcription:
        started = time.perf_counter()
        result = await self.inner.transcribe(audio, **options)
        if len(audio):
            elapsed = time.perf_counter() - started
            ASR_REAL_TIME_FACTOR.labels(backbone=self.name).observe(
                elapsed / (len(audio) / INPUT_SAMPLE_RATE)
            )
        return result

    async def synthesize(self, text: str, **options: Any) -> AsyncIterator[AudioChunk]:
        working, spoken, first = 0.0, 0.0, True
        chunks = self.inner.synthesize(text, **options)
        async with aclosing(chunks):  # type: ignore[type-var]
            while True:
                started = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                working += time.perf_counter() - started
                if first:
                    TTS_FIRST_CHUNK.labels(backbone=self.name).observe(working)
                    first = False
                spoken += chunk.duration_s
                yield chunk
        if spoken > 0:
            TTS_REAL_TIME_FACTOR.labels(backbone=self.name).observe(working / spoken)

    def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        return self.inner.respond(conversation, options, trace)


# --- HTTP -------------------------------------------------------------------------------------


def _endpoint(scope: Scope) -> str:
    """The matched route's template (`/v1/audio/speech`), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def rest_error(scope: Scope, code: str) -> None:
    REST_ERRORS.labels(endpoint=_endpoint(scope), code=code).inc()


class HttpMetrics:
    """ASGI middleware: requests, status codes and time to the last byte of each HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            rest_error(scope, "server_error")
            raise
        finally:
            endpoint, method = _endpoint(scope), scope["method"]
            HTTP_REQUESTS.labels(endpoint=endpoint, method=method, status=str(status)).inc()
            HTTP_DURATION.labels(endpoint=endpoint, method=method).observe(
                time.perf_counter() - started
            )
