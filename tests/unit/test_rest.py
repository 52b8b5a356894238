"""The REST speech endpoints over a fake backbone: shapes, streaming, every bad input and limit.

Most tests use Starlette's `TestClient`; concurrency goes through `httpx.ASGITransport` on one
event loop; streaming and the official SDK go through a real uvicorn server on a free port.
Every refused request is also checked not to have reached the backbone.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
import soundfile as sf
from fakes import VOICE, FakeBackbone, SynthesizeCall
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import TEST_KEY, app_over, serving
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from openai.types.audio import Transcription, TranscriptionVerbose, Translation, TranslationVerbose
from openai.types.audio.transcription_stream_event import TranscriptionStreamEvent
from pydantic import SecretStr
from rest_calls import FAKE_PIECE_S, assert_error, decoded, speech, sse_events, until

from voxgate.model.cascade import CascadeBackbone, CascadeConfig
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    BackboneError,
    ContextBudgetExceeded,
    DescriptionUnsupported,
    EngineUnavailable,
    RequestRejected,
    TranslationUnsupported,
)
from voxgate.model.voices import OPENAI_VOICES
from voxgate.server.audio_files import OUTPUT_SAMPLE_RATE
from voxgate.server.settings import RestSettings

pytestmark = pytest.mark.timeout(60)

STREAM_EVENT = pydantic.TypeAdapter(TranscriptionStreamEvent)
TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/transcriptions", "/v1/audio/translations"
DESCRIPTIONS = "/v1/audio/descriptions"


def app_for(fake: FakeBackbone, **overrides: Any) -> FastAPI:
    rest = overrides.pop("rest", {})
    return app_over(fake, rest=RestSettings(**rest), **overrides)


@pytest.fixture
def fake() -> FakeBackbone:
    return FakeBackbone(transcript="hello there")


@pytest.fixture
def app(fake: FakeBackbone) -> FastAPI:
    return app_for(fake)


def wav(samples: np.ndarray, rate: int = INPUT_SAMPLE_RATE, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt)
    return out.getvalue()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * INPUT_SAMPLE_RATE), np.float32)


@pytest.fixture(scope="module")
def hello(speak) -> np.ndarray:
    return speak("Hello there.")


@pytest.fixture(scope="module")
def hello_wav(hello: np.ndarray) -> bytes:
    return wav(hello)


def upload(client: TestClient, path: str, file: bytes | None, **fields: Any) -> httpx.Response:
    data = {"model": "whisper-1", **fields}
    if file is None:  # still multipart: fields as parts without a file name
        parts = [(k, (None, v)) for k, v in data.items()]
        return client.post(path, files=parts)
    files = {"file": ("speech.wav", file, "audio/wav")}
    return client.post(path, data=data, files=files)


def transcribe(client: TestClient, file: bytes | None, **fields: Any) -> httpx.Response:
    return upload(client, TRANSCRIPTIONS, file, **fields)


def translate(client: TestClient, file: bytes | None, **fields: Any) -> httpx.Response:
    return upload(client, TRANSLATIONS, file, **fields)


def describe(client: TestClient, file: bytes | None, **fields: Any) -> httpx.Response:
    return upload(client, DESCRIPTIONS, file, **fields)


# --- transcriptions ---------------------------------------------------------------------------


def test_json_transcription_is_the_sdk_shape(client, fake, hello_wav) -> None:
    response = transcribe(client, hello_wav)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = Transcription.model_validate(response.json())
    assert body.text == "hello there"
    assert body.usage is not None and body.usage.type == "duration"
    (call,) = fake.transcribe_calls
    assert (call.timestamps, call.priority, call.temperature) == ("none", 10, 0.0)
    assert abs(len(call.audio) - len(sf.read(io.BytesIO(hello_wav))[0])) <= 1


@pytest.mark.parametrize(
    ("path", "said"), [(TRANSCRIPTIONS, "hello there"), (TRANSLATIONS, "hello in English")]
)
def test_text_srt_and_vtt(client, hello_wav, hello, path: str, said: str) -> None:
    """A translation is not timed by the backbone: its piece of audio (here all of it) is the
    cue, as is the fake's one segment of a transcription."""
    end = f"{len(hello) / INPUT_SAMPLE_RATE:.3f}".replace(".", ",")
    text = upload(client, path, hello_wav, response_format="text")
    assert (text.text, text.headers["content-type"]) == (f"{said}\n", "text/plain; charset=utf-8")
    srt = upload(client, path, hello_wav, response_format="srt")
    assert srt.text == f"1\n00:00:00,000 --> 00:00:0{end}\n{said}\n"
    vtt = upload(client, path, hello_wav, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text == f"WEBVTT\n\n00:00:00.000 --> 00:00:0{end.replace(',', '.')}\n{said}\n"


@pytest.mark.parametrize(
    ("granularities", "segments", "words", "asked"),
    [
        ([], True, False, "segment"),
        (["segment"], True, False, "segment"),
        (["word"], False, True, "word"),
        (["word", "segment"], True, True, "word"),
    ],
)
def test_verbose_json(client, fake, hello_wav, granularities, segments, words, asked) -> None:
    response = transcribe(
        client,
        hello_wav,
        response_format="verbose_json",
        temperature="0.2",
        **{"timestamp_granularities[]": granularities},
    )
    assert response.status_code == 200, response.text
    body = TranscriptionVerbose.model_validate(response.json())
    assert (body.text, body.language) == ("hello there", "en")
    assert body.duration == pytest.approx(len(fake.transcribe_calls[0].audio) / 16000, abs=1e-3)
    assert (body.segments is not None, body.words is not None) == (segments, words)
    if segments:
        (segment,) = body.segments
        assert (segment.id, segment.seek, segment.start, segment.text) == (0, 0, 0.0, "hello there")
        assert segment.end == pytest.approx(body.duration, abs=1e-3)
        assert segment.temperature == 0.2
    if words:
        assert [w.word for w in body.words] == ["hello", "there"]
        assert body.words[0].start == 0.0 and body.words[1].end == pytest.approx(body.duration)
    assert fake.transcribe_calls[0].timestamps == asked


def test_streamed_transcription_events_parse_with_the_sdk(client, hello_wav) -> None:
    response = transcribe(client, hello_wav, stream="true")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [STREAM_EVENT.validate_python(e) for e in sse_events(response.text)]
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0].delta == "hello there" and events[1].text == "hello there"


