"""A speaker prompt: what token2wav imitates. Saved as `voices/<name>.npz`.

It holds the prompt's speech tokens (25 Hz), its mel (24 kHz audio, 80 bins, 50 Hz) and its
192-d CAM++ speaker embedding. `Voice.from_wav` computes them from a recording with the two ONNX
models published next to the weights (`campplus.onnx`, `speech_tokenizer_v2_25hz.onnx`), with
the reference front ends re-implemented in numpy/torch:
- tokens: Whisper-style 128-bin log-mel of the 16 kHz audio -> the S3 tokenizer v2;
- speaker: Kaldi fbank (80 bins, no dither) minus its mean over time -> CAM++;
- mel: 24 kHz audio, |STFT| (n_fft 1920, hop 480, Hann, reflect-padded, not centred) -> librosa
  (Slaney) mel 0-8 kHz -> ln(max(x, 1e-5)).
Resampling uses soxr, where the reference used torchaudio/librosa (slightly different filters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

MEL_BINS = 80
SPEAKER_DIM = 192
FRAMES_PER_TOKEN = 2
MAX_PROMPT_SECONDS = 30.0  # the S3 tokenizer reads one 30 s window


@dataclass(frozen=True, eq=False)
class Voice:
    """`eq=False`: voices compare and hash by identity, so a Token2Wav can cache per voice."""

    name: str
    prompt_tokens: np.ndarray
    """int64 (P,), speech tokens of the prompt."""
    prompt_mel: np.ndarray
    """float32 (2P, 80), the prompt's mel, two frames per token."""
    speaker_embedding: np.ndarray
    """float32 (192,)."""

    def __post_init__(self) -> None:
        n = len(self.prompt_tokens)
        if n == 0 or self.prompt_tokens.ndim != 1:
            raise ValueError("a voice needs a 1-D, non-empty prompt token sequence")
        if self.prompt_mel.shape != (FRAMES_PER_TOKEN * n, MEL_BINS):
            raise ValueError(f"prompt mel must be ({FRAMES_PER_TOKEN * n}, {MEL_BINS})")
        if self.speaker_embedding.shape != (SPEAKER_DIM,):
            raise ValueError(f"speaker embedding must be ({SPEAKER_DIM},)")

    @classmethod
    def load(cls, path: Path) -> Voice:
        with np.load(path) as data:
            return cls(
                name=path.stem,
                prompt_tokens=data["prompt_tokens"].astype(np.int64),
                prompt_mel=data["prompt_mel"].astype(np.float32),
                speaker_embedding=data["speaker_embedding"].astype(np.float32),
            )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez(
                f,
                prompt_tokens=self.prompt_tokens,
                prompt_mel=self.prompt_mel,
                speaker_embedding=self.speaker_embedding,
            )

    @classmethod
    def from_wav(
        cls,
        name: str,
        audio: np.ndarray,
        sample_rate: int,
        onnx_dir: Path,
        fit: str = "truncate",
    ) -> Voice:
        """A voice from a mono recording (float, -1..1). `onnx_dir` holds `campplus.onnx` and
        `speech_tokenizer_v2_25hz.onnx` (the checkpoint's `token2wav/` folder).

        The speech tokens and the mel of one recording can differ by a frame or two. `fit`
        "truncate" keeps what both cover (no invented frame); "reference" keeps every token
        and pads the mel by repeating its last frame (or cuts it) to two frames per token, as
        the published token2wav does."""
        if fit not in ("truncate", "reference"):
            raise ValueError(f"fit is 'truncate' or 'reference', not {fit!r}")
        import onnxruntime

        audio = np.asarray(audio, dtype=np.float32)
        if len(audio) > MAX_PROMPT_SECONDS * sample_rate:
            raise ValueError(f"a voice prompt must be at most {MAX_PROMPT_SECONDS:.0f} s")
        audio16 = soxr.resample(audio, sample_rate, 16000) if sample_rate != 16000 else audio
        audio24 = soxr.resample(audio, sample_rate, 24000) if sample_rate != 24000 else audio
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1

        def session(file: str) -> onnxruntime.InferenceSession:
            return onnxruntime.InferenceSession(
                str(onnx_dir / file), sess_options=options, providers=["CPUExecutionProvider"]
            )

        tokenizer = session("speech_tokenizer_v2_25hz.onnx")
        feats = whisper_log_mel(audio16)[None]
        inputs = tokenizer.get_inputs()
        tokens = tokenizer.run(
            None,
            {inputs[0].name: feats, inputs[1].name: np.array([feats.shape[2]], dtype=np.int32)},
        )[0].reshape(-1)
        campplus = session("campplus.onnx")
        fbank = kaldi_fbank(audio16)
        fbank -= fbank.mean(axis=0, keepdims=True)
        embedding = campplus.run(None, {campplus.get_inputs()[0].name: fbank[None]})[0].reshape(-1)
        mel = fit_prompt_mel(prompt_mel(audio24), len(tokens), fit)
        n = len(mel) // FRAMES_PER_TOKEN
        return cls(
            name=name,
            prompt_tokens=tokens[:n].astype(np.int64),
            prompt_mel=mel,
            speaker_embedding=embedding.astype(np.float32),
        )


