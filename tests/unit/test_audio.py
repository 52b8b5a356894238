"""Wire audio formats, G.711, streaming resampling and the per-connection codecs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voxgate.model.types import INPUT_SAMPLE_RATE, AudioChunk
from voxgate.streaming.audio import (
    AudioFormat,
    AudioFormatError,
    InputDecoder,
    OutputEncoder,
    StreamResampler,
    alaw_decode,
    alaw_encode,
    decode,
    encode,
    iter_slices,
    ms_to_samples,
    mulaw_decode,
    mulaw_encode,
    samples_to_ms,
)

ALL_INT16 = np.arange(65536, dtype=np.uint16).view(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)
RATE_PAIRS = [(24_000, 16_000), (8_000, 16_000), (22_050, 24_000)]


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def feed_in_random_chunks(
    resampler: StreamResampler, signal: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    out, start = [], 0
    while start < len(signal):
        size = int(rng.integers(0, 900))  # empty chunks included on purpose
        out.append(resampler.process(signal[start : start + size]))
        start += size
    out.append(resampler.flush())
    return np.concatenate(out)


# --- formats and helpers --------------------------------------------------------------


def test_format_properties() -> None:
    assert AudioFormat("audio/pcm") is AudioFormat.PCM
    assert [(f.sample_rate, f.bytes_per_sample) for f in AudioFormat] == [
        (24_000, 2),
        (8_000, 1),
        (8_000, 1),
    ]


def test_ms_samples_helpers() -> None:
    assert ms_to_samples(20, 24_000) == 480
    assert ms_to_samples(20, 22_050) == 441
    assert ms_to_samples(1, 22_050) == 22  # rounded down
    assert samples_to_ms(480, 24_000) == 20
    assert samples_to_ms(16_001, 16_000) == 1000


# --- pcm16 ----------------------------------------------------------------------------


def test_pcm_bytes_round_trip_exactly() -> None:
    data = ALL_INT16.astype("<i2").tobytes()
    assert encode(decode(data, AudioFormat.PCM), AudioFormat.PCM) == data


def test_pcm_decode_is_little_endian_and_scaled() -> None:
    samples = decode(b"\x00\x40\x00\x80\xff\x7f", AudioFormat.PCM)
    assert samples.dtype == np.float32
    assert samples.tolist() == [0.5, -1.0, 32767 / 32768]


def test_pcm_float_round_trip_within_one_step() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 10_000).astype(np.float32)
    x[:2] = [1.0, -1.0]
    y = decode(encode(x, AudioFormat.PCM), AudioFormat.PCM)
    assert np.max(np.abs(y - x)) <= 1 / 32768


def test_encode_clips_out_of_range_and_nan() -> None:
    data = encode(np.array([2.0, -3.0, np.nan], dtype=np.float32), AudioFormat.PCM)
    assert np.frombuffer(data, "<i2").tolist() == [32767, -32768, 0]


def test_pcm_odd_length_is_an_error() -> None:
    with pytest.raises(AudioFormatError, match=r"even number of bytes .* got 4801"):
        decode(bytes(4801), AudioFormat.PCM)


# --- G.711 ----------------------------------------------------------------------------


def test_mulaw_reference_values() -> None:
    pcm = np.array([0, 32767, -32768, -1, 100], dtype=np.int16)
    assert mulaw_encode(pcm).tolist() == [0xFF, 0x80, 0x00, 0x7E, 0xF2]
    codes = np.array([0xFF, 0x7F, 0x80, 0x00, 0xF2], dtype=np.uint8)
    assert mulaw_decode(codes).tolist() == [0, 0, 32124, -32124, 104]


def test_alaw_reference_values() -> None:
    pcm = np.array([0, -1, 32767, -32768], dtype=np.int16)
    assert alaw_encode(pcm).tolist() == [0xD5, 0x55, 0xAA, 0x2A]
    codes = np.array([0xD5, 0x55, 0xAA, 0x2A], dtype=np.uint8)
    assert alaw_decode(codes).tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize(("enc", "dec"), [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_codes_are_stable(enc, dec) -> None:
    levels = dec(ALL_CODES)
    assert np.array_equal(dec(enc(levels)), levels)
    # Encoding is monotonic in the decoded level: louder input never decodes quieter.
    ascending = np.arange(-32768, 32768).astype(np.int16)
    assert np.all(np.diff(dec(enc(ascending)).astype(np.int32)) >= 0)


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
def test_g711_bytes_round_trip(fmt: AudioFormat) -> None:
    data = bytes(range(256))
    once = decode(data, fmt)
    assert np.array_equal(decode(encode(once, fmt), fmt), once)


def test_g711_matches_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    pcm_bytes = ALL_INT16.astype("<i2").tobytes()
    codes = ALL_CODES.tobytes()
    assert mulaw_encode(ALL_INT16).tobytes() == audioop.lin2ulaw(pcm_bytes, 2)
    assert alaw_encode(ALL_INT16).tobytes() == audioop.lin2alaw(pcm_bytes, 2)
    assert mulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(codes, 2)


# --- resampling -----------------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_streaming_equals_batch(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate)
    signal = (0.3 * rng.standard_normal(in_rate + 1234)).astype(np.float32)

    whole = StreamResampler(in_rate, out_rate)
    batch = np.concatenate([whole.process(signal), whole.flush()])
    streamed = feed_in_random_chunks(StreamResampler(in_rate, out_rate), signal, rng)

    assert abs(len(batch) - round(len(signal) * out_rate / in_rate)) <= 2
    assert len(streamed) == len(batch)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=1e-6)


def test_resampler_is_reusable_after_flush() -> None:
    resampler = StreamResampler(24_000, 16_000)
    signal = sine(300, 24_000, 0.5)
    first = np.concatenate([resampler.process(signal), resampler.flush()])
    second = np.concatenate([resampler.process(signal), resampler.flush()])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_sine_keeps_its_frequency(in_rate: int, out_rate: int) -> None:
    resampler = StreamResampler(in_rate, out_rate)
    out = np.concatenate([resampler.process(sine(1000, in_rate, 1.0)), resampler.flush()])
    assert abs(peak_hz(out, out_rate) - 1000) <= 1.0
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert np.max(np.abs(middle)) == pytest.approx(0.5, abs=0.01)


def test_tone_above_the_new_nyquist_is_filtered_out() -> None:
    # 9 kHz cannot exist at 16 kHz; a poor filter would fold it back to 7 kHz.
    resampler = StreamResampler(24_000, 16_000)
    out = np.concatenate([resampler.process(sine(9000, 24_000, 1.0)), resampler.flush()])
    assert np.max(np.abs(out[2000:-2000])) < 1e-4  # below -74 dBFS


def test_same_rate_passes_through_without_copy() -> None:
    resampler = StreamResampler(16_000, 16_000)
    x = sine(440, 16_000, 0.1)
    assert resampler.process(x) is x
    assert len(resampler.flush()) == 0


# --- per-connection codecs ------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_input_decoder_gives_16khz(fmt: AudioFormat) -> None:
    wire = encode(sine(440, fmt.sample_rate, 1.0), fmt)
    decoder = InputDecoder(fmt)
    assert decoder.format is fmt
    step = ms_to_samples(20, fmt.sample_rate) * fmt.bytes_per_sample
    pieces = [decoder.feed(wire[i : i + step]) for i in range(0, len(wire), step)]
    out = np.concatenate([*pieces, decoder.flush()])
    assert out.dtype == np.float32
    assert abs(len(out) - INPUT_SAMPLE_RATE) <= 2
    assert abs(peak_hz(out, INPUT_SAMPLE_RATE) - 440) <= 1.0


def test_input_decoder_rejects_partial_sample() -> None:
    with pytest.raises(AudioFormatError):
        InputDecoder(AudioFormat.PCM).feed(b"\x00\x01\x02")


def test_output_encoder_resamples_to_24khz_pcm() -> None:
    encoder = OutputEncoder(AudioFormat.PCM)
    signal = sine(500, 22_050, 1.0)
    chunks = [AudioChunk(signal[i : i + 1000], 22_050) for i in range(0, len(signal), 1000)]
    data = b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.flush()
    assert abs(len(data) // 2 - 24_000) <= 2
    assert len(data) % 2 == 0
    assert abs(peak_hz(decode(data, AudioFormat.PCM), 24_000) - 500) <= 1.0


def test_output_encoder_keeps_the_tail_when_the_rate_changes() -> None:
    encoder = OutputEncoder(AudioFormat.PCMU)
    data = encoder.encode(AudioChunk(sine(300, 22_050, 0.5), 22_050))
    data += encoder.encode(AudioChunk(sine(300, 16_000, 0.5), 16_000))
    data += encoder.flush()
    assert abs(len(data) - 8_000) <= 4  # two half seconds at 8 kHz, one byte per sample


def test_output_encoder_without_audio_flushes_nothing() -> None:
    assert OutputEncoder(AudioFormat.PCMA).flush() == b""


def test_iter_slices_sizes() -> None:
    data = bytes(range(256)) * 200  # 51200 bytes: 25600 pcm samples, 1066.67 ms at 24 kHz
    slices = list(iter_slices(data, AudioFormat.PCM, 100))
    assert [len(s) for s in slices] == [4800] * 10 + [3200]
    assert b"".join(slices) == data

    g711 = list(iter_slices(bytes(1000), AudioFormat.PCMU, 20))
    assert [len(s) for s in g711] == [160] * 6 + [40]

    assert list(iter_slices(b"", AudioFormat.PCM, 20)) == []
    with pytest.raises(AudioFormatError):
        list(iter_slices(b"\x00", AudioFormat.PCM, 20))
    with pytest.raises(ValueError):
        list(iter_slices(data, AudioFormat.PCM, 0))
