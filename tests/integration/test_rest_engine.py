"""The REST speech endpoints end to end: real server, real backbone, real speech.

The official `openai` SDK transcribes Piper speech (WAV, FLAC, MP3) in every response format and
streamed, and real recorded speech from Debian's pocketsphinx-testdata when it is installed;
speech comes back in every format, decodes, and transcribes back to the text it was made from.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
from audio_checks import wav_bytes, wer, words
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, NotFoundError
from openai.types.audio import TranscriptionVerbose

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.server.audio_files import OUTPUT_SAMPLE_RATE, decode_upload

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

SENTENCE = "The quick brown fox jumps over the lazy dog."
SPOKEN_TEXT = "The weather is lovely today. Let us go for a walk in the park, and then have lunch."
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def sdk(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, timeout=120)


def encoded(audio: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt in ("WAV", "FLAC"):
        sf.write(out, audio, INPUT_SAMPLE_RATE, format=fmt)
        return out.getvalue()
    with av.open(out, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=INPUT_SAMPLE_RATE)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio[np.newaxis, :], format="flt", layout="mono")
        frame.sample_rate = INPUT_SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def fox(speak) -> np.ndarray:
    return speak(SENTENCE)


# --- transcriptions ---------------------------------------------------------------------------


async def test_every_response_format(server, fox) -> None:
    file = ("fox.wav", encoded(fox, "WAV"))
    duration = len(fox) / INPUT_SAMPLE_RATE
    async with sdk(server) as client:
        plain = await client.audio.transcriptions.create(file=file, model="whisper-1")
        assert wer(SENTENCE, plain.text) <= 0.1, plain.text

        text = await client.audio.transcriptions.create(
            file=file, model="whisper-1", response_format="text"
        )
        assert wer(SENTENCE, text) <= 0.1 and text.endswith("\n")

        srt = await client.audio.transcriptions.create(
            file=file, model="whisper-1", response_format="srt"
        )
        assert srt.startswith("1\n00:00:0") and " --> 00:00:0" in srt
        assert wer(SENTENCE, " ".join(srt.splitlines()[2:])) <= 0.1

        vtt = await client.audio.transcriptions.create(
            file=file, model="whisper-1", response_format="vtt"
        )
        assert vtt.startswith("WEBVTT\n\n00:00:0")

        verbose = await client.audio.transcriptions.create(
            file=file,
            model="voxgate-cascade",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert isinstance(verbose, TranscriptionVerbose)
    assert verbose.duration == pytest.approx(duration, abs=0.01)
    assert wer(SENTENCE, verbose.text) <= 0.1
    assert verbose.segments and verbose.words
    assert wer(SENTENCE, " ".join(w.word for w in verbose.words)) <= 0.1
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= duration + 0.01 for w in verbose.words)
    assert verbose.segments[0].start < 1.0 and verbose.segments[-1].end <= duration + 0.01


@pytest.mark.parametrize("fmt", ["FLAC", "MP3"])
async def test_compressed_uploads(server, fox, fmt: str) -> None:
    async with sdk(server) as client:
        result = await client.audio.transcriptions.create(
            file=(f"fox.{fmt.lower()}", encoded(fox, fmt)), model="gpt-4o-mini-transcribe"
        )
    assert wer(SENTENCE, result.text) <= 0.1, result.text


async def test_streamed_transcription(server, fox) -> None:
    async with sdk(server) as client:
        stream = await client.audio.transcriptions.create(
            file=("fox.wav", encoded(fox, "WAV")), model="gpt-4o-transcribe", stream=True
        )
        events = [event async for event in stream]
    assert [e.type for e in events][-1] == "transcript.text.done"
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert deltas and "".join(deltas) == events[-1].text
    assert wer(SENTENCE, events[-1].text) <= 0.1


def librivox_clips() -> list[tuple[np.ndarray, str]]:
    if not LIBRIVOX.is_dir():
        pytest.fail(
            "pocketsphinx-testdata is not installed: apt-get install -y pocketsphinx-testdata "
            "(deploy/install.sh --test installs it)"
        )
    references = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, utterance = line.rpartition("(")
        references[utterance.strip(" )")] = text.replace("<s>", "").replace("</s>", "").strip()
    clips = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == INPUT_SAMPLE_RATE
        clips.append((audio, references[path.stem]))
    return clips


async def test_recorded_speech(server) -> None:
    clips = librivox_clips()
    hypotheses = []
    async with sdk(server) as client:
        for audio, _ in clips:
            result = await client.audio.transcriptions.create(
                file=("clip.wav", encoded(audio, "WAV")), model="whisper-1"
            )
            hypotheses.append(result.text)
    reference = " ".join(r for _, r in clips)
    assert wer(reference, " ".join(hypotheses)) <= 0.2, hypotheses


async def test_long_recorded_speech_is_split_with_file_timestamps(server) -> None:
    """The five LibriVox clips with 2 s of silence between them: over 30 s, so the server cuts
    it in a pause, transcribes two pieces and moves the second piece's times to file time."""
    clips = librivox_clips()
    gap = np.zeros(2 * INPUT_SAMPLE_RATE, np.float32)
    parts, offsets, at = [], [], 0
    for audio, _ in clips:
        offsets.append(at / INPUT_SAMPLE_RATE)
        parts += [audio, gap]
        at += len(audio) + len(gap)
    audio = np.concatenate(parts)
    assert len(audio) > 30 * INPUT_SAMPLE_RATE
    async with sdk(server) as client:
        verbose = await client.audio.transcriptions.create(
            file=("book.flac", encoded(audio, "FLAC")),
            model="whisper-1",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    reference = " ".join(r for _, r in clips)
    assert wer(reference, verbose.text) <= 0.2, verbose.text
    assert verbose.duration == pytest.approx(len(audio) / INPUT_SAMPLE_RATE, abs=0.01)
    # Two pieces: segments of the second start from its own offset (seek), in file time.
    assert len({s.seek for s in verbose.segments}) == 2
    assert [s.start for s in verbose.segments] == sorted(s.start for s in verbose.segments)
    # Words land where they were said: the first word of each clip near the clip's start.
    found = verbose.words
    for (_, text), offset in zip(clips, offsets, strict=True):
        first = words(text)[0]
        assert any(
            words(w.word) == [first] and offset - 0.5 <= w.start <= offset + 1.5 for w in found
        ), (first, offset)


# --- speech -----------------------------------------------------------------------------------


def decoded(data: bytes, fmt: str) -> np.ndarray:
    """Speech bytes -> 16 kHz mono, the way a client would decode them."""
    if fmt == "pcm":
        pcm = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        return decode_upload(io.BytesIO(wav_bytes(pcm, OUTPUT_SAMPLE_RATE)), max_seconds=600)
    if fmt in ("wav", "flac"):  # libsndfile, the plainest reader, must read them too
        assert sf.info(io.BytesIO(data)).samplerate == OUTPUT_SAMPLE_RATE
        assert len(sf.read(io.BytesIO(data))[0]) > 0
    return decode_upload(io.BytesIO(data), max_seconds=600)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "opus", "aac", "flac"])