def test_fields_reach_the_backbone(client, fake, hello_wav) -> None:
    transcribe(client, hello_wav, language="en", prompt="Greetings.", temperature="0.5")
    (call,) = fake.transcribe_calls
    assert (call.language, call.prompt, call.temperature) == ("en", "Greetings.", 0.5)


@pytest.mark.parametrize(
    "model",
    ["voxgate-fake", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"],
)
def test_transcription_model_aliases(client, hello_wav, model: str) -> None:
    assert transcribe(client, hello_wav, model=model).status_code == 200


def test_flac_mp3_and_the_rest_are_accepted(client, hello) -> None:
    for fmt in ("FLAC", "OGG"):
        assert transcribe(client, wav(hello, fmt=fmt)).json()["text"] == "hello there"


def test_long_audio_is_transcribed_in_pieces_with_file_timestamps(fake, hello) -> None:
    """Speech, 70 s of silence, speech: four pieces (cut at 20, 40 and 60 s), of which only
    the first and the last hold speech and reach the backbone, trimmed to it."""
    audio = np.concatenate([hello, silence(70), hello])
    second_hello_s = (len(audio) - len(hello)) / INPUT_SAMPLE_RATE
    fake.transcript = lambda samples: f"piece of {len(samples) / INPUT_SAMPLE_RATE:.1f} s"
    with TestClient(app_for(fake)) as client:
        response = transcribe(
            client,
            wav(audio),
            response_format="verbose_json",
            **{"timestamp_granularities[]": ["segment", "word"]},
        )
    body = TranscriptionVerbose.model_validate(response.json())
    assert len(fake.transcribe_calls) == 2
    assert all(len(c.audio) <= 30 * INPUT_SAMPLE_RATE for c in fake.transcribe_calls)
    first, last = body.segments
    assert (first.start, first.seek) == (0.0, 0)
    # The fake dates its segment from the start of the audio it was given: the piece, which
    # starts the padding (0.25 s) before the second "hello there".
    assert last.start == pytest.approx(second_hello_s - 0.25, abs=0.1)
    assert last.seek == round(last.start * 100)
    assert last.end == pytest.approx(body.duration, abs=0.1)
    assert body.words[-1].end == last.end
    assert body.text == f"{first.text} {last.text}"


def test_silence_is_not_sent_to_the_backbone(client, fake) -> None:
    response = transcribe(client, wav(silence(3)))
    assert response.json()["text"] == ""
    assert fake.transcribe_calls == []


def test_a_backbone_failure_is_a_500_or_an_error_event(fake, hello_wav) -> None:
    async def failing(*args: Any, **kwargs: Any):
        raise BackboneError("the fake backbone failed on purpose")

    fake.transcribe = failing  # type: ignore[method-assign]
    with TestClient(app_for(fake)) as client:
        assert_error(transcribe(client, hello_wav), 500, "backbone_error")["type"] = "server_error"
        events = sse_events(transcribe(client, hello_wav, stream="true").text)
    assert events == [
        {
            "type": "error",
            "error": {
                "message": "the fake backbone failed on purpose",
                "type": "server_error",
                "param": None,
                "code": "backbone_error",
            },
        }
    ]


# --- transcriptions: bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"model": None}, "missing_required_parameter", "model"),
        ({"response_format": "diarized_json"}, "invalid_value", "response_format"),
        ({"temperature": "1.5"}, "invalid_value", "temperature"),
        ({"temperature": "nan"}, "invalid_value", "temperature"),
        ({"temperature": "warm"}, "invalid_type", "temperature"),
        ({"language": "English"}, "invalid_value", "language"),
        ({"prompt": "x" * 2001}, "string_above_max_length", "prompt"),
        (
            {"timestamp_granularities[]": ["char"]},
            "invalid_value",
            "timestamp_granularities[][0]",
        ),
        ({"stream": "maybe"}, "invalid_type", "stream"),
        ({"stream": "true", "response_format": "srt"}, "invalid_value", "stream"),
    ],
)
def test_bad_fields(client, fake, hello_wav, fields, code, param) -> None:
    data = {"model": "whisper-1"} | fields
    data = {k: v for k, v in data.items() if v is not None}
    files = {"file": ("speech.wav", hello_wav, "audio/wav")}
    assert_error(client.post("/v1/audio/transcriptions", data=data, files=files), 400, code, param)
    assert fake.transcribe_calls == []


