"""`/v1/audio/speech` on a server that captures feedback, over a fake backbone: every answer's
id (`X-Voxgate-Response-Id`, SSE's `speech.audio.done`) and what the store keeps of it, the
candidates extension (`x_voxgate.candidates: 2`) and its pair, every refusal, nothing kept
with capture off, and a failing store that fails no request.

The store is a SQLite file in the test's folder; what it kept is read back from its tables.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa
from fakes import VOICE, FakeBackbone, tone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import app_over, feedback_on, serving
from prometheus_client import REGISTRY
from rest_calls import FAKE_PIECE_S, assert_error, decoded, speech, sse_events, until

from voxgate.server.audio_files import OUTPUT_SAMPLE_RATE
from voxgate.server.feedback_schema import pairs, responses
from voxgate.server.feedback_store import FeedbackStore
from voxgate.streaming.audio import AudioFormat, encode

pytestmark = pytest.mark.timeout(60)

SPEECH_ID = re.compile(r"speech_[0-9a-f]{22}")
PAIR_ID = re.compile(r"pair_[0-9a-f]{22}")
TWO_SENTENCES = "Hello there. How are you today?"
CANDIDATES = {"x_voxgate": {"candidates": 2}}


@pytest.fixture
def app(fake: FakeBackbone, tmp_path: Path) -> FastAPI:
    return app_over(fake, feedback=feedback_on(tmp_path, audio=True))


def store_of(client: TestClient) -> FeedbackStore:
    return client.app.state.services.feedback  # type: ignore[attr-defined]


def rows(client: TestClient, table: sa.Table) -> list[dict[str, Any]]:
    database = store_of(client).database
    assert database is not None
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.select(table))]


def answer_row(client: TestClient, response_id: str) -> dict[str, Any]:
    (row,) = [row for row in rows(client, responses) if row["id"] == response_id]
    return row


def kept_audio(client: TestClient, row: dict[str, Any]) -> tuple[int, np.ndarray]:
    """The answer's WAV file: its rate and its 16-bit samples."""
    database = store_of(client).database
    assert database is not None
    path = database.audio_dir / row["audio_path"]
    with wave.open(str(path), "rb") as file:
        return file.getframerate(), np.frombuffer(file.readframes(file.getnframes()), "<i2")


def synthesised(pieces: int) -> np.ndarray:
    """What the fake synthesises for `pieces` sentences, as 16-bit samples at its voice's rate."""
    one = np.frombuffer(encode(tone(), AudioFormat.PCM), "<i2")
    return np.tile(one, 3 * pieces)


# --- an answer's id, and what is kept of it ---------------------------------------------------


def test_an_answer_is_named_and_kept(client: TestClient, fake: FakeBackbone) -> None:
    response = speech(
        client, input=TWO_SENTENCES, instructions="Cheerfully.", response_format="wav"
    )
    assert response.status_code == 200, response.text
    response_id = response.headers["x-voxgate-response-id"]
    assert SPEECH_ID.fullmatch(response_id)
    assert len(sf.read(io.BytesIO(response.content))[0]) == round(
        2 * FAKE_PIECE_S * OUTPUT_SAMPLE_RATE
    )  # the audio is all there

    row = answer_row(client, response_id)  # kept by the time the answer has ended
    assert {k: row[k] for k in ("session_id", "regime", "model", "voice", "text")} == {
        "session_id": response_id,
        "regime": "speech",
        "model": "voxgate-fake",
        "voice": "joe",
        "text": TWO_SENTENCES,
    }
    assert row["context"] == [
        {"role": "system", "content": "Cheerfully."},
        {"role": "user", "content": TWO_SENTENCES},
    ]
    assert (row["outcome"], row["heard_ms"]) == ("completed", None)
    assert row["audio_ms"] == round(2 * FAKE_PIECE_S * 1000)
    timings = row["timings"]
    assert set(timings) == {"tts_first_chunk", "tts_total"}
    assert 0 <= timings["tts_first_chunk"] <= timings["tts_total"]
    # The synthesised audio, before encoding: the fake's own samples at its voice's rate.
    rate, samples = kept_audio(client, row)
    assert rate == VOICE.sample_rate
    np.testing.assert_array_equal(samples, synthesised(2))


