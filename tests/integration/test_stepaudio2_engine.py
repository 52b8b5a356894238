"""The unified backbone end to end: one tiny Step-Audio-2 on one vLLM engine, three regimes.

The checkpoint is random (`voxgate make-tiny-model`), so the words mean nothing; what is tested
is the machinery: audio into the engine, interleaved text and speech codes out, the vocoder,
priorities, aborts and speculative decoding, through the public wire protocols.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from audio_checks import SAMPLES_PER_CODE, pcm24, silence, wav_bytes
from engine_server import RunningServer, launch, unified_env
from realtime_helpers import answer_to, collect, sdk_client, talk_over_an_answer

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

LONG_TEXT = " ".join(["one two three four five six seven eight"] * 6)
"""One sentence (the REST layer sends a request per sentence) long enough to keep the engine
busy for hundreds of tokens (the TTS token cap ends it)."""


def upload(server: RunningServer, path: str, audio16k: np.ndarray, **data: str) -> httpx.Response:
    """POST a WAV of `audio16k` to one of the audio upload endpoints, with form `data`."""
    return httpx.post(
        f"{server.base_url}{path}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        files={"file": ("q.wav", wav_bytes(audio16k), "audio/wav")},
        data={"model": "voxgate-stepaudio2", **data},
        timeout=120,
    )


def transcribe(server: RunningServer, audio16k: np.ndarray) -> str:
    reply = upload(server, "/v1/audio/transcriptions", audio16k, response_format="json")
    assert reply.status_code == 200, reply.text
    return reply.json()["text"]


async def test_a_spoken_realtime_turn_returns_transcripts_and_audio(unified_server, speak) -> None:
    pcm = pcm24(speak("What is the capital of France?")) + silence(1.5)
    async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 120})
        turn = await answer_to(conn, pcm, realtime=False)
    assert "conversation.item.input_audio_transcription.completed" in turn.types
    assert "response.output_audio_transcript.delta" in turn.types
    assert "response.output_audio.delta" in turn.types
    done = turn.first("response.done")["response"]
    assert done["status"] in ("completed", "incomplete")
    codes = done["usage"]["output_token_details"]["audio_tokens"]
    assert codes > 0
    # Every speech code the LM wrote became exactly 40 ms of speech.
    assert len(turn.audio) // 2 == codes * SAMPLES_PER_CODE
    assert "lm_to_first_audio" in turn.first("response.done")["x_voxgate"]["timings_ms"]


async def test_barge_in_aborts_the_unified_engine_request(unified_server, speak) -> None:
    aborted = unified_server.metric("voxgate_engine_requests_aborted_total")
    # Interrupt at once: the tiny LM writes ~1000 tokens a second, so only an early barge-in
    # finds its request still generating.
    interrupted = await talk_over_an_answer(
        unified_server,
        pcm24(speak("Stop, please.")) + silence(0.3),
        "Tell me a story.",
        max_output_tokens=3800,
        after="response.output_item.added",
    )
    response = interrupted.turn.first("response.done")["response"]
    assert (response["status"], response["status_details"]["reason"]) == (
        "cancelled",
        "turn_detected",
    )
    assert unified_server.metric("voxgate_engine_requests_aborted_total") == aborted + 1


def test_rest_transcription_returns_text(unified_server, speak) -> None:
    text = transcribe(unified_server, speak("Please say hello."))
    assert isinstance(text, str) and text.strip()


def test_rest_synthesis_returns_whole_speech_codes_of_audio(unified_server) -> None:
    reply = httpx.post(
        f"{unified_server.base_url}/v1/audio/speech",
        headers={"Authorization": f"Bearer {unified_server.api_key}"},
        json={
            "model": "voxgate-stepaudio2",
            "input": "Hello there.",
            "voice": "default",
            "response_format": "pcm",
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    samples = len(reply.content) // 2  # 24 kHz s16le
    assert samples > 0
    assert samples % SAMPLES_PER_CODE == 0  # whole speech codes, nothing cut or padded
    assert reply.headers.get("x-voxgate-instructions") is None  # this backbone follows them


async def test_realtime_asr_and_tts_at_once_on_one_engine(unified_server, speak) -> None:
    question = speak("How are you today?")

    async def realtime() -> str:
        async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hi!"}],
                }
            )
            await conn.response.create(response={"max_output_tokens": 60})
            return (await collect(conn)).first("response.done")["response"]["status"]

    async def rest(path: str, **kwargs: object) -> int:
        async with httpx.AsyncClient(timeout=180) as client:
            reply = await client.post(
                f"{unified_server.base_url}{path}",
                headers={"Authorization": f"Bearer {unified_server.api_key}"},
                **kwargs,
            )
        return reply.status_code

    status, asr, tts = await asyncio.gather(
        realtime(),
        rest(
            "/v1/audio/transcriptions",
            files={"file": ("q.wav", wav_bytes(question), "audio/wav")},
            data={"model": "voxgate-stepaudio2"},
        ),
        rest(
            "/v1/audio/speech",
            json={"model": "voxgate-stepaudio2", "input": "Fine, thanks.", "voice": "default"},
        ),
    )
    assert status in ("completed", "incomplete")
    assert (asr, tts) == (200, 200)


@pytest.mark.parametrize(("policy", "live_finishes"), [("priority", 1), ("fcfs", 6)])
def test_a_live_turn_goes_ahead_of_queued_rest_work(tiny_model, policy, live_finishes) -> None:
    """One engine slot, six REST requests queued, then a realtime one: with priority scheduling
    it runs right after the request in progress (vLLM is not preemptive); first come, first
    served would put it last (the control that shows this test can fail)."""
    probe = Path(__file__).with_name("engine_priority_probe.py")
    done = subprocess.run(
        [sys.executable, str(probe), str(tiny_model), policy],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    order = json.loads(done.stdout.strip().splitlines()[-1])
    assert order[0] == "rest-0"
    assert order.index("live") == live_finishes, order


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Iterator[RunningServer]:
    """The same checkpoint with speculative decoding off."""
    with launch(tmp_path_factory, "stepaudio2-plain", unified_env(tiny_model, "none")) as running:
        yield running


def test_speculative_asr_equals_plain_decoding(unified_server, plain_server, speak) -> None:
    for text in ("What is the capital of France?", "Tell me a long story about a dragon."):
        audio = speak(text)
        assert transcribe(unified_server, audio) == transcribe(plain_server, audio)
    # The engine really speculated, and says how well it went.
    drafted = unified_server.metric("vllm:spec_decode_num_draft_tokens_total")
    assert drafted > 0
    rate = unified_server.metric("voxgate_spec_decode_acceptance_rate")
    assert 0.0 <= rate <= 1.0
    assert unified_server.metric("voxgate_spec_decode_tokens_per_step") >= 1.0


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Iterator[RunningServer]:
    """The same checkpoint with the batched vocoder on (eager steps: there is no CUDA here)."""
    env = {
        **unified_env(tiny_model),
        "VOXGATE_STEPAUDIO2__BATCHED_VOCODER": "on",
        "VOXGATE_STEPAUDIO2__VOCODER_SLOTS": "4",
    }
    with launch(tmp_path_factory, "stepaudio2-batched", env) as running:
        yield running


async def test_a_spoken_answer_streams_from_the_batched_vocoder(batched_server, speak) -> None:
    """A spoken turn and a REST synthesis at once, both through the batched vocoder."""
    assert "batched vocoder: 4 slots" in batched_server.log_path.read_text()
    pcm = pcm24(speak("What is the capital of France?")) + silence(1.5)

    async def spoken_turn() -> Any:
        async with sdk_client(batched_server).realtime.connect(model="voxgate") as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 120})
            return await answer_to(conn, pcm, realtime=False)

    async def synthesis() -> httpx.Response:
        async with httpx.AsyncClient(timeout=120) as client:
            return await client.post(
                f"{batched_server.base_url}/v1/audio/speech",
                headers={"Authorization": f"Bearer {batched_server.api_key}"},
                json={
                    "model": "voxgate-stepaudio2",
                    "input": "Hello there.",
                    "voice": "default",
                    "response_format": "pcm",
                },
            )

    turn, speech = await asyncio.gather(spoken_turn(), synthesis())
    assert "response.output_audio.delta" in turn.types
    done = turn.first("response.done")["response"]
    assert done["status"] in ("completed", "incomplete")
    codes = done["usage"]["output_token_details"]["audio_tokens"]
    assert codes > 0 and len(turn.audio) // 2 == codes * SAMPLES_PER_CODE
    assert speech.status_code == 200, speech.text
    assert len(speech.content) // 2 > 0 and len(speech.content) // 2 % SAMPLES_PER_CODE == 0


def test_rest_translation_and_the_refused_hint(unified_server, speak) -> None:
    """Speech translation is the published S2TT prompt on the same engine; an ASR hint, which
    the published prompt has no place for, is refused before any work."""
    audio = speak("Good morning, how are you?")
    translated = upload(
        unified_server, "/v1/audio/translations", audio, response_format="verbose_json"
    )
    assert translated.status_code == 200, translated.text
    body = translated.json()
    assert body["task"] == "translate" and isinstance(body["text"], str)
    hinted = upload(unified_server, "/v1/audio/transcriptions", audio, prompt="Names: Ada")
    assert hinted.status_code == 400
    assert hinted.json()["error"]["code"] == "unsupported_parameter"


async def test_a_session_starts_with_a_minute_of_speech(unified_server) -> None:
    """Budgets are seconds of speech: the default answer is 60 s of TA4 output (31.25 tokens
    a second), not a text LM's 128 tokens (4 s)."""
    async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
        created = await conn.recv()
    assert created.type == "session.created"
    assert created.session.max_output_tokens == 60 * 125 // 4 + 8


def test_rest_descriptions_use_the_published_caption_prompts(unified_server, speak) -> None:
    audio = speak("It is raining again.")
    for kind in ("caption", "paralinguistic"):
        reply = upload(unified_server, "/v1/audio/descriptions", audio, kind=kind)
        assert reply.status_code == 200, reply.text
        assert isinstance(reply.json()["text"], str)