@pytest.mark.parametrize("model", ["whisper-2", "tts-1", ""])
def test_unknown_transcription_models(client, fake, hello_wav, model: str) -> None:
    if model == "":  # an empty field is an unset one
        assert_error(
            transcribe(client, hello_wav, model=model), 400, "missing_required_parameter", "model"
        )
    else:
        error = assert_error(
            transcribe(client, hello_wav, model=model), 404, "model_not_found", "model"
        )
        assert "voxgate-fake" in error["message"] and "whisper-1" in error["message"]
    assert fake.transcribe_calls == []


@pytest.mark.parametrize(
    ("file", "code"),
    [
        (b"", "empty_file"),
        (wav(np.zeros(0, np.float32)), "empty_file"),
        (b"this is not audio, it is a text file" * 50, "invalid_file"),
        (np.random.default_rng(1).bytes(20_000), "invalid_file"),
        (wav(np.zeros(16_000, np.float32), fmt="AIFF"), "unsupported_format"),
    ],
    ids=["zero bytes", "no samples", "text", "noise", "aiff"],
)
def test_bad_files(client, fake, file: bytes, code: str) -> None:
    assert_error(transcribe(client, file), 400, code, "file")
    assert fake.transcribe_calls == []


def test_missing_file_and_file_that_is_not_a_file(client, fake) -> None:
    assert_error(transcribe(client, None), 400, "missing_required_parameter", "file")
    as_text = [("model", (None, "whisper-1")), ("file", (None, "hello"))]
    response = client.post("/v1/audio/transcriptions", files=as_text)
    assert_error(response, 400, "invalid_type", "file")
    assert fake.transcribe_calls == []


def test_not_multipart_and_broken_multipart(client, fake, hello_wav) -> None:
    as_json = client.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
    assert_error(as_json, 415, "unsupported_media_type")
    no_boundary = client.post(
        "/v1/audio/transcriptions",
        content=b"--x\r\n",
        headers={"content-type": "multipart/form-data"},
    )
    assert_error(no_boundary, 400, "invalid_multipart")
    two_files = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files=[("file", ("a.wav", hello_wav)), ("other", ("b.wav", hello_wav))],
    )
    assert_error(two_files, 400, "invalid_multipart")
    assert fake.transcribe_calls == []


def test_upload_over_the_size_limit(fake, hello) -> None:
    huge = wav(np.concatenate([hello] * 20))  # over the limit and the room for the fields
    over = wav(np.concatenate([hello] * 7))  # over the limit, within that room
    assert len(huge) > 100_000 + (64 << 10) and 100_000 < len(over) < 100_000 + (64 << 10)
    with TestClient(app_for(fake, rest={"max_upload_bytes": 100_000})) as client:
        # Declared by Content-Length: refused before the body is read.
        assert_error(transcribe(client, huge), 413, "file_too_large")
        # Chunked, with no length: refused once the bytes read pass the limit.
        body, content_type = httpx_multipart(huge)
        chunked = client.post(
            "/v1/audio/transcriptions",
            content=iter([body[i : i + 16_384] for i in range(0, len(body), 16_384)]),
            headers={"content-type": content_type},
        )
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "file_too_large")
        # The file alone, once the form is read.
        assert_error(transcribe(client, over), 413, "file_too_large", "file")
        # Within the limit: fine.
        assert transcribe(client, wav(hello)).status_code == 200
    assert len(fake.transcribe_calls) == 1


def httpx_multipart(file: bytes) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/", data={"model": "whisper-1"}, files={"file": ("a.wav", file)}
    )
    return request.read(), request.headers["content-type"]


def test_audio_over_the_duration_limit(fake, hello) -> None:
    with TestClient(app_for(fake, rest={"max_audio_seconds": 2.0})) as client:
        long = wav(np.concatenate([hello, silence(2.0)]))
        assert_error(transcribe(client, long), 400, "audio_too_long", "file")
    assert fake.transcribe_calls == []


# --- translations -----------------------------------------------------------------------------


def test_json_translation_is_the_sdk_shape(client, fake, hello, hello_wav) -> None:
    response = translate(client, hello_wav, temperature="0.3")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert Translation.model_validate(response.json()).text == "hello in English"
    (call,) = fake.translate_calls
    assert (call.priority, call.temperature) == (10, 0.3)
    assert abs(len(call.audio) - len(hello)) <= 1
    assert fake.transcribe_calls == []


def test_verbose_json_translation(client, fake, hello, hello_wav) -> None:
    """The backbone does not time a translation: each piece of audio is one segment."""
    seconds = len(hello) / INPUT_SAMPLE_RATE
    verbose = translate(client, hello_wav, response_format="verbose_json").json()
    assert (verbose["task"], "words" in verbose) == ("translate", False)
    body = TranslationVerbose.model_validate(verbose)
    assert (body.text, body.language) == ("hello in English", "english")
    assert body.duration == pytest.approx(seconds, abs=1e-3)
    (segment,) = body.segments
    assert (segment.id, segment.seek, segment.start, segment.text) == (
        0,
        0,
        0.0,
        "hello in English",
    )
    assert segment.end == pytest.approx(seconds, abs=1e-3)
    assert len(fake.translate_calls) == 1 and fake.transcribe_calls == []