def test_without_instructions_the_context_is_the_text(client: TestClient) -> None:
    response_id = speech(client).headers["x-voxgate-response-id"]
    assert answer_row(client, response_id)["context"] == [{"role": "user", "content": "Hi there."}]


def test_sse_names_the_answer_in_its_done_event(client: TestClient) -> None:
    response = speech(client, input="One. Two.", response_format="pcm", stream_format="sse")
    done = sse_events(response.text)[-1]
    assert done["type"] == "speech.audio.done"
    response_id = done["x_voxgate"]["response_id"]
    assert response.headers["x-voxgate-response-id"] == response_id
    assert answer_row(client, response_id)["outcome"] == "completed"


def test_an_answer_can_be_rated_at_once(client: TestClient) -> None:
    response_id = speech(client).headers["x-voxgate-response-id"]
    rated = client.post("/v1/feedback", json={"response_id": response_id, "rating": -1})
    assert rated.status_code == 200, rated.text
    assert (rated.json()["response_id"], rated.json()["rating"]) == (response_id, -1)


@pytest.mark.parametrize(
    ("changes", "kept_seconds"),
    [({"audio": False}, None), ({"audio": True, "max_audio_seconds": 0.25}, 0.25)],
    ids=["text-only", "cut"],
)
def test_audio_is_kept_only_when_asked_and_up_to_its_bound(
    fake: FakeBackbone, tmp_path: Path, changes: dict[str, Any], kept_seconds: float | None
) -> None:
    with TestClient(app_over(fake, feedback=feedback_on(tmp_path, **changes))) as client:
        response_id = speech(client, input=TWO_SENTENCES).headers["x-voxgate-response-id"]
        row = answer_row(client, response_id)
        assert row["audio_ms"] == round(2 * FAKE_PIECE_S * 1000)  # what was said, all of it
        if kept_seconds is None:
            assert row["audio_path"] is None
            assert not (tmp_path / "audio").exists()
        else:
            rate, samples = kept_audio(client, row)
            assert len(samples) == int(kept_seconds * rate)
            np.testing.assert_array_equal(samples, synthesised(2)[: len(samples)])


