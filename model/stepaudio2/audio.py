"""Step-Audio-2's audio front end: 128-bin log-mel at 100 Hz and how many LM tokens it becomes.

Follows the reference exactly: right-pad 479 samples, STFT (n_fft 400, hop 160, centred, Hann),
drop the last frame, Slaney mel, log10, clamp to max-8, (x+4)/4. The valid length is T-2 frames
(the padding adds two), and the encoder + adaptor turn L valid frames into
((L+1)//4 - 1)//2 + 1 tokens: 12.5 per second of audio.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
PAD_SAMPLES = 479
MAX_PIECE_SECONDS = 25.0
"""The reference cuts audio into 25 s pieces, each its own <audio_start>...<audio_end> block."""
MAX_PIECE_SAMPLES = int(MAX_PIECE_SECONDS * SAMPLE_RATE)


@lru_cache(maxsize=2)
def mel_filters(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.T.astype(np.float32))  # (n_mels, n_fft//2 + 1)


def log_mel(audio: np.ndarray, n_mels: int = 128) -> torch.Tensor:
    """16 kHz mono float audio -> (n_mels, T) with T = (len + 479) // 160."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    x = torch.nn.functional.pad(x, (0, PAD_SAMPLES))
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = mel_filters(n_mels) @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def valid_frames(n_samples: int) -> int:
    """Mel frames that carry audio (the two from the right padding do not)."""
    return (n_samples + PAD_SAMPLES) // HOP - 2


def encoder_frames(valid: int) -> int:
    """Frames after conv2 (stride 2) and the average pool (2): 25 Hz."""
    return (valid + 1) // 2 // 2


def num_audio_tokens(n_samples: int) -> int:
    """LM tokens (12.5 Hz) for `n_samples` of 16 kHz audio."""
    return (encoder_frames(valid_frames(n_samples)) - 1) // 2 + 1


def split_pieces(audio: np.ndarray) -> list[np.ndarray]:
    """Cut audio into the reference's 25 s pieces (the last may be shorter)."""
    return [audio[i : i + MAX_PIECE_SAMPLES] for i in range(0, len(audio), MAX_PIECE_SAMPLES)]