def test_silence_is_not_sent_to_be_translated(client, fake) -> None:
    assert translate(client, wav(silence(3))).json()["text"] == ""
    assert fake.translate_calls == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (TRANSLATIONS, "the fake backbone cannot translate"),
        (DESCRIPTIONS, "the fake backbone cannot describe audio"),
    ],
)
def test_a_backbone_that_cannot_translate_or_describe_is_a_400(
    fake, hello_wav, path: str, message: str
) -> None:
    fake.can_translate = fake.can_describe = False
    with TestClient(app_for(fake)) as client:
        error = assert_error(upload(client, path, hello_wav), 400, "unsupported_feature")
    assert error["type"] == "invalid_request_error"
    assert error["message"] == message
    assert fake.translate_calls == [] and fake.describe_calls == []


async def test_the_cascade_refuses_translation_before_any_work() -> None:
    # Whisper tiny.en is English-only; nothing the cascade holds is touched.
    cascade = CascadeBackbone(None, None, None, None, CascadeConfig())  # type: ignore[arg-type]
    assert cascade.takes_transcription_prompt
    with pytest.raises(TranslationUnsupported, match="multilingual backbone"):
        await cascade.translate(silence(1))


@pytest.mark.parametrize(
    ("path", "fields", "status", "code", "param"),
    [
        (TRANSLATIONS, {"stream": "true"}, 400, "unsupported_parameter", "stream"),
        (TRANSLATIONS, {"model": None}, 400, "missing_required_parameter", "model"),
        (TRANSLATIONS, {"model": "whisper-2"}, 404, "model_not_found", "model"),
        (TRANSLATIONS, {"model": "tts-1"}, 404, "model_not_found", "model"),
        (
            TRANSLATIONS,
            {"response_format": "diarized_json"},
            400,
            "invalid_value",
            "response_format",
        ),
        (TRANSLATIONS, {"temperature": "1.5"}, 400, "invalid_value", "temperature"),
        (TRANSLATIONS, {"prompt": "x" * 2001}, 400, "string_above_max_length", "prompt"),
        (DESCRIPTIONS, {"kind": "emotion"}, 400, "invalid_value", "kind"),
        (DESCRIPTIONS, {"response_format": "srt"}, 400, "invalid_value", "response_format"),
        (DESCRIPTIONS, {"model": None}, 400, "missing_required_parameter", "model"),
        (DESCRIPTIONS, {"model": "whisper-2"}, 404, "model_not_found", "model"),
        (DESCRIPTIONS, {"model": "tts-1"}, 404, "model_not_found", "model"),
    ],
)
def test_bad_translation_and_description_fields(
    client, fake, hello_wav, path, fields, status, code, param
) -> None:
    data = {"model": "whisper-1"} | fields
    data = {k: v for k, v in data.items() if v is not None}
    files = {"file": ("speech.wav", hello_wav, "audio/wav")}
    assert_error(client.post(path, data=data, files=files), status, code, param)
    assert fake.translate_calls == [] and fake.describe_calls == []


@pytest.mark.parametrize("path", [TRANSLATIONS, DESCRIPTIONS])
def test_translation_and_description_models_are_the_transcription_ones(
    client, hello_wav, path: str
) -> None:
    for model in ("voxgate-fake", "whisper-1", "gpt-4o-transcribe"):
        assert upload(client, path, hello_wav, model=model).status_code == 200


@pytest.mark.parametrize("path", [TRANSLATIONS, DESCRIPTIONS])
def test_bad_and_oversized_translation_and_description_uploads(fake, hello, path: str) -> None:
    over = wav(np.concatenate([hello] * 7))  # over the limit, within the room for the fields
    with TestClient(app_for(fake, rest={"max_upload_bytes": 100_000})) as client:
        assert_error(upload(client, path, b""), 400, "empty_file", "file")
        assert_error(upload(client, path, b"not audio" * 100), 400, "invalid_file", "file")
        assert_error(upload(client, path, None), 400, "missing_required_parameter", "file")
        assert_error(upload(client, path, over), 413, "file_too_large", "file")
        huge = wav(np.concatenate([hello] * 20))
        assert_error(upload(client, path, huge), 413, "file_too_large")
        not_multipart = client.post(path, json={"model": "whisper-1"})
        assert_error(not_multipart, 415, "unsupported_media_type")
    assert fake.translate_calls == [] and fake.describe_calls == []


@pytest.mark.parametrize("path", [TRANSCRIPTIONS, TRANSLATIONS])
@pytest.mark.parametrize("takes_prompt", [True, False])
def test_a_prompt_only_where_the_backbone_takes_one(fake, hello_wav, path, takes_prompt) -> None:
    """A backbone whose ASR prompt is fixed refuses a hint rather than silently dropping it."""
    fake.takes_transcription_prompt = takes_prompt
    with TestClient(app_for(fake)) as client:
        prompted = upload(client, path, hello_wav, prompt="Greetings.")
        unprompted = upload(client, path, hello_wav, prompt="")  # an empty field is unset
    assert unprompted.status_code == 200
    calls = fake.transcribe_calls + fake.translate_calls
    if takes_prompt and path != TRANSLATIONS:
        assert prompted.status_code == 200
        assert len(calls) == 2
    else:
        # Translations use no prompt on any backbone: refused, never dropped.
        error = assert_error(prompted, 400, "unsupported_parameter", "prompt")
        assert error["type"] == "invalid_request_error"
        assert "fixed instruction" in error["message"] or "translations" in error["message"]
        assert len(calls) == 1
    assert [c.prompt for c in fake.transcribe_calls] == (
        [] if path == TRANSLATIONS else ["Greetings.", None] if takes_prompt else [None]
    )