def fit_prompt_mel(mel: np.ndarray, tokens: int, fit: str) -> np.ndarray:
    """The prompt mel, `FRAMES_PER_TOKEN` frames per kept token (see `Voice.from_wav`)."""
    if fit == "truncate":
        n = min(tokens, len(mel) // FRAMES_PER_TOKEN)
        return mel[: FRAMES_PER_TOKEN * n]
    frames = FRAMES_PER_TOKEN * tokens
    if len(mel) >= frames:
        return mel[:frames]
    return np.concatenate([mel, np.repeat(mel[-1:], frames - len(mel), axis=0)])


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, log_part)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(
        mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * math.log(6.4) / 27.0)
    )


def mel_filters(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """librosa.filters.mel with its defaults (Slaney scale, area normalisation):
    (n_mels, 1 + n_fft // 2)."""
    fmax = sr / 2 if fmax is None else fmax
    fft_hz = np.linspace(0, sr / 2, 1 + n_fft // 2)
    edges = _slaney_hz(
        np.linspace(_slaney_mel(np.array(fmin)), _slaney_mel(np.array(fmax)), n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def prompt_mel(audio24: np.ndarray) -> np.ndarray:
    """The flow's mel of 24 kHz audio: (frames, 80), 50 frames per second."""
    n_fft, hop = 1920, 480
    x = torch.from_numpy(np.asarray(audio24, dtype=np.float32))[None, None]
    pad = (n_fft - hop) // 2
    x = torch.nn.functional.pad(x, (pad, pad), mode="reflect")[0]
    spec = torch.stft(
        x, n_fft, hop, n_fft, torch.hann_window(n_fft), center=False, return_complex=True
    )
    magnitude = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)[0]
    mel = torch.from_numpy(mel_filters(24000, n_fft, MEL_BINS, 0.0, 8000.0)) @ magnitude
    return torch.log(torch.clamp(mel, min=1e-5)).T.numpy()


def whisper_log_mel(audio16: np.ndarray) -> np.ndarray:
    """s3tokenizer.log_mel_spectrogram: (128, frames) at 100 Hz, Whisper-normalised."""
    x = torch.from_numpy(np.asarray(audio16, dtype=np.float32))
    spec = torch.stft(x, 400, 160, window=torch.hann_window(400), return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters(16000, 400, 128)) @ power
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).numpy()


def kaldi_fbank(audio16: np.ndarray) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0) at 16 kHz: (frames, 80)."""
    frame, shift, n_fft = 400, 160, 512
    x = np.asarray(audio16, dtype=np.float64)
    count = 1 + (len(x) - frame) // shift
    if count < 1:
        raise ValueError("audio too short for a speaker embedding")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::shift][:count].copy()
    frames -= frames.mean(axis=1, keepdims=True)  # remove DC offset
    frames[:, 1:] -= 0.97 * frames[:, :-1].copy()  # pre-emphasis; sample 0 uses itself
    frames[:, 0] -= 0.97 * frames[:, 0]
    frames *= np.hanning(frame) ** 0.85  # Povey window (a symmetric Hann to the 0.85)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    # Kaldi's mel banks: triangles on 1127 ln(1 + f/700) from 20 Hz to Nyquist, no Nyquist bin
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(8000.0)
    delta = (high - low) / (80 + 1)
    left = low + np.arange(80)[:, None] * delta
    bin_mel = mel(np.arange(n_fft // 2) * 16000 / n_fft)[None, :]
    up = (bin_mel - left) / delta
    down = (left + 2 * delta - bin_mel) / delta
    banks = np.maximum(0.0, np.minimum(up, down))
    energies = power[:, : n_fft // 2] @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)
