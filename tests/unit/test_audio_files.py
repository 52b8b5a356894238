"""Decoding uploads and encoding speech (`voxgate.server.audio_files`), on synthetic signals.

Uploads are made here in every container the endpoint documents, with PyAV and soundfile; each
must decode to 16 kHz mono at the right length and pitch. Speech output in every format must
decode back to the same length and pitch, and (but for FLAC, which is encoded whole) come out
while it is being fed.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from voxgate.model.types import INPUT_SAMPLE_RATE, AudioChunk
from voxgate.server.audio_files import (
    OUTPUT_SAMPLE_RATE,
    AudioTooLong,
    EmptyAudio,
    SpeechEncoder,
    SpeechFormat,
    UndecodableAudio,
    UnsupportedFormat,
    decode_upload,
)

TONE_HZ = 440.0


def tone(seconds: float, rate: int, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pitch(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of `samples`, in Hz."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def pyav_file(samples: np.ndarray, rate: int, container: str, codec: str, channels: int = 1):
    out = io.BytesIO()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(out, mode="w", format=container) as c:
        stream = c.add_stream(codec, rate=rate)
        stream.layout = layout
        planar = np.repeat(samples[np.newaxis, :], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planar.astype(np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return out.getvalue()


def soundfile_file(samples: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    out = io.BytesIO()
    data = np.repeat(samples[:, np.newaxis], channels, axis=1) if channels > 1 else samples
    sf.write(out, data, rate, format=fmt)
    return out.getvalue()


UPLOADS = {
    "wav 44.1 kHz stereo": lambda x, r: soundfile_file(x, r, "WAV", channels=2),
    "flac": lambda x, r: soundfile_file(x, r, "FLAC"),
    "mp3": lambda x, r: pyav_file(x, r, "mp3", "libmp3lame"),
    "ogg opus": lambda x, r: pyav_file(x, 48_000 if r > 24_000 else r, "ogg", "libopus"),
    "webm opus": lambda x, r: pyav_file(x, 48_000 if r > 24_000 else r, "webm", "libopus"),
    "m4a aac": lambda x, r: pyav_file(x, r, "ipod", "aac", channels=2),
}


@pytest.mark.parametrize("kind", UPLOADS)
def test_each_upload_format_decodes_to_16k_mono(kind: str) -> None:
    rate = 44_100 if kind != "ogg opus" and kind != "webm opus" else 48_000
    data = UPLOADS[kind](tone(2.0, rate), rate)
    audio = decode_upload(io.BytesIO(data), max_seconds=60)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossy codecs add a little encoder delay and padding; never a whole frame's worth more.
    assert abs(len(audio) / INPUT_SAMPLE_RATE - 2.0) < 0.1
    assert abs(pitch(audio, INPUT_SAMPLE_RATE) - TONE_HZ) < 5
    # 0.3 full-scale sine: RMS 0.21; stereo channels are averaged, not summed at -3 dB.
    assert abs(np.sqrt(np.mean(audio**2)) - 0.3 / np.sqrt(2)) < 0.02


def test_the_format_is_read_from_the_bytes_not_the_name() -> None:
    flac = soundfile_file(tone(1.0, 16_000), 16_000, "FLAC")
    file = io.BytesIO(flac)
    file.name = "recording.mp3"
    assert len(decode_upload(file, max_seconds=60)) == 16_000


@pytest.mark.parametrize("fmt", ["AIFF", "AU", "W64"])
def test_audio_in_other_containers_is_unsupported(fmt: str) -> None:
    data = soundfile_file(tone(0.5, 16_000), 16_000, fmt)
    with pytest.raises(UnsupportedFormat, match="supported formats"):
        decode_upload(io.BytesIO(data), max_seconds=60)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is not audio at all " * 20,
        bytes(4096),
        np.random.default_rng(0).bytes(8192),
    ],
    ids=["nothing", "text", "zeros", "noise"],
)
def test_bytes_that_are_no_audio_are_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableAudio) as raised:
        decode_upload(io.BytesIO(data), max_seconds=60)
    assert raised.value.code == "invalid_file"


def test_a_file_without_samples_is_empty() -> None:
    data = soundfile_file(np.zeros(0, np.float32), 16_000, "WAV")
    with pytest.raises(EmptyAudio) as raised:
        decode_upload(io.BytesIO(data), max_seconds=60)
    assert raised.value.code == "empty_file"


def test_audio_over_the_limit_is_refused() -> None:
    data = soundfile_file(tone(3.0, 16_000), 16_000, "WAV")
    assert len(decode_upload(io.BytesIO(data), max_seconds=3.5)) == 48_000
    with pytest.raises(AudioTooLong, match="2 s"):
        decode_upload(io.BytesIO(data), max_seconds=2)


def test_a_tiny_file_of_hours_of_silence_stops_at_the_limit() -> None:
    # 20 minutes of silence is a few kB of FLAC; decoding must stop at the limit, not at the end.
    data = soundfile_file(np.zeros(20 * 60 * 8000, np.float32), 8000, "FLAC")
    assert len(data) < 500_000
    with pytest.raises(AudioTooLong):
        decode_upload(io.BytesIO(data), max_seconds=10)


def test_decoded_audio_is_clipped_to_full_scale() -> None:
    loud = np.full(1600, 0.9, np.float32)
    data = soundfile_file(loud, 16_000, "WAV")
    audio = decode_upload(io.BytesIO(data), max_seconds=60)
    assert np.all(np.abs(audio) <= 1.0)


# --- speech output --------------------------------------------------------------------------

VOICE_RATE = 22_050


def speak_into(encoder: SpeechEncoder, pieces: int = 5, seconds: float = 0.2) -> list[bytes]:
    outputs = [encoder.encode(AudioChunk(tone(seconds, VOICE_RATE), VOICE_RATE))]
    outputs += [
        encoder.encode(AudioChunk(tone(seconds, VOICE_RATE), VOICE_RATE)) for _ in range(pieces - 1)
    ]
    return [*outputs, encoder.finish()]


def decode_speech(data: bytes, fmt: SpeechFormat) -> tuple[np.ndarray, int]:
    """Speech bytes -> samples and rate, with the plainest decoder of each format."""
    if fmt is SpeechFormat.PCM:
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, OUTPUT_SAMPLE_RATE
    if fmt in (SpeechFormat.WAV, SpeechFormat.FLAC):
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
        return samples, rate
    with av.open(io.BytesIO(data)) as c:
        rate = c.streams.audio[0].rate
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return samples, rate


@pytest.mark.parametrize("fmt", list(SpeechFormat))
def test_each_speech_format_decodes_to_what_was_spoken(fmt: SpeechFormat) -> None:
    encoder = SpeechEncoder(fmt)
    data = b"".join(speak_into(encoder))
    samples, rate = decode_speech(data, fmt)
    # Opus always decodes at 48 kHz; everything else is the 24 kHz it was encoded at.
    assert rate == (48_000 if fmt is SpeechFormat.OPUS else OUTPUT_SAMPLE_RATE)
    assert abs(len(samples) / rate - 1.0) < 0.1
    assert abs(pitch(samples, rate) - TONE_HZ) < 5
    assert encoder.seconds == pytest.approx(1.0, abs=0.01)


def test_pcm_is_raw_24k_s16le_and_wav_is_pcm_behind_a_streaming_header() -> None:
    pcm = b"".join(speak_into(SpeechEncoder(SpeechFormat.PCM)))
    wav = b"".join(speak_into(SpeechEncoder(SpeechFormat.WAV)))
    assert len(pcm) == 2 * OUTPUT_SAMPLE_RATE  # 1 s of 2-byte samples, nothing else
    assert wav[44:] == pcm
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype) == (OUTPUT_SAMPLE_RATE, 1, "PCM_16")


STREAMED = [f for f in SpeechFormat if f is not SpeechFormat.FLAC]


@pytest.mark.parametrize("fmt", STREAMED)
def test_speech_comes_out_while_it_is_fed(fmt: SpeechFormat) -> None:
    outputs = speak_into(SpeechEncoder(fmt), pieces=10, seconds=0.2)
    # Bytes leave during the stream, not only at `finish`: at most a frame or a page is held.
    assert sum(len(o) for o in outputs[:5]) > 0
    assert sum(len(o) for o in outputs[:-1]) > 0.5 * sum(len(o) for o in outputs)


def test_flac_comes_whole_at_the_end_with_its_length_in_the_header() -> None:
    outputs = speak_into(SpeechEncoder(SpeechFormat.FLAC))
    assert all(o == b"" for o in outputs[:-1])
    info = sf.info(io.BytesIO(outputs[-1]))
    assert info.frames == OUTPUT_SAMPLE_RATE  # known, so `sf.read` can size its array


def test_loud_speech_is_clipped_not_wrapped() -> None:
    for fmt in (SpeechFormat.FLAC, SpeechFormat.PCM):
        encoder = SpeechEncoder(fmt)
        loud = np.full(2400, 1.5, np.float32)
        data = encoder.encode(AudioChunk(loud, OUTPUT_SAMPLE_RATE)) + encoder.finish()
        samples, _ = decode_speech(data, fmt)
        assert samples.min() > 0.9, fmt


def test_speech_with_no_audio_is_a_valid_empty_file() -> None:
    wav = SpeechEncoder(SpeechFormat.WAV).finish()
    assert len(wav) == 44 and len(sf.read(io.BytesIO(wav))[0]) == 0
    assert SpeechEncoder(SpeechFormat.PCM).finish() == b""


def test_a_change_of_rate_mid_stream_keeps_the_audio() -> None:
    encoder = SpeechEncoder(SpeechFormat.PCM)
    data = encoder.encode(AudioChunk(tone(0.5, 22_050), 22_050))
    data += encoder.encode(AudioChunk(tone(0.5, 16_000), 16_000))
    data += encoder.finish()
    assert abs(len(data) / 2 / OUTPUT_SAMPLE_RATE - 1.0) < 0.01


def test_many_channels_are_refused_before_decoding() -> None:
    data = soundfile_file(tone(0.2, 16_000), 16_000, "WAV", channels=16)
    with pytest.raises(UnsupportedFormat, match="16 channels"):
        decode_upload(io.BytesIO(data), max_seconds=60)


def test_more_channels_may_last_less() -> None:
    """The duration limit is for stereo: decoding cost grows with channels, so 4 channels may
    last half as long (and stereo the whole limit)."""
    stereo = soundfile_file(tone(1.8, 16_000), 16_000, "WAV", channels=2)
    assert len(decode_upload(io.BytesIO(stereo), max_seconds=2)) == round(1.8 * 16_000)
    quad = soundfile_file(tone(1.5, 16_000), 16_000, "WAV", channels=4)
    with pytest.raises(AudioTooLong, match="4 channels"):
        decode_upload(io.BytesIO(quad), max_seconds=2)


def test_a_very_high_sample_rate_is_refused() -> None:
    data = soundfile_file(tone(0.1, 384_000), 384_000, "WAV")
    with pytest.raises(UnsupportedFormat, match="sample rate"):
        decode_upload(io.BytesIO(data), max_seconds=60)


@pytest.mark.parametrize(
    "head",
    [b"MThd\x00\x00\x00\x06", b"#!AMR\n", b"caff\x00\x01"],
    ids=["midi", "amr", "caf"],
)
def test_formats_ffmpeg_knows_but_this_server_does_not_take(head: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_upload(io.BytesIO(head + bytes(2048)), max_seconds=60)


def test_only_the_sniffed_demuxer_opens_the_file(monkeypatch) -> None:
    """FFmpeg is told which demuxer to use: it never probes the upload against every format."""
    opened: list[str | None] = []
    real_open = av.open

    def spy(file, *args, **kwargs):
        opened.append(kwargs.get("format"))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    flac = soundfile_file(tone(0.2, 16_000), 16_000, "FLAC")
    decode_upload(io.BytesIO(flac), max_seconds=60)
    with pytest.raises(UndecodableAudio):
        decode_upload(io.BytesIO(b"not audio" * 100), max_seconds=60)
    assert opened == ["flac"]
