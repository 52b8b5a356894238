"""Audio files of the REST endpoints: decoding uploads and encoding speech, both with bounds.

Uploads are decoded with PyAV (FFmpeg) straight to 16 kHz mono float32, the backbone's input.
Only the containers OpenAI documents are accepted (wav, mp3, flac, ogg, webm, mp4/m4a), and
raw AAC (what `/v1/audio/speech` itself returns as `aac`); the format is read from the file's
first bytes, not its name, before FFmpeg sees it, and only that one demuxer opens it (FFmpeg's
own probing would try every format it knows). Decoding stops as soon as the audio passes the
duration limit (counted for stereo: more channels cost more, so they may last less), so a
small file that decodes to hours of silence costs little.

Speech is encoded as it is synthesised, chunk by chunk (`SpeechEncoder`), at 24 kHz mono:
`pcm` is raw s16le as OpenAI documents it, `wav` is the same behind a header whose sizes are
0xFFFFFFFF (the length is not known when the header leaves; libsndfile, FFmpeg and Python's
`wave` read to the end), and mp3, opus (in Ogg) and aac (ADTS) are encoded by PyAV into a
forward-only sink, which is what lets them stream.

FLAC is the exception: it is encoded whole, with soundfile, when the speech ends. Its header
holds the total length and MD5, and a FLAC streamed with those unknown (which the format
allows) cannot be read with libsndfile's `sf.read()`, the most common reader there is. The
samples it waits for are bounded by the text limit (`rest.max_text_chars`).

Everything here is CPU work: callers run it in a worker thread.
"""

from __future__ import annotations

import io
import struct
from enum import StrEnum
from typing import BinaryIO

import av
import av.error
import numpy as np
import soundfile as sf

from voxgate.model.types import INPUT_SAMPLE_RATE, AudioChunk
from voxgate.streaming.audio import AudioFormat, StreamResampler, encode

OUTPUT_SAMPLE_RATE = 24_000
"""Every speech response is 24 kHz mono, whatever the voice's own rate (as OpenAI's are)."""

UPLOAD_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "webm", "m4a", "mp4", "aac")
"""What the error messages list as accepted."""


class AudioFileError(Exception):
    """An upload that cannot be transcribed; `code` is the stable REST error code."""

    code = "invalid_file"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyAudio(AudioFileError):
    code = "empty_file"


class UndecodableAudio(AudioFileError):
    code = "invalid_file"


class UnsupportedFormat(AudioFileError):
    code = "unsupported_format"


class AudioTooLong(AudioFileError):
    code = "audio_too_long"


MAX_CHANNELS = 8
"""Most channels an upload may have (7.1 surround); each is decoded and resampled."""
MAX_SAMPLE_RATE = 192_000
"""Highest sample rate an upload may have."""
OTHER_AUDIO = (b"FORM", b"caff", b".snd", b"riff", b"wvpk", b"MAC ", b"#!AMR", b"MThd")
"""How audio formats this server does not take begin (AIFF, CAF, AU, Wave64, WavPack, APE,
AMR, MIDI): refused as unsupported formats rather than as files that are not audio."""
BUDGET_CHANNELS = 2
"""The duration limit is for stereo: a file of more channels may be proportionally shorter,
so decoding costs at most what `max_seconds` of stereo costs."""