def test_translations_are_documented_like_transcriptions(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def fields(path: str) -> set[str]:
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert body["schema"]["required"] == ["file", "model"]
        return set(body["schema"]["properties"])

    assert fields(TRANSLATIONS) == {
        "file",
        "model",
        "prompt",
        "temperature",
        "response_format",
        "stream",
    }
    assert fields(TRANSCRIPTIONS) == fields(TRANSLATIONS) | {
        "language",
        "timestamp_granularities[]",
    }


# --- descriptions (voxgate's extension) ------------------------------------------------------


def test_a_json_description(client, fake, hello, hello_wav) -> None:
    response = describe(client, hello_wav)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"text": "a person says hello"}
    (call,) = fake.describe_calls
    assert (call.kind, call.priority) == ("caption", 10)
    assert abs(len(call.audio) - len(hello)) <= 1
    assert fake.transcribe_calls == [] and fake.translate_calls == []


def test_a_text_description_of_the_speakers(client, fake, hello_wav) -> None:
    response = describe(client, hello_wav, kind="paralinguistic", response_format="text")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "a person says hello\n"
    assert [c.kind for c in fake.describe_calls] == ["paralinguistic"]


def test_a_long_clip_is_described_whole_up_to_the_cap(fake, hello) -> None:
    """Longer than a transcription's piece: one call with all of it; over 200 s: refused."""
    within = np.concatenate([hello, silence(60), hello])
    with TestClient(app_for(fake)) as client:
        assert describe(client, wav(within)).status_code == 200
        error = assert_error(describe(client, wav(silence(201))), 400, "audio_too_long", "file")
    assert "200 s" in error["message"] and "description" in error["message"]
    (call,) = fake.describe_calls
    assert abs(len(call.audio) - len(within)) <= 1


def test_the_servers_duration_limit_applies_to_descriptions(fake, hello) -> None:
    with TestClient(app_for(fake, rest={"max_audio_seconds": 2.0})) as client:
        long = wav(np.concatenate([hello, silence(2.0)]))
        error = assert_error(describe(client, long), 400, "audio_too_long", "file")
    assert "2 s" in error["message"]
    assert fake.describe_calls == []


@pytest.mark.parametrize("response_format", ["json", "text"])
def test_silence_is_not_sent_to_be_described(client, fake, response_format: str) -> None:
    response = describe(client, wav(silence(3)), response_format=response_format)
    assert response.status_code == 200
    assert response.text == ('{"text":""}' if response_format == "json" else "\n")
    assert fake.describe_calls == []


def test_sound_that_is_not_speech_is_described(client, fake) -> None:
    """A caption is of events, not only of speech: the VAD's verdict does not gate it."""
    t = np.arange(2 * INPUT_SAMPLE_RATE) / INPUT_SAMPLE_RATE
    hum = (0.01 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    assert describe(client, wav(hum)).json()["text"] == "a person says hello"
    assert len(fake.describe_calls) == 1


async def test_the_cascade_refuses_descriptions_before_any_work() -> None:
    cascade = CascadeBackbone(None, None, None, None, CascadeConfig())  # type: ignore[arg-type]
    with pytest.raises(DescriptionUnsupported, match="audio-language backbone"):
        await cascade.describe(silence(1), "paralinguistic")


def test_descriptions_are_documented_as_voxgates(client) -> None:
    operation = client.get("/openapi.json").json()["paths"][DESCRIPTIONS]["post"]
    assert "voxgate's extension" in operation["description"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file", "model"]
    assert set(schema["properties"]) == {"file", "model", "kind", "response_format"}
    assert schema["properties"]["kind"]["enum"] == ["caption", "paralinguistic"]
    assert schema["properties"]["kind"]["default"] == "caption"


# --- speech -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg; codecs=opus"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm; rate=24000; encoding=s16le; channels=1"),
    ],
)
def test_speech_in_each_format(client, fake, fmt: str, media_type: str) -> None:
    response = speech(client, input="Hello there. How are you today?", response_format=fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert "x-voxgate-instructions" not in response.headers
    rate = OUTPUT_SAMPLE_RATE if fmt == "pcm" else INPUT_SAMPLE_RATE
    seconds = len(decoded(response.content, fmt)) / rate
    assert abs(seconds - 2 * FAKE_PIECE_S) < 0.1  # two sentences, 0.3 s of tone each
    assert fake.synthesize_calls == [
        SynthesizeCall("Hello there.", "joe", 1.0, None, 10),
        SynthesizeCall("How are you today?", "joe", 1.0, None, 10),
    ]


def test_pcm_is_exactly_the_resampled_speech(client) -> None:
    pcm = speech(client, response_format="pcm").content
    assert len(pcm) == 2 * round(FAKE_PIECE_S * OUTPUT_SAMPLE_RATE)


def test_speech_default_format_is_mp3_and_speed_reaches_the_backbone(client, fake) -> None:
    response = speech(client, speed=1.5, model="voxgate-fake")
    assert response.headers["content-type"] == "audio/mpeg"
    assert fake.synthesize_calls[0].speed == 1.5


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "voxgate-fake"])
def test_speech_model_aliases(client, model: str) -> None:
    assert speech(client, model=model).status_code == 200


