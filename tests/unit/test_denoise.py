"""The input noise suppressor (streaming/denoise.py, RNNoise) and a session's `noise_reduction`."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeBackbone
from fastapi.testclient import TestClient
from in_process import app_over, pcm
from realtime_wire import receive, receive_until

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.server.settings import RealtimeSettings
from voxgate.streaming.denoise import RNNoiseLibrary

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def library(rnnoise_path: Path) -> RNNoiseLibrary:
    return RNNoiseLibrary(rnnoise_path)


def white(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * INPUT_SAMPLE_RATE))).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_streaming_equals_whole_and_keeps_the_rate(library) -> None:
    audio = white(2.0, 0.05)
    whole = library.suppressor()
    once = whole.process(audio)
    pieced = library.suppressor()
    parts = [pieced.process(audio[i : i + 320]) for i in range(0, len(audio), 320)]
    streamed = np.concatenate(parts)
    n = min(len(once), len(streamed))
    assert n > len(audio) - INPUT_SAMPLE_RATE // 20  # at most ~50 ms held back
    np.testing.assert_allclose(streamed[:n], once[:n], atol=1e-4)
    whole.close(), pieced.close()


def test_noise_alone_is_taken_down_and_speech_kept(library, speak) -> None:
    noise = white(3.0, 0.03, seed=1)
    quiet = library.suppressor().process(noise)
    steady = quiet[INPUT_SAMPLE_RATE:]  # after RNNoise has learnt the noise
    assert rms(steady) < rms(noise) / 4  # more than 12 dB less
    speech = speak("The quick brown fox jumps over the lazy dog.")
    noisy = speech + white(len(speech) / INPUT_SAMPLE_RATE, 0.01, seed=2)[: len(speech)]
    kept = library.suppressor().process(noisy)
    assert rms(kept) > rms(speech) / 2  # the voice is not what goes


def test_a_closed_suppressor_refuses_work(library) -> None:
    suppressor = library.suppressor()
    suppressor.close()
    suppressor.close()  # twice is fine
    with pytest.raises(RuntimeError):
        suppressor.process(white(0.1, 0.1))


def noise_reduction_update(kind: str | None) -> dict:
    value = None if kind is None else {"type": kind}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"input": {"noise_reduction": value, "turn_detection": None}},
        },
    }


@pytest.mark.parametrize("suppressor", ["none", "rnnoise"])
def test_a_session_asking_for_noise_reduction(suppressor: str, rnnoise_path: Path) -> None:
    """Accepted either way (LiveKit documents near_field; a refused update is a session
    without its settings); applied only when the server runs a suppressor."""
    fake = FakeBackbone()
    app = app_over(fake, realtime=RealtimeSettings(noise_suppressor=suppressor))
    noise = white(1.0, 0.05, seed=3)
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ws.send_json(noise_reduction_update("near_field"))
        session = receive_until(ws, "session.updated")[-1]["session"]
        assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
        expected = "rnnoise" if suppressor == "rnnoise" else "not applied"
        assert session["x_voxgate"]["noise_reduction"] == expected
        ws.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm(noise)).decode()}
        )
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.done")
        heard = fake.transcribe_calls[-1].audio
        if suppressor == "rnnoise":
            assert rms(heard[INPUT_SAMPLE_RATE // 2 :]) < rms(noise) / 4
        else:
            assert rms(heard) == pytest.approx(rms(noise), rel=0.1)
        ws.send_json(noise_reduction_update(None))
        session = receive_until(ws, "session.updated")[-1]["session"]
        assert session["audio"]["input"]["noise_reduction"] is None
        assert "noise_reduction" not in session.get("x_voxgate", {})