def sniff_container(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with `head` (its first bytes), if it is one of
    the accepted formats; None otherwise. Only this demuxer ever sees the file: FFmpeg's own
    probing would try every format it knows, accepted or not."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or WebM
        return "matroska"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync, layer 00
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame, layer I-III
            return "mp3"
    return None


def decode_upload(file: BinaryIO, max_seconds: float) -> np.ndarray:
    """An uploaded file -> 16 kHz mono float32; raises an `AudioFileError` subclass."""
    supported = ", ".join(UPLOAD_FORMATS)
    head = file.read(16)
    file.seek(0)
    demuxer = sniff_container(head)
    if demuxer is None:
        if head.startswith(OTHER_AUDIO):
            raise UnsupportedFormat(
                f"unsupported audio file format; supported formats: {supported}"
            )
        raise UndecodableAudio(f"the file is not audio in a supported format ({supported})")
    try:
        container = av.open(file, mode="r", format=demuxer)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise UndecodableAudio(f"the file could not be read as {demuxer}: {e}") from e
    with container:
        if not container.streams.audio:
            raise UnsupportedFormat("the file has no audio stream")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or 1
        if channels > MAX_CHANNELS:
            raise UnsupportedFormat(
                f"the audio has {channels} channels; this server takes at most {MAX_CHANNELS}"
            )
        if (stream.codec_context.sample_rate or 0) > MAX_SAMPLE_RATE:
            raise UnsupportedFormat(
                f"the audio's sample rate {stream.codec_context.sample_rate} Hz is above "
                f"{MAX_SAMPLE_RATE} Hz"
            )
        return _decode_stream(container, stream, max_seconds)


def _decode_stream(container, stream, max_seconds: float) -> np.ndarray:
    limit = int(max_seconds * INPUT_SAMPLE_RATE)
    budget = limit * BUDGET_CHANNELS  # samples x channels decoded, at 16 kHz
    spent = 0
    # Channels are kept through resampling and averaged here: FFmpeg's own downmix adds
    # them at -3 dB each, which makes a centred stereo voice 3 dB louder than it was.
    resampler = av.AudioResampler(format="fltp", rate=INPUT_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0

    def keep(frames: list[av.AudioFrame]) -> None:
        nonlocal total, spent
        for frame in frames:
            planes = frame.to_ndarray()
            samples = planes[0] if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32)
            pieces.append(samples)
            total += len(samples)
            spent += len(samples) * max(len(planes), BUDGET_CHANNELS)
            if total > limit or spent > budget:
                raise AudioTooLong(
                    f"the audio is longer than this server's limit of {max_seconds:g} s "
                    f"(of stereo; {max_seconds * BUDGET_CHANNELS / len(planes):g} s with "
                    f"{len(planes)} channels)"
                    if total <= limit
                    else f"the audio is longer than this server's limit of {max_seconds:g} s"
                )

    try:
        for frame in container.decode(stream):
            keep(resampler.resample(frame))
        keep(resampler.resample(None))
    except (av.error.FFmpegError, ValueError) as e:
        raise UndecodableAudio(f"the audio could not be decoded: {e}") from e
    if total == 0:
        raise EmptyAudio("the file holds no audio samples")
    audio = np.concatenate(pieces).astype(np.float32, copy=False)
    # A corrupt stream can decode to NaN or to values far outside [-1, 1]; neither is audio.
    np.nan_to_num(audio, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(audio, -1.0, 1.0, out=audio)


# --- speech output --------------------------------------------------------------------------


class SpeechFormat(StrEnum):
    """`response_format` of `/v1/audio/speech`."""

    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    FLAC = "flac"
    WAV = "wav"
    PCM = "pcm"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    SpeechFormat.MP3: "audio/mpeg",
    SpeechFormat.OPUS: "audio/ogg; codecs=opus",
    SpeechFormat.AAC: "audio/aac",
    SpeechFormat.FLAC: "audio/flac",
    SpeechFormat.WAV: "audio/wav",
    SpeechFormat.PCM: "audio/pcm; rate=24000; encoding=s16le; channels=1",
}
# (container, codec, container options) for the formats PyAV encodes.
_PYAV = {
    SpeechFormat.MP3: ("mp3", "libmp3lame", {}),
    # Ogg pages are cut every 100 ms instead of every second, so audio leaves sooner.
    SpeechFormat.OPUS: ("ogg", "libopus", {"page_duration": "100000"}),
    SpeechFormat.AAC: ("adts", "aac", {}),
}


def wav_header(sample_rate: int = OUTPUT_SAMPLE_RATE) -> bytes:
    """A mono s16le WAV header for a stream of unknown length (sizes 0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


class _ForwardSink:
    """A write-only file object with no seek: muxers then write everything in one pass."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class SpeechEncoder:
    """Synthesised chunks in, bytes of one `SpeechFormat` out, as soon as they exist.

    Chunks at any rate are resampled to 24 kHz. `encode` returns what the encoder has produced
    so far (possibly nothing: compressed formats hold back a frame or a page, FLAC everything);
    `finish` returns the rest. One encoder per response; not thread-safe, but it may move
    between threads. An encoder abandoned unfinished (the client went away) needs no closing:
    it holds memory only.
    """

    def __init__(self, fmt: SpeechFormat) -> None:
        self.format = fmt
        self._resampler: StreamResampler | None = None
        self._samples = 0
        self._header = wav_header() if fmt is SpeechFormat.WAV else b""
        self._held: list[np.ndarray] = []  # FLAC only
        self._sink = _ForwardSink()
        self._container = None
        self._stream = None
        if fmt in _PYAV:
            container_name, codec, options = _PYAV[fmt]
            self._container = av.open(self._sink, mode="w", format=container_name, options=options)
            self._stream = self._container.add_stream(codec, rate=OUTPUT_SAMPLE_RATE)
            self._stream.layout = "mono"

    @property
    def seconds(self) -> float:
        """Audio encoded so far."""
        return self._samples / OUTPUT_SAMPLE_RATE

    def encode(self, chunk: AudioChunk) -> bytes:
        out = b""
        if self._resampler is None or self._resampler.in_rate != chunk.sample_rate:
            if self._resampler is not None:  # a backbone switched rates: end the old stream
                out += self._encode(self._resampler.flush())
            self._resampler = StreamResampler(chunk.sample_rate, OUTPUT_SAMPLE_RATE)
        return out + self._encode(self._resampler.process(chunk.samples))

    def finish(self) -> bytes:
        out = self._encode(self._resampler.flush()) if self._resampler is not None else b""
        if self.format is SpeechFormat.FLAC:
            whole = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            self._held = []
            flac = io.BytesIO()
            # libsndfile wraps (not clips) float samples beyond full scale when writing ints.
            np.clip(whole, -1.0, 1.0, out=whole)
            sf.write(flac, whole, OUTPUT_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            return flac.getvalue()
        if self._container is not None:
            assert self._stream is not None
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            return out + self._sink.take()
        return out + self._take_header()

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def _encode(self, samples: np.ndarray) -> bytes:
        self._samples += len(samples)
        if self.format is SpeechFormat.FLAC:
            self._held.append(samples)
            return b""
        if self._container is None:
            return self._take_header() + encode(samples, AudioFormat.PCM)
        assert self._stream is not None
        if len(samples):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples, dtype=np.float32)[np.newaxis, :],
                format="flt",
                layout="mono",
            )
            frame.sample_rate = OUTPUT_SAMPLE_RATE
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()