def test_speech_as_server_sent_events(client) -> None:
    response = speech(client, input="One. Two.", response_format="wav", stream_format="sse")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert len(events) > 2  # audio in pieces, not one blob
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(sf.read(io.BytesIO(audio))[0]) == round(2 * FAKE_PIECE_S * OUTPUT_SAMPLE_RATE)
    assert events[-1] == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        "x_voxgate": {"audio_seconds": 2 * FAKE_PIECE_S},
    }


def test_instructions_are_reported_followed_or_ignored(client, fake) -> None:
    ignored = speech(client, instructions="Speak softly.")
    assert ignored.headers["x-voxgate-instructions"] == "ignored"
    assert fake.synthesize_calls[-1].instructions == "Speak softly."
    events = sse_events(speech(client, instructions="Softly.", stream_format="sse").text)
    assert events[-1]["x_voxgate"]["instructions"] == "ignored"
    fake.follows_instructions = True
    assert speech(client, instructions="Softly.").headers["x-voxgate-instructions"] == "followed"


def test_a_synthesis_failure_before_audio_is_a_500(fake) -> None:
    class Failing(FakeBackbone):
        async def synthesize(self, text: str, **kwargs: Any) -> AsyncIterator[AudioChunk]:
            raise BackboneError("no voice today")
            yield  # pragma: no cover

    with TestClient(app_for(Failing())) as client:
        assert_error(speech(client), 500, "backbone_error")
        assert_error(speech(client, stream_format="sse"), 500, "backbone_error")


def test_a_synthesis_failure_mid_stream_is_an_error_event(fake) -> None:
    class FailsSecond(FakeBackbone):
        async def synthesize(self, text: str, **kwargs: Any) -> AsyncIterator[AudioChunk]:
            async for chunk in super().synthesize(text, **kwargs):
                yield chunk
            if len(self.synthesize_calls) > 1:
                raise BackboneError("lost the voice")

    with TestClient(app_for(FailsSecond())) as client:
        text = speech(client, input="One. Two.", response_format="pcm", stream_format="sse").text
    events = sse_events(text)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "backbone_error"


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (EngineUnavailable("the engine died"), 503, "engine_unavailable"),
        (RequestRejected("the engine refused it"), 400, "invalid_request"),
        (ContextBudgetExceeded("too long"), 400, "context_length_exceeded"),
        (RuntimeError("a bug, not a backbone error"), 500, "server_error"),
    ],
    ids=["engine-dead", "rejected", "context", "bug"],
)
def test_every_failure_has_its_code_on_rest_and_in_sse(
    hello_wav, failure: Exception, status: int, code: str
) -> None:
    """Whatever fails, the client gets OpenAI's error shape with a stable code: as the HTTP
    answer before any output, as the last SSE event after it."""

    class Failing(FakeBackbone):
        async def transcribe(self, *args: Any, **kwargs: Any) -> Any:
            raise failure

        async def synthesize(self, text: str, **kwargs: Any) -> AsyncIterator[AudioChunk]:
            async for chunk in super().synthesize(text, **kwargs):
                yield chunk
            if len(self.synthesize_calls) > 1:
                raise failure

    with TestClient(app_for(Failing()), raise_server_exceptions=False) as client:
        error = assert_error(transcribe(client, hello_wav), status, code)
        assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
        if status == 503:
            assert transcribe(client, hello_wav).headers["retry-after"] == "2"
        events = sse_events(transcribe(client, hello_wav, stream="true").text)
        assert [e["error"]["code"] for e in events] == [code]
        events = sse_events(
            speech(client, input="One. Two.", response_format="pcm", stream_format="sse").text
        )
        assert events[0]["type"] == "speech.audio.delta"
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == code


# --- speech: bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"voice": "nobody"}, 400, "unknown_voice", "voice"),
        ({"voice": {"id": "voice_123"}}, 400, "invalid_type", "voice"),
        ({"model": "tts-2"}, 404, "model_not_found", "model"),
        ({"model": "whisper-1"}, 404, "model_not_found", "model"),
        ({"speed": 0.1}, 400, "invalid_value", "speed"),
        ({"speed": 4.5}, 400, "invalid_value", "speed"),
        ({"speed": "fast"}, 400, "invalid_type", "speed"),
        ({"input": ""}, 400, "invalid_value", "input"),
        ({"input": "  \n "}, 400, "invalid_value", "input"),
        ({"input": 42}, 400, "invalid_type", "input"),
        ({"response_format": "aiff"}, 400, "invalid_value", "response_format"),
        ({"stream_format": "chunks"}, 400, "invalid_value", "stream_format"),
        ({"volume": 11}, 400, "unknown_parameter", "volume"),
        ({"input": None}, 400, "invalid_type", "input"),
    ],
)
def test_bad_speech_requests(client, fake, body, status, code, param) -> None:
    error = assert_error(speech(client, **body), status, code, param)
    if code == "unknown_voice":
        assert "joe" in error["message"]
    assert fake.synthesize_calls == []