def test_a_failure_mid_stream_is_kept_as_failed(tmp_path: Path) -> None:
    class FailsSecond(FakeBackbone):
        async def synthesize(self, text: str, **kwargs: Any):
            async for chunk in super().synthesize(text, **kwargs):
                yield chunk
            if len(self.synthesize_calls) > 1:
                raise RuntimeError("lost the voice")

    app = app_over(FailsSecond(), feedback=feedback_on(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = speech(client, input="One. Two.", response_format="pcm", stream_format="sse")
        assert sse_events(response.text)[-1]["type"] == "error"
        row = answer_row(client, response.headers["x-voxgate-response-id"])
    assert row["outcome"] == "failed"


def test_a_failure_before_any_audio_keeps_nothing(tmp_path: Path) -> None:
    class Failing(FakeBackbone):
        async def synthesize(self, text: str, **kwargs: Any):
            raise RuntimeError("no voice today")
            yield  # pragma: no cover

    app = app_over(Failing(), feedback=feedback_on(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = speech(client)
        assert_error(response, 500, "server_error")
        assert "x-voxgate-response-id" not in response.headers
        assert rows(client, responses) == []  # never given, so never rated


async def test_a_client_leaving_mid_stream_is_kept_as_cancelled(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    fake.synthesize_gate = asyncio.Event()  # holds every synthesis after the first
    app = app_over(fake, feedback=feedback_on(tmp_path))
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as client:
        body = {"model": "tts-1", "voice": "joe", "input": "First. Second. Third."}
        async with client.stream(
            "POST", f"http://127.0.0.1:{port}/v1/audio/speech", json=body
        ) as response:
            response_id = response.headers["x-voxgate-response-id"]
            assert await anext(response.aiter_bytes())
        engine = app.state.services.feedback.database.engine

        def outcome() -> str | None:
            with engine.connect() as connection:
                query = sa.select(responses.c.outcome).where(responses.c.id == response_id)
                return connection.execute(query).scalar_one_or_none()

        await until(lambda: outcome() is not None)
        fake.synthesize_gate.set()
    assert outcome() == "cancelled"


# --- candidates -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "mp3", "pcm"])
def test_two_candidates_and_their_pair(client: TestClient, fake: FakeBackbone, fmt: str) -> None:
    response = speech(client, input=TWO_SENTENCES, response_format=fmt, **CANDIDATES)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "x-voxgate-response-id" not in response.headers  # each candidate has its own
    body = response.json()
    assert set(body) == {"object", "pair_id", "candidates"}
    assert body["object"] == "speech.candidates" and PAIR_ID.fullmatch(body["pair_id"])
    first, second = body["candidates"]
    assert first["response_id"] != second["response_id"]
    for candidate in (first, second):
        assert set(candidate) == {"response_id", "format", "audio"}
        assert SPEECH_ID.fullmatch(candidate["response_id"]) and candidate["format"] == fmt
        audio = decoded(base64.b64decode(candidate["audio"]), fmt)
        rate = OUTPUT_SAMPLE_RATE if fmt == "pcm" else 16_000
        assert abs(len(audio) / rate - 2 * FAKE_PIECE_S) < 0.1

    # The second after the first, behind other REST work.
    assert [(c.text, c.priority) for c in fake.synthesize_calls] == [
        ("Hello there.", 10),
        ("How are you today?", 10),
        ("Hello there.", 11),
        ("How are you today?", 11),
    ]
    # Both kept, in the pair's session, and the pair with them, before the answer.
    kept = {row["id"]: row for row in rows(client, responses)}
    assert set(kept) == {first["response_id"], second["response_id"]}
    assert {row["session_id"] for row in kept.values()} == {body["pair_id"]}
    assert {row["outcome"] for row in kept.values()} == {"completed"}
    (pair,) = rows(client, pairs)
    assert (pair["id"], pair["first_response_id"], pair["second_response_id"]) == (
        body["pair_id"],
        first["response_id"],
        second["response_id"],
    )
    preferred = client.post(
        "/v1/feedback/preferences",
        json={"pair_id": body["pair_id"], "chosen_response_id": second["response_id"]},
    )
    assert preferred.status_code == 200, preferred.text
    assert preferred.json()["chosen_response_id"] == second["response_id"]


async def test_candidates_abandoned_by_their_client_are_not_kept(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    fake.synthesize_gate = asyncio.Event()  # holds every synthesis after the first
    app = app_over(fake, feedback=feedback_on(tmp_path))
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as client:
        body = {"model": "tts-1", "voice": "joe", "input": "First. Second."} | CANDIDATES
        asked = asyncio.create_task(
            client.post(f"http://127.0.0.1:{port}/v1/audio/speech", json=body)
        )
        await until(lambda: len(fake.synthesize_calls) == 2)  # the second waits at the gate
        asked.cancel()  # the client hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await asked
        await until(lambda: app.state.services.rest.requests.active == 0)
        fake.synthesize_gate.set()
        with app.state.services.feedback.database.engine.connect() as connection:
            assert connection.execute(sa.select(responses)).all() == []
    assert [c.text for c in fake.synthesize_calls] == ["First.", "Second."]  # no more work


def test_candidates_say_whether_instructions_were_followed(client: TestClient) -> None:
    response = speech(client, instructions="Softly.", **CANDIDATES)
    assert response.headers["x-voxgate-instructions"] == "ignored"


def test_candidates_of_one_are_a_plain_answer(client: TestClient) -> None:
    response = speech(client, x_voxgate={"candidates": 1})
    assert response.headers["content-type"] == "audio/mpeg"
    assert SPEECH_ID.fullmatch(response.headers["x-voxgate-response-id"])


@pytest.mark.parametrize(
    ("extension", "code", "param"),
    [
        ({"candidates": 3}, "invalid_value", "x_voxgate.candidates"),
        ({"candidates": 0}, "invalid_value", "x_voxgate.candidates"),
        ({"candidates": "2"}, "invalid_type", "x_voxgate.candidates"),
        ({"candidates": True}, "invalid_type", "x_voxgate.candidates"),
        ({"candidates": 1.5}, "invalid_type", "x_voxgate.candidates"),
        ({"candidatez": 2}, "unknown_parameter", "x_voxgate.candidatez"),
        ([2], "invalid_type", "x_voxgate"),
    ],
)
def test_bad_candidates(client: TestClient, fake: FakeBackbone, extension, code, param) -> None:
    assert_error(speech(client, x_voxgate=extension), 400, code, param)
    assert fake.synthesize_calls == [] and rows(client, responses) == []


def test_candidates_are_not_streamed(client: TestClient, fake: FakeBackbone) -> None:
    error = assert_error(
        speech(client, stream_format="sse", **CANDIDATES),
        400,
        "invalid_value",
        "x_voxgate.candidates",
    )
    assert "stream_format" in error["message"]
    assert fake.synthesize_calls == []


# --- capture off, a failing store -------------------------------------------------------------


@pytest.fixture
def client_without_capture(fake: FakeBackbone) -> Iterator[TestClient]:
    with TestClient(app_over(fake)) as client:
        yield client


def test_nothing_is_named_or_kept_with_capture_off(
    client_without_capture: TestClient, fake: FakeBackbone
) -> None:
    client = client_without_capture
    assert not store_of(client).enabled
    plain = speech(client)
    assert plain.status_code == 200 and "x-voxgate-response-id" not in plain.headers
    done = sse_events(speech(client, stream_format="sse").text)[-1]
    assert done["type"] == "speech.audio.done" and "response_id" not in done["x_voxgate"]
    calls = len(fake.synthesize_calls)
    error = assert_error(speech(client, **CANDIDATES), 400, "invalid_value", "x_voxgate.candidates")
    assert "VOXGATE_FEEDBACK__ENABLED" in error["message"]
    assert len(fake.synthesize_calls) == calls  # refused before any work


def test_a_failing_store_fails_no_request(
    client: TestClient, fake: FakeBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> None:
        raise OSError("the disk is full")

    def dropped() -> float:
        labels = {"reason": "store_error"}
        return REGISTRY.get_sample_value("voxgate_feedback_captures_dropped_total", labels) or 0.0

    dropped_before = dropped()
    store = store_of(client)
    store.record_response = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "voxgate.server.speech_capture"):
        streamed = speech(client, input=TWO_SENTENCES, response_format="pcm")
        assert streamed.status_code == 200
        assert len(streamed.content) == 2 * round(2 * FAKE_PIECE_S * OUTPUT_SAMPLE_RATE)
        assert SPEECH_ID.fullmatch(streamed.headers["x-voxgate-response-id"])
        pair = speech(client, **CANDIDATES)
        assert pair.status_code == 200 and len(pair.json()["candidates"]) == 2
    assert rows(client, responses) == [] and rows(client, pairs) == []
    assert sum("not recorded" in r.getMessage() for r in caplog.records) == 3, caplog.text
    assert dropped() == dropped_before + 3  # the streamed answer and both candidates


def test_the_speech_route_documents_candidates_and_the_answer_id(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/audio/speech"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["x_voxgate"]["anyOf"][0]["properties"]["candidates"]["maximum"] == 2
    answer = operation["responses"]["200"]
    assert "X-Voxgate-Response-Id" in answer["headers"]
    candidates = answer["content"]["application/json"]["schema"]
    assert set(candidates["required"]) >= {"pair_id", "candidates"}
