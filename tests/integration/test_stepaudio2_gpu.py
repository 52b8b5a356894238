"""The real Step-Audio-2-mini on a CUDA GPU, through a real server.

These run only where both exist: a CUDA device and the published weights in a local folder named
by `VOXGATE_STEPAUDIO2_MODEL` (with a voice: `voxgate make-voice`). Everywhere else they are
skipped, and the skip says which of the two is missing. The CPU suite covers the same code with
the tiny checkpoint (test_stepaudio2_engine.py); these check the real weights and their quality.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from audio_checks import SAMPLES_PER_CODE, pcm24, rms, silence, wav_bytes, wer, words
from engine_server import RunningServer, launch
from realtime_helpers import collect, sdk_client, stream_speech
from realtime_wire import text_item


def _missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    folder = os.environ.get("VOXGATE_STEPAUDIO2_MODEL")
    if not folder:
        return "VOXGATE_STEPAUDIO2_MODEL (the Step-Audio-2-mini folder) is not set"
    for needed in ("config.json", "model.safetensors.index.json", "token2wav/flow.pt"):
        if not (Path(folder) / needed).exists():
            return f"{folder} has no {needed}"
    if not list((Path(folder) / "voices").glob("*.npz")):
        return f"{folder}/voices has no voice: run `voxgate make-voice`"
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(900),
    pytest.mark.skipif(_missing() is not None, reason=f"GPU test: {_missing()}"),
]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "VOXGATE_BACKBONE": "stepaudio2",
        "VOXGATE_MODEL": os.environ["VOXGATE_STEPAUDIO2_MODEL"],
        # dtype (the checkpoint's bfloat16) and max_model_len (the context budget) are the
        # backbone's defaults: no hand overrides.
        "VOXGATE_ENGINE__ENFORCE_EAGER": "false",
        "VOXGATE_ENGINE__KV_CACHE_GIB": "16",
        "VOXGATE_STEPAUDIO2__VOCODER_DEVICE": "cuda",
    }
    with launch(tmp_path_factory, "stepaudio2-gpu", env) as running:
        yield running


def _post(server: RunningServer, path: str, **kwargs: object) -> httpx.Response:
    reply = httpx.post(
        f"{server.base_url}{path}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=300,
        **kwargs,
    )
    assert reply.status_code == 200, reply.text
    return reply


def test_the_checkpoint_has_the_published_layout() -> None:
    index = json.loads(
        (Path(os.environ["VOXGATE_STEPAUDIO2_MODEL"]) / "model.safetensors.index.json").read_text()
    )
    names = set(index["weight_map"])
    assert sum(n.startswith("encoder.") for n in names) == 487
    assert sum(n.startswith("adapter.") for n in names) == 6
    assert "lm_head.weight" in names and "encoder.positional_embedding.weight" in names


def test_real_weights_transcribe_speech(gpu_server, speak) -> None:
    text = "What is the capital of France?"
    reply = _post(
        gpu_server,
        "/v1/audio/transcriptions",
        files={"file": ("q.wav", wav_bytes(speak(text)), "audio/wav")},
        data={"model": "voxgate-stepaudio2"},
    )
    assert wer(text, reply.json()["text"]) <= 0.2


def test_real_weights_speak_what_they_are_given(gpu_server) -> None:
    text = "Hello there, how are you today?"
    voices = httpx.get(
        f"{gpu_server.base_url}/v1/audio/voices",
        headers={"Authorization": f"Bearer {gpu_server.api_key}"},
    )
    voice = voices.json()["data"][0]["id"]
    speech = _post(
        gpu_server,
        "/v1/audio/speech",
        json={
            "model": "voxgate-stepaudio2",
            "input": text,
            "voice": voice,
            "response_format": "wav",
        },
    ).content
    heard = _post(
        gpu_server,
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", speech, "audio/wav")},
        data={"model": "voxgate-stepaudio2"},
    ).json()["text"]
    assert wer(text, heard) <= 0.3  # round trip through the same backbone's ASR regime


async def test_a_real_spoken_turn(gpu_server, speak) -> None:
    async with sdk_client(gpu_server).realtime.connect(model="voxgate") as conn:
        sender = stream_speech(conn, pcm24(speak("Say hello to me.")) + silence(1.5), realtime=True)
        await sender
        turn = await collect(conn)
    done = turn.first("response.done")["response"]
    assert done["status"] == "completed"
    assert words(turn.first("response.output_audio_transcript.done")["transcript"])
    assert rms(bytes(turn.audio)) > 0.02
    codes = done["usage"]["output_token_details"]["audio_tokens"]
    assert len(turn.audio) // 2 == codes * SAMPLES_PER_CODE
    assert np.isfinite(turn.first("response.done")["x_voxgate"]["timings_ms"]["turn_latency"])


async def test_a_real_answer_may_run_past_the_old_text_budget(gpu_server) -> None:
    """128 tokens was ~4 s of speech: a story now runs as long as the model wants (60 s)."""
    async with sdk_client(gpu_server).realtime.connect(model="voxgate") as conn:
        await conn.conversation.item.create(
            item=text_item("Tell me a story of about a minute.")["item"]
        )
        await conn.response.create()
        turn = await collect(conn)
    done = turn.first("response.done")["response"]
    assert done["status"] in ("completed", "incomplete")
    assert len(turn.audio) // 2 / 24_000 > 8.0


async def test_real_weights_call_a_tool_natively(gpu_server) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    async with sdk_client(gpu_server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(session={"type": "realtime", "tools": [tool]})
        await conn.conversation.item.create(
            item=text_item("What's the weather in Paris now?")["item"]
        )
        await conn.response.create()
        turn = await collect(conn)
    calls = [
        o for o in turn.first("response.done")["response"]["output"] if o["type"] == "function_call"
    ]
    assert calls and calls[0]["name"] == "get_weather"
    assert "paris" in json.loads(calls[0]["arguments"])["city"].lower()


def test_the_batched_vocoder_streams_real_weights_as_they_synthesize() -> None:
    """Four live streams of the real token2wav at different positions (they start one step
    apart), stepped together by the captured CUDA graphs: each equals its whole-utterance
    synthesis within 1e-3 (-60 dBFS), the GPU tolerance of the per-stream check in
    tests/unit/test_token2wav.py."""
    from voxgate.model.stepaudio2.token2wav import BatchedVocoder, StepShapes, Token2Wav

    t2w = Token2Wav.load(Path(os.environ["VOXGATE_STEPAUDIO2_MODEL"]), device="cuda")
    voice = t2w.voice(t2w.voices()[0])
    shapes = StepShapes(
        max_batch=4, slots=4, context_tokens=len(voice.prompt_tokens) + 256, voices=1
    )
    vocoder = BatchedVocoder(t2w, shapes)
    assert vocoder.capture() and vocoder.captured == (1, 2, 4)
    rng = np.random.default_rng(0)
    vocab = t2w.flow.cfg.vocab_size
    utterances = [rng.integers(0, vocab, n).tolist() for n in (131, 60, 95, 28)]
    streams = [vocoder.stream(voice) for _ in utterances]
    audio: list[list[np.ndarray]] = [[] for _ in streams]
    tick = 0
    while not all(s.done for s in streams):
        if tick < len(streams):
            streams[tick].push(utterances[tick])
            streams[tick].finish()
        ready = [i for i, s in enumerate(streams) if s.ready]
        for i, wave in zip(ready, vocoder.step([streams[i] for i in ready]), strict=True):
            audio[i].append(wave)
        tick += 1
    for ids, pieces in zip(utterances, audio, strict=True):
        whole = t2w.synthesize(ids, voice)
        np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-3)