def test_missing_speech_fields(client, fake) -> None:
    for missing in ("model", "input", "voice"):
        body = {"model": "tts-1", "voice": "joe", "input": "Hi."}
        del body[missing]
        response = client.post("/v1/audio/speech", json=body)
        assert_error(response, 400, "missing_required_parameter", missing)
    assert fake.synthesize_calls == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_speech_body_that_is_not_a_json_object(client, fake, body: bytes) -> None:
    response = client.post(
        "/v1/audio/speech", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")
    assert fake.synthesize_calls == []


def test_speech_text_limits(fake) -> None:
    with TestClient(app_for(fake, rest={"max_text_chars": 20})) as client:
        assert speech(client, input="x" * 20).status_code == 200
        assert_error(speech(client, input="x" * 21), 400, "input_too_long", "input")
        long_style = speech(client, instructions="y" * 21)
        assert_error(long_style, 400, "input_too_long", "instructions")
        huge = client.post(
            "/v1/audio/speech",
            content=b'{"input": "' + b"x" * 100_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert_error(huge, 413, "file_too_large")
    assert len(fake.synthesize_calls) == 1


# --- voices, the gate -------------------------------------------------------------------------


def test_voices(client) -> None:
    assert client.get("/v1/audio/voices").json() == {
        "object": "list",
        "data": [
            {
                "id": "joe",
                "object": "voice",
                "name": "joe",
                "language": VOICE.language,
                "sample_rate": VOICE.sample_rate,
                "aliases": sorted(OPENAI_VOICES),
            }
        ],
    }


@pytest.mark.parametrize("voice", OPENAI_VOICES)
def test_openai_voice_names_speak_as_their_voice(client, fake, voice: str) -> None:
    # The SDK's own examples name OpenAI's voices: each is an alias of the default voice.
    assert speech(client, voice=voice).status_code == 200
    assert fake.synthesize_calls[-1].voice == "joe"


def test_voice_aliases_are_the_operators(fake) -> None:
    with TestClient(app_for(fake, voice_aliases={"narrator": "joe"})) as client:
        assert speech(client, voice="narrator").status_code == 200
        assert_error(speech(client, voice="alloy"), 400, "unknown_voice", "voice")
        (voice,) = client.get("/v1/audio/voices").json()["data"]
        assert voice["aliases"] == ["narrator"]
    with pytest.raises(ValueError, match="not a voice of this backbone"):
        with TestClient(app_for(fake, voice_aliases={"alloy": "nobody"})):
            pass  # pragma: no cover - the server refuses to start


def test_the_api_key_is_required_when_configured(fake, hello_wav) -> None:
    with TestClient(app_for(fake, api_key=SecretStr(TEST_KEY))) as client:
        assert_error(transcribe(client, hello_wav), 401, "invalid_api_key")
        assert_error(describe(client, hello_wav), 401, "invalid_api_key")
        assert_error(speech(client), 401, "invalid_api_key")
        assert_error(client.get("/v1/audio/voices"), 401, "invalid_api_key")
        assert fake.describe_calls == []
        client.headers["authorization"] = f"Bearer {TEST_KEY}"
        assert transcribe(client, hello_wav).status_code == 200
        assert describe(client, hello_wav).status_code == 200
        assert speech(client).status_code == 200
        assert client.get("/v1/audio/voices").status_code == 200


def test_an_unhealthy_backbone_is_503_with_retry_after(client, fake, hello_wav) -> None:
    fake.is_healthy = False
    for response in (
        transcribe(client, hello_wav),
        translate(client, hello_wav),
        describe(client, hello_wav),
        speech(client),
    ):
        assert_error(response, 503, "engine_unavailable")
        assert response.headers["retry-after"] == "2"
    assert fake.transcribe_calls == [] and fake.synthesize_calls == []
    assert fake.translate_calls == [] and fake.describe_calls == []


async def test_over_capacity_is_429_with_retry_after(fake, hello_wav) -> None:
    app = app_for(fake, rest={"max_concurrent_requests": 1, "retry_after_s": 7})
    fake.transcribe_gate = asyncio.Event()
    entered = asyncio.Event()
    transcribe_held = fake.transcribe

    async def transcribe_entered(*args: Any, **kwargs: Any):
        entered.set()
        return await transcribe_held(*args, **kwargs)

    fake.transcribe = transcribe_entered  # type: ignore[method-assign]
    files = {"file": ("a.wav", hello_wav)}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://testserver"
        ) as client,
    ):
        post = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files=files)
        held = asyncio.create_task(post)
        await entered.wait()  # the first request is inside the backbone, holding the slot
        refused = await client.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "joe", "input": "Hi."}
        )
        assert_error(refused, 429, "rate_limited")
        assert refused.headers["retry-after"] == "7"
        assert fake.synthesize_calls == []
        fake.transcribe_gate.set()
        assert (await held).status_code == 200
        # The slot is free again.
        again = await client.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "joe", "input": "Hi."}
        )
        assert again.status_code == 200
        assert app.state.services.rest.requests.active == 0


# --- a real server: streaming and the official SDK --------------------------------------------


async def test_first_audio_leaves_before_the_whole_text_is_synthesised(fake) -> None:
    fake.synthesize_gate = asyncio.Event()  # holds every synthesis after the first
    app = app_for(fake)
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as client:
        body = {"model": "tts-1", "voice": "joe", "input": "First. Second. Third."}
        async with client.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/audio/speech",
            json=body | {"response_format": "pcm"},
        ) as response:
            chunks = response.aiter_bytes()
            first = await anext(chunks)
            # The first sentence's audio has left while the second is held at the gate: the
            # rest of the text cannot have been synthesised yet.
            assert first
            assert [c.text for c in fake.synthesize_calls] in (["First."], ["First.", "Second."])
            fake.synthesize_gate.set()
            rest = b"".join([c async for c in chunks])
        assert len(first + rest) == 3 * 2 * round(FAKE_PIECE_S * OUTPUT_SAMPLE_RATE)
        assert app.state.services.rest.requests.active == 0


