"""A small OpenAI Realtime (GA) client for voxgate: stream one spoken turn, collect the answer.

It uses only the public wire protocol (JSON events over a WebSocket), so it works against any
voxgate server and needs nothing of the server's packages. The pure parts (audio preparation,
voiced-end detection, the pacing schedule, turning server events into a `TurnResult`) are plain
functions and a plain class, tested without a server.

Client-measured turn latency: the time the first `response.output_audio.delta` of the answer
arrived minus the time the client sent the chunk holding the last voiced sample of its input.
The last voiced sample is found from the audio itself (`voiced_end`): the input is cut into
20 ms frames, and a frame is voiced when its RMS is within 45 dB of the loudest frame's and at
least 12 dB above the noise floor (the 10th-percentile frame RMS). A plain "10% of the peak"
rule was tried first and cut soft word endings (the /s/ of "France") by 100-280 ms on clean
speech, which would have inflated every latency by as much.

This is the client's view of what the server reports as `x_voxgate.timings_ms.turn_latency`,
which starts at the arrival of the last audio its silero VAD found voiced; silero's end of
speech trails the acoustic end by some 60-90 ms on clean speech, so the client's figure is
usually the larger, by that plus the transport.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SAMPLE_RATE = 24_000
"""The wire rate of `audio/pcm` in both directions."""
VOICED_FRAME_MS = 20
VOICED_RANGE_DB = 45.0
"""A voiced frame's RMS is at most this far below the loudest frame's..."""
VOICED_ABOVE_FLOOR_DB = 12.0
"""...and at least this far above the noise floor."""
NOISE_FLOOR_PERCENTILE = 10
MAX_EVENT_TYPES = 1000
"""Event types kept per turn (a long answer is mostly audio deltas); the rest are counted."""
MAX_ERRORS = 100
MAX_MESSAGE_BYTES = 16 << 20
"""Largest server message accepted (one audio delta is ~200 ms, far below this)."""


class RealtimeError(Exception):
    """The server refused the connection or a request with an `error` event."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


# --- audio ---------------------------------------------------------------------------------


def prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Any mono or (frames, channels) audio, float or integer PCM -> float32 mono at 24 kHz."""
    samples = np.asarray(audio)
    if np.issubdtype(samples.dtype, np.signedinteger):
        samples = samples.astype(np.float32) / -float(np.iinfo(samples.dtype).min)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"expected float or signed integer PCM, got {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    elif samples.ndim != 1:
        raise ValueError(f"expected mono or (frames, channels) audio, got shape {samples.shape}")
    if sample_rate != SAMPLE_RATE and len(samples):
        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE).astype(np.float32)
    return samples


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian 16-bit PCM (clipped, rounded)."""
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM -> float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def voiced_end(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> int | None:
    """Index just past the last voiced 20 ms frame (see the module docstring); None if silent.

    The floor is taken from the clip itself, so a clip should have a little silence around the
    speech (recordings do); a clip that is speech from end to end gets a floor that is speech.
    """
    frame = sample_rate * VOICED_FRAME_MS // 1000
    n_frames = -(-len(samples) // frame)
    if n_frames == 0:
        return None
    padded = np.zeros(n_frames * frame, dtype=np.float64)
    padded[: len(samples)] = samples
    rms = np.sqrt((padded.reshape(n_frames, frame) ** 2).mean(axis=1))
    loudest = rms.max()
    if loudest <= 0.0:
        return None
    floor = np.percentile(rms, NOISE_FLOOR_PERCENTILE)
    threshold = max(
        loudest * 10 ** (-VOICED_RANGE_DB / 20), floor * 10 ** (VOICED_ABOVE_FLOOR_DB / 20)
    )
    last = int(np.flatnonzero(rms >= min(threshold, loudest))[-1])
    return min((last + 1) * frame, len(samples))


def chunk_bounds(n_samples: int, chunk_samples: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of a stream of `n_samples`, the last one possibly shorter."""
    return [(s, min(s + chunk_samples, n_samples)) for s in range(0, n_samples, chunk_samples)]


def pacing_deadlines(
    bounds: Sequence[tuple[int, int]], start: float, sample_rate: int
) -> list[float]:
    """When to send each chunk to stream at real time, as a microphone would: a chunk leaves
    once its last sample has been spoken. Deadlines come from the stream position, never from
    a sum of sleeps, so one late send does not push every later one back."""
    return [start + end / sample_rate for _, end in bounds]


# --- the result of a turn, assembled from server events -------------------------------------


@dataclass
class TurnResult:
    user_transcript: str
    assistant_transcript: str
    audio: np.ndarray
    """The answer's audio, float32 mono at 24 kHz."""
    status: str
    """`response.status` of the answer: completed, cancelled, incomplete or failed."""
    status_details: dict[str, Any] | None
    server_timings_ms: dict[str, float]
    """`x_voxgate.timings_ms` of the answer's `response.done` (empty if the server sent none)."""
    turn_latency_ms: float | None
    """Client-measured: first audio of the answer received - last voiced input sample sent."""
    voiced_end_s: float | None
    """Where the client found the end of speech in its input (seconds from its start)."""
    responses: int
    """`response.done` events in this turn; more than one means the server VAD split the
    utterance and the earlier answer was interrupted."""
    event_types: list[str] = field(default_factory=list)
    event_types_dropped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None


class TurnEvents:
    """Follows one user turn through the server's events; pure (times are passed in).

    The turn is over when the client has sent all its audio, the server is not hearing speech,
    every committed user input was answered (or came back transcribed as empty, which voxgate
    does not answer) and no response is open. Waiting for all of that, rather than for the
    first `response.done`, keeps a turn whole when the server VAD splits it at a pause: the
    first answer is cancelled by the resumed speech and the last one is the answer. A turn
    whose every input was empty ends with status "no_response".
    """

    def __init__(self) -> None:
        self.event_types: list[str] = []
        self.event_types_dropped = 0
        self.errors: list[dict[str, Any]] = []
        self.sending = True
        self.speaking = False
        self.commits = 0
        self.unanswered = 0
        self.open_response: str | None = None
        self.responses_done = 0
        self._user: dict[str, str | None] = {}
        """Committed user items -> transcript (None until known)."""
        self._user_order: list[str] = []
        self._transcript: list[str] = []
        self._final_transcript: str | None = None
        self._audio: list[bytes] = []
        self.first_audio_at: float | None = None
        self._done: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        settled = not self.sending and not self.speaking and self.unanswered == 0
        if not settled or self.open_response is not None:
            return False
        return self.responses_done > 0 or self._declined

    @property
    def _declined(self) -> bool:
        """Everything committed came back empty: no answer is coming."""
        return self.commits > 0 and all(t is not None for t in self._user.values())

    def finished_sending(self) -> None:
        self.sending = False

    def feed(self, event: dict[str, Any], at: float) -> None:
        kind = str(event.get("type"))
        if len(self.event_types) < MAX_EVENT_TYPES:
            self.event_types.append(kind)
        else:
            self.event_types_dropped += 1
        match kind:
            case "error":
                if len(self.errors) < MAX_ERRORS:
                    self.errors.append(event.get("error") or {})
            case "input_audio_buffer.speech_started":
                self.speaking = True
            case "input_audio_buffer.speech_stopped":
                self.speaking = False
            case "input_audio_buffer.committed":
                self.speaking = False
                self.commits += 1
                self.unanswered += 1
                self._user_item(event.get("item_id"))
            case "conversation.item.input_audio_transcription.completed":
                self._user_transcript(event.get("item_id"), event.get("transcript"))
            case "conversation.item.done":
                item = event.get("item") or {}
                if item.get("role") == "user":
                    content = item.get("content") or [{}]
                    transcript = content[0].get("transcript")
                    self._user_transcript(item.get("id"), transcript)
                    if transcript is not None and not transcript.strip():
                        self.unanswered = max(0, self.unanswered - 1)
            case "response.created":
                # A response answers everything committed so far; it starts a fresh answer.
                self.unanswered = 0
                self.open_response = (event.get("response") or {}).get("id", "")
                self._transcript, self._final_transcript = [], None
                self._audio, self.first_audio_at = [], None
            case "response.output_audio.delta":
                if self.first_audio_at is None:
                    self.first_audio_at = at
                self._audio.append(base64.b64decode(event.get("delta", "")))
            case "response.output_audio_transcript.delta" | "response.output_text.delta":
                self._transcript.append(event.get("delta", ""))
            case "response.output_audio_transcript.done":
                self._final_transcript = event.get("transcript")
            case "response.output_text.done":
                self._final_transcript = event.get("text")
            case "response.done":
                self.open_response = None
                self.responses_done += 1
                self._done = event

    def _user_item(self, item_id: Any) -> None:
        if isinstance(item_id, str) and item_id not in self._user:
            self._user[item_id] = None
            self._user_order.append(item_id)

    def _user_transcript(self, item_id: Any, transcript: Any) -> None:
        if isinstance(item_id, str) and isinstance(transcript, str) and item_id in self._user:
            self._user[item_id] = transcript

    def missing(self) -> str:
        """What the turn still waits for, for a timeout message."""
        if self.sending:
            return "the client was still sending audio"
        if self.speaking:
            return "input_audio_buffer.speech_stopped (the server VAD still hears speech)"
        if self.commits == 0:
            return "input_audio_buffer.committed (the server VAD never ended the turn)"
        if self.unanswered:
            return "response.created for the committed input"
        if self.open_response is not None:
            return f"response.done for {self.open_response}"
        return "response.done (the server answered nothing; was the transcript empty?)"

    def result(self, voiced_end_s: float | None, voiced_sent_at: float | None) -> TurnResult:
        """The turn as a `TurnResult`; `voiced_sent_at` is when the chunk holding the last voiced
        input sample was sent (on the clock of the times given to `feed`)."""
        latency = None
        if voiced_sent_at is not None and self.first_audio_at is not None:
            latency = (self.first_audio_at - voiced_sent_at) * 1000.0
        response = (self._done or {}).get("response") or {}
        extension = (self._done or {}).get("x_voxgate") or {}
        transcript = self._final_transcript
        return TurnResult(
            user_transcript=" ".join(
                t for i in self._user_order if (t := (self._user[i] or "").strip())
            ),
            assistant_transcript=transcript
            if transcript is not None
            else "".join(self._transcript),
            audio=from_pcm16(b"".join(self._audio)),
            status=str(response.get("status", "no_response")),
            status_details=response.get("status_details"),
            server_timings_ms=dict(extension.get("timings_ms") or {}),
            turn_latency_ms=latency,
            voiced_end_s=voiced_end_s,
            responses=self.responses_done,
            event_types=self.event_types,
            event_types_dropped=self.event_types_dropped,
            errors=self.errors,
            usage=response.get("usage"),
        )


# --- the connection -------------------------------------------------------------------------


def default_session() -> dict[str, Any]:
    """The `session.update` body this client sends: pcm16 at 24 kHz both ways, server VAD, and
    input transcription so the user's words come back."""
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime",
        "audio": {
            "input": {
                "format": pcm,
                "turn_detection": {"type": "server_vad"},
                "transcription": {"model": "whisper-1"},
            },
            "output": {"format": pcm},
        },
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: nested objects merge, anything else (None too) replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class RealtimeClient:
    """One Realtime session: connect, configure, then any number of spoken turns.

    async with RealtimeClient(url) as client:
        await client.session_update({"instructions": "Be brief."})
        result = await client.send_turn(audio, 16_000)
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        chunk_ms: int = 50,
        realtime_pace: bool = True,
        trailing_silence_s: float = 1.5,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        if chunk_ms <= 0:
            raise ValueError("chunk_ms must be positive")
        self.url = url
        self.api_key = api_key
        self.chunk_ms = chunk_ms
        self.realtime_pace = realtime_pace
        self.trailing_silence_s = trailing_silence_s
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.session: dict[str, Any] = {}
        """The server's view of the session (from the last session.created/updated)."""
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        self._ws = await connect(
            self.url,
            additional_headers=headers,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=self.connect_timeout_s,
        )
        try:
            event = await self._expect(
                ("session.created",), self.connect_timeout_s, "session.created"
            )
        except BaseException:
            await self.close()
            raise
        self.session = event["session"]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def session_update(self, session: dict[str, Any]) -> dict[str, Any]:
        """Send `session.update` with `session` merged over `default_session()`; return the
        server's resulting session. A refusal raises `RealtimeError`."""
        event_id = f"event_{uuid.uuid4().hex[:20]}"
        update = merge(default_session(), session)
        await self._send({"type": "session.update", "event_id": event_id, "session": update})
        event = await self._expect(
            ("session.updated",), self.timeout_s, "session.updated", event_id=event_id
        )
        self.session = event["session"]
        return self.session

    async def send_turn(self, audio: np.ndarray, sample_rate: int) -> TurnResult:
        """Speak `audio` as one user turn and wait for the server's complete answer.

        `timeout_s` counts from the end of sending (audio plus trailing silence).
        """
        samples = prepare_audio(audio, sample_rate)
        end = voiced_end(samples)
        silence = np.zeros(round(self.trailing_silence_s * SAMPLE_RATE), dtype=np.float32)
        stream = np.concatenate([samples, silence])
        bounds = chunk_bounds(len(stream), SAMPLE_RATE * self.chunk_ms // 1000 or 1)
        events = TurnEvents()
        voiced_sent: list[float] = []
        sender = asyncio.create_task(self._stream(stream, bounds, end, voiced_sent))
        try:
            await self._collect(events, sender)
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        return events.result(
            None if end is None else end / SAMPLE_RATE, voiced_sent[0] if voiced_sent else None
        )

    async def _stream(
        self,
        stream: np.ndarray,
        bounds: list[tuple[int, int]],
        voiced_end_at: int | None,
        voiced_sent: list[float],
    ) -> None:
        deadlines = pacing_deadlines(bounds, time.monotonic(), SAMPLE_RATE)
        for (first, last), deadline in zip(bounds, deadlines, strict=True):
            if self.realtime_pace and (wait := deadline - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            data = base64.b64encode(to_pcm16(stream[first:last])).decode()
            await self._send({"type": "input_audio_buffer.append", "audio": data})
            if voiced_end_at is not None and first < voiced_end_at <= last:
                voiced_sent.append(time.monotonic())
        if self._server_vad_off():
            # Without server VAD the client ends its own turn and asks for the answer.
            await self._send({"type": "input_audio_buffer.commit"})
            await self._send({"type": "response.create"})

    def _server_vad_off(self) -> bool:
        audio_input = (self.session.get("audio") or {}).get("input") or {}
        return "turn_detection" in audio_input and audio_input["turn_detection"] is None

    async def _collect(self, events: TurnEvents, sender: asyncio.Task[None]) -> None:
        ws = self._require()
        receive: asyncio.Task[str | bytes] | None = None
        deadline: float | None = None
        try:
            while not events.complete:
                if receive is None:
                    receive = asyncio.create_task(ws.recv())
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                waiting = {receive} if sender.done() else {receive, sender}
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise TimeoutError(
                        f"turn not finished {self.timeout_s:g} s after the audio was sent: "
                        f"no {events.missing()}; events so far: {events.event_types[-12:]}"
                    )
                if sender in done and events.sending:
                    sender.result()  # a failed send (ConnectionError) surfaces here
                    events.finished_sending()
                    deadline = time.monotonic() + self.timeout_s
                if receive in done:
                    try:
                        message = receive.result()
                    except ConnectionClosed as e:
                        raise ConnectionError(
                            f"the server closed the connection ({e}); errors: {events.errors}"
                        ) from e
                    receive = None
                    events.feed(_parse(message), time.monotonic())
        finally:
            if receive is not None:
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await receive

    async def _expect(
        self, kinds: tuple[str, ...], timeout_s: float, what: str, event_id: str | None = None
    ) -> dict[str, Any]:
        """Read until one of `kinds` arrives. An `error` event first raises `RealtimeError`:
        any error, or with `event_id` only the one about that client event (a late error of
        an earlier turn is not a refusal of this request)."""
        ws = self._require()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = _parse(await ws.recv())
                    if event.get("type") in kinds:
                        return event
                    if event.get("type") == "error":
                        error = event.get("error") or {}
                        if event_id is None or error.get("event_id") == event_id:
                            raise RealtimeError(error)
        except TimeoutError:
            raise TimeoutError(f"no {what} from the server within {timeout_s:g} s") from None
        except ConnectionClosed as e:
            raise ConnectionError(f"the server closed the connection before {what}: {e}") from e

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self._require().send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed as e:
            raise ConnectionError(f"the server closed the connection: {e}") from e

    def _require(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("not connected: use `async with RealtimeClient(...)` or connect()")
        return self._ws


def _parse(message: str | bytes) -> dict[str, Any]:
    event = json.loads(message)
    if not isinstance(event, dict):
        return {"type": "invalid", "raw": event}
    return event


async def run_turn(
    url: str,
    audio: np.ndarray,
    sample_rate: int,
    *,
    api_key: str | None = None,
    chunk_ms: int = 50,
    realtime_pace: bool = True,
    trailing_silence_s: float = 1.5,
    session: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> TurnResult:
    """One connection, one `session.update`, one spoken turn."""
    async with RealtimeClient(
        url,
        api_key=api_key,
        chunk_ms=chunk_ms,
        realtime_pace=realtime_pace,
        trailing_silence_s=trailing_silence_s,
        timeout_s=timeout_s,
    ) as client:
        await client.session_update(session or {})
        return await client.send_turn(audio, sample_rate)
