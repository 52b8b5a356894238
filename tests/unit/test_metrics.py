"""voxgate's Prometheus metrics over the fake backbone: after scripted turns and requests, each
histogram and counter moved by exactly what happened (counts, sums equal to the trace's spans,
error codes, barge-ins, seconds of audio), and the JSON log lines carry the session's ids.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import websockets
from fakes import CHUNK_SECONDS, FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import TEST_KEY, app_over, pcm, send_audio, serving
from prometheus_client import REGISTRY
from pydantic import SecretStr
from realtime_wire import receive_until
from starlette.testclient import WebSocketTestSession

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.server import logs, metrics
from voxgate.server.settings import RealtimeSettings
from voxgate.streaming.timings import TURN_STAGES

pytestmark = pytest.mark.timeout(60)

PCM_BYTES_PER_S = 48_000
"""24 kHz pcm16, the default realtime format both ways."""


def app_for(fake: FakeBackbone, **overrides: Any) -> FastAPI:
    realtime = overrides.pop("realtime", {})
    return app_over(fake, realtime=RealtimeSettings(**realtime), **overrides)


def value(name: str, **labels: str) -> float:
    """A sample of the default registry (0 for a labelled series not yet created)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moved:
    """Samples read before and after: `moved[name, labels]` is the change."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self._samples = samples
        self._before = [value(n, **labels) for n, labels in samples]

    def __call__(self) -> dict[tuple[str, str], float]:
        return {
            (name, json.dumps(labels, sort_keys=True)): value(name, **labels) - before
            for (name, labels), before in zip(self._samples, self._before, strict=True)
        }

    def of(self, name: str, **labels: str) -> float:
        return self()[name, json.dumps(labels, sort_keys=True)]


def sync(ws: WebSocketTestSession) -> None:
    """Return once the server has read everything sent before (it reads in order)."""
    ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
    receive_until(ws, "session.updated")


def audio_sent(events: list[dict[str, Any]]) -> int:
    return sum(
        len(base64.b64decode(e["delta"]))
        for e in events
        if e["type"] == "response.output_audio.delta"
    )


FAKE = {"backbone": "fake"}
STAGES = [("voxgate_turn_stage_seconds_count", FAKE | {"stage": s}) for s in TURN_STAGES]
STAGE_SUMS = [("voxgate_turn_stage_seconds_sum", FAKE | {"stage": s}) for s in TURN_STAGES]


def test_spoken_turn_moves_every_realtime_metric(
    client: TestClient, fake: FakeBackbone, speak
) -> None:
    speech = speak("Hello there, how are you today?")
    data = pcm(np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(16000, np.float32)]))
    moved = Moved(
        ("voxgate_turn_latency_seconds_count", FAKE),
        ("voxgate_turn_latency_seconds_sum", FAKE),
        *STAGES,
        *STAGE_SUMS,
        ("voxgate_responses_total", {"status": "completed"}),
        ("voxgate_barge_ins_total", {}),
        ("voxgate_session_audio_input_seconds_total", {}),
        ("voxgate_session_audio_output_seconds_total", {}),
        ("voxgate_sessions_started_total", {}),
        ("voxgate_session_duration_seconds_count", {}),
        ("voxgate_sessions_active", {}),
        ("voxgate_asr_real_time_factor_count", FAKE),
    )
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        assert moved.of("voxgate_sessions_active") == 1
        send_audio(ws, data)
        got = receive_until(ws, "response.done")
        sync(ws)
    timings = got[-1]["x_voxgate"]["timings_ms"]

    assert moved.of("voxgate_turn_latency_seconds_count", **FAKE) == 1
    # The histogram's figure is the one response.done reports (there rounded to 0.1 ms).
    latency_ms = moved.of("voxgate_turn_latency_seconds_sum", **FAKE) * 1000
    assert latency_ms == pytest.approx(timings["turn_latency"], abs=0.051)
    for stage in TURN_STAGES:
        labels = FAKE | {"stage": stage}
        if stage in timings:
            assert moved.of("voxgate_turn_stage_seconds_count", **labels) == 1, stage
            stage_ms = moved.of("voxgate_turn_stage_seconds_sum", **labels) * 1000
            assert stage_ms == pytest.approx(timings[stage], abs=0.051), stage
        else:
            assert moved.of("voxgate_turn_stage_seconds_count", **labels) == 0, stage
    assert {"end_of_turn_wait", "asr", "lm_first_token", "server_overhead"} <= timings.keys()
    assert moved.of("voxgate_responses_total", status="completed") == 1
    assert moved.of("voxgate_barge_ins_total") == 0
    assert moved.of("voxgate_session_audio_input_seconds_total") == pytest.approx(
        len(data) / PCM_BYTES_PER_S
    )
    assert moved.of("voxgate_session_audio_output_seconds_total") == pytest.approx(
        audio_sent(got) / PCM_BYTES_PER_S
    )
    assert audio_sent(got) > 0
    assert moved.of("voxgate_sessions_started_total") == 1
    assert moved.of("voxgate_session_duration_seconds_count") == 1  # observed as it ended
    assert moved.of("voxgate_sessions_active") == 0
    assert moved.of("voxgate_asr_real_time_factor_count", **FAKE) == len(fake.transcribe_calls)


def test_a_turn_without_audio_answer_has_no_turn_latency(client: TestClient) -> None:
    """Typed turns and text answers have no end of speech / no first audio: nothing to time."""
    moved = Moved(
        ("voxgate_turn_latency_seconds_count", FAKE),
        ("voxgate_turn_stage_seconds_count", FAKE | {"stage": "lm_first_token"}),
        ("voxgate_responses_total", {"status": "completed"}),
    )
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        ws.send_json(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
        ws.send_json({"type": "response.create"})
        receive_until(ws, "response.done")
    assert moved.of("voxgate_turn_latency_seconds_count", **FAKE) == 0
    assert moved.of("voxgate_turn_stage_seconds_count", **FAKE, stage="lm_first_token") == 1
    assert moved.of("voxgate_responses_total", status="completed") == 1


def test_barge_in_and_client_cancel(client: TestClient, fake: FakeBackbone, speak) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    speech = speak("Hello there, how are you today?")
    moved = Moved(
        ("voxgate_barge_ins_total", {}),
        ("voxgate_responses_total", {"status": "cancelled"}),
        ("voxgate_turn_latency_seconds_count", FAKE),
    )
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        send_audio(ws, pcm(np.concatenate([speech, np.zeros(16000, np.float32)])))
        receive_until(ws, "response.output_audio.delta")
        send_audio(ws, pcm(np.concatenate([speech, np.zeros(16000, np.float32)])))
        done = receive_until(ws, "response.done")[-1]["response"]
        assert done["status_details"]["reason"] == "turn_detected"
        assert moved.of("voxgate_barge_ins_total") == 1
        assert moved.of("voxgate_responses_total", status="cancelled") == 1

        # The user's new turn is answered; the client cancels that one: not a barge-in.
        receive_until(ws, "response.output_audio.delta")
        ws.send_json({"type": "response.cancel"})
        done = receive_until(ws, "response.done")[-1]["response"]
    assert done["status_details"]["reason"] == "client_cancelled"
    assert moved.of("voxgate_barge_ins_total") == 1
    assert moved.of("voxgate_responses_total", status="cancelled") == 2
    # Both answers had sent audio, the interrupted one too: both latencies count.
    assert moved.of("voxgate_turn_latency_seconds_count", **FAKE) == 2


def test_errors_by_code_and_refused_sessions(fake: FakeBackbone) -> None:
    moved = Moved(
        ("voxgate_realtime_errors_total", {"code": "invalid_json"}),
        ("voxgate_realtime_errors_total", {"code": "unknown_event_type"}),
        ("voxgate_realtime_errors_total", {"code": "invalid_api_key"}),
        ("voxgate_realtime_errors_total", {"code": "session_limit_reached"}),
        ("voxgate_sessions_refused_total", {"reason": "invalid_api_key"}),
        ("voxgate_sessions_refused_total", {"reason": "session_limit_reached"}),
        ("voxgate_sessions_started_total", {}),
    )
    app = app_for(fake, api_key=SecretStr(TEST_KEY), realtime={"max_sessions": 1})
    with TestClient(app) as client:
        with client.websocket_connect("/v1/realtime") as ws:
            assert ws.receive_json()["error"]["code"] == "invalid_api_key"
        headers = {"Authorization": f"Bearer {TEST_KEY}"}
        with client.websocket_connect("/v1/realtime", headers=headers) as ws:
            receive_until(ws, "session.created")
            ws.send_text("{nope")
            ws.send_json({"type": "session.destroy"})
            ws.send_json({"type": "session.destroy"})
            for code in ("invalid_json", "unknown_event_type", "unknown_event_type"):
                assert receive_until(ws, "error")[-1]["error"]["code"] == code
            with client.websocket_connect("/v1/realtime", headers=headers) as second:
                assert second.receive_json()["error"]["code"] == "session_limit_reached"
    assert moved.of("voxgate_realtime_errors_total", code="invalid_json") == 1
    assert moved.of("voxgate_realtime_errors_total", code="unknown_event_type") == 2
    assert moved.of("voxgate_realtime_errors_total", code="invalid_api_key") == 1
    assert moved.of("voxgate_realtime_errors_total", code="session_limit_reached") == 1
    assert moved.of("voxgate_sessions_refused_total", reason="invalid_api_key") == 1
    assert moved.of("voxgate_sessions_refused_total", reason="session_limit_reached") == 1
    assert moved.of("voxgate_sessions_started_total") == 1


def test_rest_requests_latency_errors_and_real_time_factors(
    client: TestClient, fake: FakeBackbone, speak
) -> None:
    speech, transcriptions = "/v1/audio/speech", "/v1/audio/transcriptions"
    moved = Moved(
        ("voxgate_http_requests_total", {"endpoint": speech, "method": "POST", "status": "200"}),
        ("voxgate_http_requests_total", {"endpoint": speech, "method": "POST", "status": "400"}),
        ("voxgate_http_request_duration_seconds_count", {"endpoint": speech, "method": "POST"}),
        ("voxgate_rest_errors_total", {"endpoint": speech, "code": "unknown_voice"}),
        (
            "voxgate_http_requests_total",
            {"endpoint": transcriptions, "method": "POST", "status": "200"},
        ),
        (
            "voxgate_http_requests_total",
            {"endpoint": "unmatched", "method": "GET", "status": "404"},
        ),
        ("voxgate_tts_real_time_factor_count", FAKE),
        ("voxgate_tts_real_time_factor_sum", FAKE),
        ("voxgate_synthesis_first_chunk_seconds_count", FAKE),
        ("voxgate_asr_real_time_factor_count", FAKE),
    )
    body = {"model": "tts-1", "voice": "joe", "input": "One. Two.", "response_format": "pcm"}
    answer = client.post(speech, json=body)
    assert answer.status_code == 200
    refused = client.post(speech, json=body | {"voice": "nobody"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "unknown_voice")
    wav = io.BytesIO()
    sf.write(wav, speak("Hello there."), INPUT_SAMPLE_RATE, format="WAV")
    files = {"file": ("a.wav", wav.getvalue(), "audio/wav")}
    assert client.post(transcriptions, files=files, data={"model": "whisper-1"}).status_code == 200
    assert client.get("/no/such/page").status_code == 404

    route = {"endpoint": speech, "method": "POST"}
    assert moved.of("voxgate_http_requests_total", **route, status="200") == 1
    assert moved.of("voxgate_http_requests_total", **route, status="400") == 1
    assert moved.of("voxgate_http_request_duration_seconds_count", **route) == 2
    assert moved.of("voxgate_rest_errors_total", endpoint=speech, code="unknown_voice") == 1
    transcribed = {"endpoint": transcriptions, "method": "POST", "status": "200"}
    assert moved.of("voxgate_http_requests_total", **transcribed) == 1
    unmatched = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    assert moved.of("voxgate_http_requests_total", **unmatched) == 1
    # Two sentences: two synthesize() streams, each timed; one transcribed piece.
    assert len(fake.synthesize_calls) == 2
    assert moved.of("voxgate_tts_real_time_factor_count", **FAKE) == 2
    assert moved.of("voxgate_synthesis_first_chunk_seconds_count", **FAKE) == 2
    assert moved.of("voxgate_tts_real_time_factor_sum", **FAKE) > 0
    assert moved.of("voxgate_asr_real_time_factor_count", **FAKE) == len(fake.transcribe_calls) == 1


def test_synthesis_time_excludes_the_reader(fake: FakeBackbone) -> None:
    """The TTS real-time factor counts time spent in the backbone, not in its consumer."""
    metered = metrics.MeteredBackbone(fake)
    before = value("voxgate_tts_real_time_factor_sum", **FAKE)

    async def slow_reader() -> None:
        async for _ in metered.synthesize("Hello.", voice="joe"):
            await asyncio.sleep(0.2)  # a slow client: 3 chunks, 0.6 s of waiting

    asyncio.run(slow_reader())
    factor = value("voxgate_tts_real_time_factor_sum", **FAKE) - before
    audio_s = fake.synth_chunks * CHUNK_SECONDS
    assert factor < 0.5 / audio_s  # far below the 0.6 s the reader took


def test_metrics_endpoint_says_where_turn_latency_is_measured(client: TestClient) -> None:
    text = client.get("/metrics").text
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP voxgate_turn_latency_seconds")
    )
    assert "last input audio message its VAD found voiced" in help_line
    assert "first response.output_audio.delta" in help_line
    assert "# TYPE voxgate_turn_latency_seconds histogram" in text
    assert "voxgate_sessions_active" in text


# --- JSON logs ------------------------------------------------------------------------------


def test_json_formatter_fields() -> None:
    formatter = logs.JsonFormatter()
    record = logging.makeLogRecord(
        {"name": "voxgate.x", "levelname": "INFO", "msg": "hi %s", "args": ("there",)}
    )
    record.timings_ms = {"asr": 1.5}
    token = logs.SESSION_ID.set("sess_1")
    try:
        with logs.response_context("resp_1"):
            line = json.loads(formatter.format(record))
        outside = json.loads(formatter.format(record))
    finally:
        logs.SESSION_ID.reset(token)
    assert line["message"] == "hi there"
    assert (line["level"], line["logger"]) == ("info", "voxgate.x")
    assert (line["session_id"], line["response_id"]) == ("sess_1", "resp_1")
    assert line["timings_ms"] == {"asr": 1.5}
    assert line["time"].endswith("+00:00")
    assert "response_id" not in outside


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_session_log_lines_carry_session_and_response_ids(client: TestClient) -> None:
    handler = _Lines()
    logger = logging.getLogger("voxgate.server.realtime")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with client.websocket_connect("/v1/realtime") as ws:
            session_id = receive_until(ws, "session.created")[-1]["session"]["id"]
            ws.send_json({"type": "response.create"})
            response_id = receive_until(ws, "response.done")[-1]["response"]["id"]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines
    assert all(line["session_id"] == session_id for line in handler.lines)
    done = [line for line in handler.lines if line.get("response_id") == response_id]
    assert len(done) == 1
    assert done[0]["status"] == "completed"


async def test_session_end_reasons_through_a_real_server(fake: FakeBackbone) -> None:
    """A client hanging up (mid-answer too) ends its session as `client_closed`."""
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    moved = Moved(
        ("voxgate_sessions_ended_total", {"reason": "client_closed"}),
        ("voxgate_sessions_active", {}),
    )
    async with serving(app_for(fake)) as port:
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        async with websockets.connect(url) as ws:
            await ws.recv()  # session.created
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
                pass
    # (uvicorn's shutdown has waited for both sessions to end)
    assert moved.of("voxgate_sessions_ended_total", reason="client_closed") == 2
    assert moved.of("voxgate_sessions_active") == 0