async def test_a_client_leaving_mid_stream_frees_its_slot_and_stops_synthesis(fake) -> None:
    fake.synthesize_gate = asyncio.Event()
    app = app_for(fake, rest={"max_concurrent_requests": 1})
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as client:
        body = {"model": "tts-1", "voice": "joe", "input": "First. Second. Third."}
        async with client.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/audio/speech",
            json=body | {"response_format": "pcm"},
        ) as response:
            assert await anext(response.aiter_bytes())
        # The client hung up while the second sentence was waiting to be synthesised.
        await until(lambda: app.state.services.rest.requests.active == 0)
        fake.synthesize_gate.set()
        # The stream was closed where it stood: the third sentence is never synthesised.
        assert [c.text for c in fake.synthesize_calls] in (["First."], ["First.", "Second."])


async def test_a_long_transcription_stops_when_its_client_leaves(fake, hello) -> None:
    # Three pieces with speech; the client hangs up while the first is being transcribed.
    audio = np.concatenate([hello, silence(29), hello, silence(29), hello])
    fake.transcribe_gate = asyncio.Event()
    app = app_for(fake)
    async with serving(app) as port:
        async with httpx.AsyncClient(timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    f"http://127.0.0.1:{port}/v1/audio/transcriptions",
                    data={"model": "whisper-1"},
                    files={"file": ("long.wav", wav(audio))},
                )
        # The server notices the hang-up while the first piece is still in the backbone, gives
        # up the request and frees its slot; the other pieces are never transcribed.
        await until(lambda: app.state.services.rest.requests.active == 0)
        fake.transcribe_gate.set()
    assert len(fake.transcribe_calls) == 1


async def test_the_official_sdk(fake, hello_wav) -> None:
    async with serving(app_for(fake, api_key=SecretStr(TEST_KEY))) as port:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY)
        async with client:
            text = await client.audio.transcriptions.create(
                file=("hello.wav", hello_wav), model="whisper-1"
            )
            assert text.text == "hello there"
            verbose = await client.audio.transcriptions.create(
                file=("hello.wav", hello_wav),
                model="whisper-1",
                response_format="verbose_json",
                timestamp_granularities=["word", "segment"],
            )
            assert [w.word for w in verbose.words] == ["hello", "there"]
            assert verbose.segments[0].text == "hello there"
            srt = await client.audio.transcriptions.create(
                file=("hello.wav", hello_wav), model="whisper-1", response_format="srt"
            )
            assert srt.startswith("1\n00:00:00,000 --> ")
            stream = await client.audio.transcriptions.create(
                file=("hello.wav", hello_wav), model="gpt-4o-transcribe", stream=True
            )
            events = [event async for event in stream]
            assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]

            async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="joe", input="Hello. Bye.", response_format="wav"
            ) as response:
                audio = await response.read()
            assert len(sf.read(io.BytesIO(audio))[0]) == 2 * round(
                FAKE_PIECE_S * OUTPUT_SAMPLE_RATE
            )

            with pytest.raises(NotFoundError) as missing:
                await client.audio.speech.create(model="tts-9", voice="joe", input="Hi.")
            assert missing.value.code == "model_not_found"
            with pytest.raises(BadRequestError) as bad:
                await client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
            assert bad.value.code == "unknown_voice"


# The SDK marks `audio.translations.create` deprecated (whisper-1's announced shutdown); clients
# still call it, and it warns on every call.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_the_official_sdk_translates(fake, hello_wav) -> None:
    async with serving(app_for(fake, api_key=SecretStr(TEST_KEY))) as port:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY)
        async with client:
            file = ("hello.wav", hello_wav)
            text = await client.audio.translations.create(file=file, model="whisper-1")
            assert text.text == "hello in English"
            verbose = await client.audio.translations.create(
                file=file, model="whisper-1", response_format="verbose_json", temperature=0.2
            )
            assert (verbose.language, verbose.segments[0].temperature) == ("english", 0.2)
            vtt = await client.audio.translations.create(
                file=file, model="whisper-1", response_format="vtt"
            )
            assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
            fake.can_translate = False
            with pytest.raises(BadRequestError) as refused:
                await client.audio.translations.create(file=file, model="whisper-1")
            assert (refused.value.code, refused.value.param) == ("unsupported_feature", None)
            fake.takes_transcription_prompt = False
            with pytest.raises(BadRequestError) as prompted:
                await client.audio.translations.create(
                    file=file, model="whisper-1", prompt="Greetings."
                )
            assert (prompted.value.code, prompted.value.param) == (
                "unsupported_parameter",
                "prompt",
            )
    assert len(fake.translate_calls) == 3


async def test_a_streamed_answer_frees_its_slot_before_the_client_sees_its_end() -> None:
    """A client that reads the end of a streamed answer and sends its next request at once
    must not find its own previous request still holding a slot (that gave 429s)."""
    from voxgate.server.rest import ReleasingStream

    async def body():
        yield b"one"
        yield b"two"

    freed: list[str] = []
    seen_when_freed: list[int] = []
    messages: list[dict] = []
    response = ReleasingStream(body())
    response.on_close = lambda: (freed.append("slot"), seen_when_freed.append(len(messages)))

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client never goes away
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert freed == ["slot"]  # once
    closing = next(i for i, m in enumerate(messages) if m.get("more_body") is False)
    assert seen_when_freed[0] <= closing  # freed before the closing message went out
    assert [m.get("body") for m in messages[1:closing]] == [b"one", b"two"]
