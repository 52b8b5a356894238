"""The realtime client's pure parts, and one turn against a scripted in-process WebSocket peer."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from voxgate.clients.realtime_client import (
    MAX_EVENT_TYPES,
    SAMPLE_RATE,
    RealtimeClient,
    RealtimeError,
    TurnEvents,
    chunk_bounds,
    default_session,
    from_pcm16,
    merge,
    pacing_deadlines,
    prepare_audio,
    run_turn,
    to_pcm16,
    voiced_end,
)

RNG = np.random.default_rng(7)


def noise(seconds: float, db: float) -> np.ndarray:
    """White noise whose RMS is `db` dB below full scale."""
    return (RNG.standard_normal(round(seconds * SAMPLE_RATE)) * 10 ** (db / 20)).astype(np.float32)


def tone(seconds: float, amplitude: float = 0.5, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# --- voiced end ----------------------------------------------------------------------------


def test_voiced_end_keeps_a_soft_ending_and_drops_the_silence_after_it() -> None:
    # Loud vowel, then a fricative ~25 dB down (a plain 10%-of-peak rule would cut it off),
    # then room noise 60 dB down.
    speech = np.concatenate([tone(0.8), noise(0.2, -34)])
    audio = np.concatenate([noise(0.3, -66), speech, noise(0.6, -66)])
    speech_end = round(1.3 * SAMPLE_RATE)
    frame = SAMPLE_RATE // 50
    end = voiced_end(audio)
    assert end is not None
    assert speech_end - frame <= end <= speech_end + frame


def test_voiced_end_over_a_noise_floor_stops_where_the_speech_does() -> None:
    audio = noise(2.0, -40)
    audio[SAMPLE_RATE // 2 : SAMPLE_RATE] += tone(0.5, 0.3)
    frame = SAMPLE_RATE // 50
    end = voiced_end(audio)
    assert end is not None
    assert abs(end - SAMPLE_RATE) <= frame


def test_voiced_end_of_speech_that_runs_to_the_end_is_the_end() -> None:
    audio = np.concatenate([noise(0.5, -70), tone(0.51)])
    assert voiced_end(audio) == len(audio)


@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), np.zeros(4800, np.float32)])
def test_voiced_end_of_silence_is_none(audio: np.ndarray) -> None:
    assert voiced_end(audio) is None


# --- chunks and pacing ---------------------------------------------------------------------


def test_chunk_bounds_cover_the_stream_once() -> None:
    assert chunk_bounds(1000, 300) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert chunk_bounds(0, 300) == []


def test_pacing_deadlines_are_the_chunk_ends_on_the_stream_clock() -> None:
    bounds = chunk_bounds(SAMPLE_RATE * 60 + 600, 1200)  # 50 ms chunks, a short last one
    deadlines = pacing_deadlines(bounds, 100.0, SAMPLE_RATE)
    assert deadlines[0] == pytest.approx(100.05)
    # No drift after 1200 chunks: each deadline is computed from the position, not summed.
    assert deadlines[1199] == pytest.approx(160.0, abs=1e-9)
    assert deadlines[-1] == pytest.approx(160.025, abs=1e-9)
    assert all(b > a for a, b in itertools.pairwise(deadlines))


# --- pcm16 and input audio -----------------------------------------------------------------


def test_pcm16_is_little_endian_rounded_and_clipped() -> None:
    data = to_pcm16(np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767]
    assert from_pcm16(b"\x00\x80\xff\x7f").tolist() == [-1.0, 32767 / 32768]


def test_pcm16_round_trip_is_within_one_step() -> None:
    audio = RNG.uniform(-1, 1, 10_000).astype(np.float32)
    assert np.max(np.abs(from_pcm16(to_pcm16(audio)) - audio)) <= 1.5 / 32768


def test_prepare_audio_downmixes_scales_and_resamples_to_24k() -> None:
    t = np.arange(16_000) / 16_000
    left = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.stack([left, left], axis=1)
    out = prepare_audio(stereo, 16_000)
    assert out.dtype == np.float32
    assert len(out) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.fft.rfftfreq(len(out), 1 / SAMPLE_RATE)[np.argmax(spectrum)] == pytest.approx(440)
    assert np.max(np.abs(out)) == pytest.approx(0.5, abs=0.02)


def test_prepare_audio_refuses_unsigned_pcm() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_audio(np.zeros(10, np.uint8), 8000)


def test_merge_is_deep_and_none_replaces() -> None:
    merged = merge(
        default_session(),
        {"instructions": "Be brief.", "audio": {"input": {"turn_detection": None}}},
    )
    assert merged["instructions"] == "Be brief."
    assert merged["audio"]["input"]["turn_detection"] is None
    assert merged["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert default_session()["audio"]["input"]["turn_detection"] == {"type": "server_vad"}


# --- turn events ---------------------------------------------------------------------------


def audio_delta(samples: np.ndarray) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "delta": base64.b64encode(to_pcm16(samples)).decode(),
    }


def user_done(item_id: str, transcript: str) -> dict[str, Any]:
    item = {"id": item_id, "role": "user", "content": [{"transcript": transcript}]}
    return {"type": "conversation.item.done", "item": item}


def answer(
    response_id: str, text: str, samples: np.ndarray, status: str = "completed"
) -> list[dict[str, Any]]:
    return [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {"type": "response.output_audio_transcript.delta", "delta": text[:3]},
        audio_delta(samples[: len(samples) // 2]),
        {"type": "response.output_audio_transcript.delta", "delta": text[3:]},
        audio_delta(samples[len(samples) // 2 :]),
        {"type": "response.output_audio_transcript.done", "transcript": text},
        {
            "type": "response.done",
            "response": {"id": response_id, "status": status, "status_details": None},
            "x_voxgate": {"timings_ms": {"asr": 120.5, "turn_latency": 900.0}},
        },
    ]


def user_turn(item_id: str, transcript: str) -> list[dict[str, Any]]:
    return [
        {"type": "input_audio_buffer.speech_started", "item_id": item_id},
        {"type": "input_audio_buffer.speech_stopped", "item_id": item_id},
        {"type": "input_audio_buffer.committed", "item_id": item_id},
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "transcript": transcript,
        },
        user_done(item_id, transcript),
    ]


def feed(events: TurnEvents, script: list[dict[str, Any]], start: float = 10.0) -> None:
    for i, event in enumerate(script):
        events.feed(event, start + i)


def test_a_plain_turn_becomes_a_result() -> None:
    reply = tone(0.2, 0.25)
    events = TurnEvents()
    script = user_turn("item_1", "What time is it?") + answer("resp_1", "Noon.", reply)
    events.finished_sending()
    feed(events, script)
    assert events.complete
    result = events.result(voiced_end_s=1.25, voiced_sent_at=9.0)
    assert result.user_transcript == "What time is it?"
    assert result.assistant_transcript == "Noon."
    assert result.status == "completed"
    assert result.server_timings_ms == {"asr": 120.5, "turn_latency": 900.0}
    first_audio_at = 10.0 + [e["type"] for e in script].index("response.output_audio.delta")
    assert result.turn_latency_ms == pytest.approx((first_audio_at - 9.0) * 1000)
    assert result.voiced_end_s == 1.25
    assert result.responses == 1
    assert np.allclose(result.audio, reply, atol=1 / 32768)
    assert result.event_types == [e["type"] for e in script]
    assert result.errors == []


def test_a_turn_is_not_over_while_the_client_still_sends() -> None:
    events = TurnEvents()
    feed(events, user_turn("item_1", "Hi.") + answer("resp_1", "Hello!", tone(0.1)))
    assert not events.complete
    assert "sending" in events.missing()
    events.finished_sending()
    assert events.complete


def test_a_turn_split_by_the_server_vad_ends_with_the_last_answer() -> None:
    events = TurnEvents()
    first, second = tone(0.1, 0.1), tone(0.3, 0.4)
    feed(events, user_turn("item_1", "Tell me"))
    feed(events, answer("resp_1", "Sure", first)[:3], start=20)
    # The user goes on: the VAD hears speech, the server cancels the first answer.
    feed(events, [{"type": "input_audio_buffer.speech_started", "item_id": "item_2"}], start=30)
    feed(
        events,
        [{"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}],
        start=31,
    )
    events.finished_sending()
    assert not events.complete
    assert "speech_stopped" in events.missing()
    feed(events, user_turn("item_2", "a joke.")[1:], start=40)
    assert not events.complete
    assert "response.created" in events.missing()
    feed(events, answer("resp_2", "Knock knock.", second), start=50)
    assert events.complete
    result = events.result(voiced_end_s=2.0, voiced_sent_at=45.0)
    assert result.responses == 2
    assert result.user_transcript == "Tell me a joke."
    assert result.assistant_transcript == "Knock knock."
    assert len(result.audio) == len(second)
    assert result.turn_latency_ms == pytest.approx((52 - 45.0) * 1000)


def test_input_heard_as_no_words_ends_the_turn_without_an_answer() -> None:
    events = TurnEvents()
    events.finished_sending()
    feed(events, user_turn("item_1", "")[:3])
    assert not events.complete
    feed(events, [user_done("item_1", "")])
    assert events.complete
    result = events.result(voiced_end_s=0.5, voiced_sent_at=1.0)
    assert result.status == "no_response"
    assert result.turn_latency_ms is None


def test_errors_are_kept_and_the_turn_still_ends_on_response_done() -> None:
    events = TurnEvents()
    events.finished_sending()
    error = {"type": "invalid_request_error", "code": "invalid_value", "message": "no"}
    feed(events, [{"type": "error", "error": error}, *user_turn("item_1", "Hi.")])
    failed = answer("resp_1", "", np.zeros(0, np.float32), status="failed")
    feed(events, [failed[0], failed[-1]])
    assert events.complete
    result = events.result(voiced_end_s=None, voiced_sent_at=None)
    assert result.errors == [error]
    assert result.status == "failed"
    assert result.turn_latency_ms is None
    assert len(result.audio) == 0


def test_event_types_are_bounded() -> None:
    events = TurnEvents()
    for _ in range(MAX_EVENT_TYPES + 5):
        events.feed({"type": "response.output_audio_transcript.delta", "delta": ""}, 0.0)
    assert len(events.event_types) == MAX_EVENT_TYPES
    assert events.event_types_dropped == 5


# --- one turn over a real socket, against a scripted peer ----------------------------------


async def scripted_server(ws: ServerConnection) -> None:
    """Plays the server: answers once the client has sent its trailing silence."""
    assert ws.request is not None
    if ws.request.headers.get("Authorization") != "Bearer sekret":
        error = {"code": "invalid_api_key", "message": "missing or wrong API key"}
        await ws.send(json.dumps({"type": "error", "error": error}))
        await ws.close(1008)
        return
    await ws.send(json.dumps({"type": "session.created", "session": {"id": "sess_1"}}))
    update = json.loads(await ws.recv())
    assert update["type"] == "session.update"
    await ws.send(json.dumps({"type": "session.updated", "session": update["session"]}))
    received = bytearray()
    while len(received) < 2 * SAMPLE_RATE * 1.3:  # 1 s of speech + 0.3 s of silence
        event = json.loads(await ws.recv())
        assert event["type"] == "input_audio_buffer.append"
        received += base64.b64decode(event["audio"])
    for event in user_turn("item_1", "Hello?") + answer("resp_1", "Hi there.", tone(0.2)):
        await ws.send(json.dumps(event))
    await ws.wait_closed()


async def test_run_turn_against_a_scripted_peer() -> None:
    async with serve(scripted_server, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        speech = np.concatenate([noise(0.2, -70), tone(0.6), noise(0.2, -70)])
        result = await run_turn(
            url,
            speech,
            SAMPLE_RATE,
            api_key="sekret",
            realtime_pace=False,
            trailing_silence_s=0.3,
            timeout_s=5,
        )
        assert result.user_transcript == "Hello?"
        assert result.assistant_transcript == "Hi there."
        assert result.status == "completed"
        assert result.voiced_end_s == pytest.approx(0.8, abs=0.02)
        assert result.turn_latency_ms is not None and result.turn_latency_ms >= 0
        assert len(result.audio) == round(0.2 * SAMPLE_RATE)

        with pytest.raises(RealtimeError, match="invalid_api_key"):
            async with RealtimeClient(url, api_key="wrong"):
                pass


async def refusing_server(ws: ServerConnection) -> None:
    """Refuses every session.update, after a late error that belongs to no request."""
    await ws.send(json.dumps({"type": "session.created", "session": {"id": "sess_1"}}))
    update = json.loads(await ws.recv())
    stale = {"code": "backbone_error", "message": "an earlier answer failed", "event_id": None}
    refusal = {"code": "invalid_value", "message": "unknown voice", "event_id": update["event_id"]}
    for error in (stale, refusal):
        await ws.send(json.dumps({"type": "error", "error": error}))
    await ws.wait_closed()


async def test_session_update_raises_only_the_error_about_itself() -> None:
    async with serve(refusing_server, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime", timeout_s=5) as client:
            with pytest.raises(RealtimeError, match="unknown voice"):
                await client.session_update({"audio": {"output": {"voice": "nobody"}}})