async def test_speech_in_each_format_transcribes_back(server, fmt: str) -> None:
    async with sdk(server) as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="joe", input=SPOKEN_TEXT, response_format=fmt
        ) as response:
            assert response.headers["content-type"].startswith(
                {"pcm": "audio/pcm", "opus": "audio/ogg"}.get(fmt, "audio/")
            )
            data = await response.read()
        audio = decoded(data, fmt)
        assert len(audio) > 2 * INPUT_SAMPLE_RATE  # a few seconds of speech, not a click
        heard = await client.audio.transcriptions.create(
            file=("speech.wav", wav_bytes(audio, INPUT_SAMPLE_RATE)), model="whisper-1"
        )
    # Piper samples its prosody, so each synthesis differs a little and tiny.en mishears some
    # (200 round trips: median WER 0.06, max 0.22, e.g. "But whether it's lovely today");
    # audio broken in encoding or decoding is not heard as the sentence at all.
    assert wer(SPOKEN_TEXT, heard.text) <= 0.3, heard.text


async def test_speech_as_events_in_pieces(server) -> None:
    body = {
        "model": "gpt-4o-mini-tts",
        "voice": "joe",
        "input": SPOKEN_TEXT,
        "response_format": "pcm",
        "stream_format": "sse",
        "instructions": "Speak cheerfully.",
    }
    headers = {"authorization": f"Bearer {server.api_key}"}
    events = []
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream(
            "POST", f"{server.base_url}/v1/audio/speech", json=body, headers=headers
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["x-voxgate-instructions"] == "ignored"  # Piper has one way of speaking
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    *deltas, done = events
    assert {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert len(deltas) >= 2  # one piece per sentence at least: streamed, not one blob
    assert done["type"] == "speech.audio.done"
    assert done["x_voxgate"]["instructions"] == "ignored"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert done["x_voxgate"]["audio_seconds"] == pytest.approx(len(pcm) / 2 / 24_000, abs=1e-3)


# --- the rest of the surface ------------------------------------------------------------------


async def test_voices_models_and_errors(server, fox) -> None:
    headers = {"authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
        voices = (await http.get("/v1/audio/voices")).json()["data"]
        assert [(v["id"], v["sample_rate"]) for v in voices] == [("joe", 22050)]
        models = (await http.get("/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["voxgate-cascade"]
        empty = await http.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("empty.wav", b"")},
        )
        assert (empty.status_code, empty.json()["error"]["code"]) == (400, "empty_file")
    async with sdk(server) as client:
        with pytest.raises(NotFoundError):
            await client.audio.transcriptions.create(
                file=("fox.wav", encoded(fox, "WAV")), model="whisper-9"
            )
        with pytest.raises(BadRequestError) as bad:
            await client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
        assert "joe" in bad.value.message
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="wrong") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.audio.speech.create(model="tts-1", voice="joe", input="Hello.")
