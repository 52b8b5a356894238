"""Streaming token2wav: tokens arrive in bursts, audio leaves as soon as it is final.

Flow: tokens are cut exactly as the reference streams them, 25 at a time once 25 + 3 are
there (the 3 are the pre-lookahead conv's future; they are sent again as the head of the next
chunk), and the rest with zero lookahead at `finish()`. Each chunk runs the conformer and the
10-step ODE against the caches of the chunks before it (`FlowState`), so burst sizes never
change the output.

HiFT: the reference vocodes each chunk's mel with 8 frames of mel history and hides the
seam with a Hamming cross-fade over 160 ms. We instead keep the sine phase running across
chunks and recompute a window with `context_frames()` of context on each side, so what
leaves is sample for sample what the whole-utterance HiFT produces; nothing needs hiding.
The price is holding back F0's reach (5 frames) + that context (16 frames with the published
kernels): 420 ms instead of the reference's 160 ms, which costs nothing in time to first
audio (that is the first chunk's compute) and only shortens the first chunk's audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .flow import CausalMaskedDiffWithXvec, FlowState
from .hift import HiFTGenerator

CHUNK_TOKENS = 25
"""Tokens per flow chunk (1 s of speech), as the reference streams them."""
DIT_WINDOW_FRAMES = 100
"""Generated mel frames (2 s) the DiT keeps in its cache besides the speaker prompt. The
reference means to keep the prompt and the latest 100 frames; because its cache is ordered
newest-first, its cut actually keeps the newest `prompt` frames and the prompt's last 100."""


class StreamClosed(RuntimeError):
    """`push` or `finish` on a stream that has finished."""


class HiftStream:
    """Exact streaming HiFT: feed mel frames, get the samples no later frame can change."""

    def __init__(self, hift: HiFTGenerator) -> None:
        self.hift = hift
        self.context = hift.cfg.context_frames()
        self.f0_reach = hift.cfg.f0_layers  # each k=3 conv of the F0 net reaches one frame
        self.hop = hift.cfg.hop
        device = hift.conv_pre.weight.device
        harmonics = hift.cfg.nb_harmonics + 1
        self.mel = torch.zeros(1, hift.cfg.in_channels, 0, device=device)
        self.mel_start = 0
        """Utterance frame index of `mel[..., 0]` (older frames are dropped)."""
        self.f0 = torch.zeros(1, 0, device=device)
        self.cycles = torch.zeros(1, 0, harmonics, dtype=torch.float64, device=device)
        """Running phase (cycles) of each harmonic at each frame since `f0_start`."""
        self.total_cycles = torch.zeros(1, 1, harmonics, dtype=torch.float64, device=device)
        """Running phase at frame `f0_done - 1`, where the next frames continue from."""
        self.f0_start = 0
        self.f0_done = 0
        """Frames whose F0 and running phase are final."""
        self.emitted = 0
        """Frames whose samples have been returned."""

    @classmethod
    def resume(
        cls,
        hift: HiFTGenerator,
        mel: torch.Tensor,
        f0: torch.Tensor,
        cycles: torch.Tensor,
        f0_done: int,
        emitted: int,
    ) -> HiftStream:
        """A stream that has returned the samples of `emitted` frames (as after a `push`):
        `mel` (1, mel, n) holds the frames from `emitted - context()` on, `f0` (1, m) and
        `cycles` (1, m, harmonics) those frames' F0 and running phase up to `f0_done`."""
        stream = cls(hift)
        start = emitted - stream.context
        if start < 0 or f0.shape[1] != f0_done - start or cycles.shape[1] != f0.shape[1]:
            raise ValueError("a resumed HiFT stream needs its context's mel, F0 and phase")
        stream.mel, stream.mel_start = mel, start
        stream.f0, stream.cycles, stream.f0_start = f0, cycles, start
        stream.total_cycles = cycles[:, -1:]
        stream.f0_done, stream.emitted = f0_done, emitted
        return stream

    def push(self, mel: torch.Tensor, final: bool) -> torch.Tensor:
        """mel: (1, mel, n) new frames. Returns the newly final samples (1-D)."""
        self.mel = torch.cat([self.mel, mel], dim=2)
        available = self.mel_start + self.mel.shape[2]
        self._advance_f0(available if final else available - self.f0_reach)
        end = self.f0_done if final else self.f0_done - self.context
        if end <= self.emitted:
            return mel.new_zeros(0)
        # Window [lo, f0_done): at least `context` frames around the samples we return.
        lo = max(0, self.emitted - self.context)
        f0 = self.f0[:, lo - self.f0_start :]
        source = self.hift.source(f0, self.cycles[:, lo - self.f0_start :], lo * self.hop)
        window_mel = self.mel[:, :, lo - self.mel_start : self.f0_done - self.mel_start]
        audio = self.hift.decode(window_mel, source)[0]
        out = audio[(self.emitted - lo) * self.hop : (end - lo) * self.hop]
        self.emitted = end
        self._forget()
        return out

    def _advance_f0(self, end: int) -> None:
        if end <= self.f0_done:
            return
        lo = max(0, self.f0_done - self.f0_reach)
        f0 = self.hift.f0(self.mel[:, :, lo - self.mel_start :])
        f0 = f0[:, self.f0_done - lo : end - lo]
        # cumsum over [total so far, increments] adds in the same order as the whole pass's
        increments = self.hift.phase_increments(f0)
        cycles = torch.cumsum(torch.cat([self.total_cycles, increments], dim=1), dim=1)[:, 1:]
        self.total_cycles = cycles[:, -1:]
        self.f0 = torch.cat([self.f0, f0], dim=1)
        self.cycles = torch.cat([self.cycles, cycles], dim=1)
        self.f0_done = end

    def _forget(self) -> None:
        keep = max(0, self.emitted - self.context)
        self.f0 = self.f0[:, keep - self.f0_start :]
        self.cycles = self.cycles[:, keep - self.f0_start :]
        self.f0_start = keep
        keep_mel = max(0, min(keep, self.f0_done - self.f0_reach))
        self.mel = self.mel[:, :, keep_mel - self.mel_start :]
        self.mel_start = keep_mel


class Token2WavStream:
    """One utterance, one voice. Not thread-safe: feed it from one thread at a time."""

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        prompt_state: Callable[[], FlowState],
        chunk_tokens: int = CHUNK_TOKENS,
        dit_window: int | None = DIT_WINDOW_FRAMES,
    ) -> None:
        self._flow = flow
        # Encoding a new voice's prompt is heavy: done at the first chunk, which runs where
        # the caller runs the vocoder, not where it creates the stream.
        self._prompt_state = prompt_state
        self._state: FlowState | None = None
        self._hift = HiftStream(hift)
        self._chunk = chunk_tokens
        self._lookahead = flow.lookahead
        self._window = dit_window
        self._pending: list[int] = []
        self._finished = False
        self.tokens = 0
        """Tokens pushed so far."""

    def push(self, tokens: Sequence[int]) -> np.ndarray:
        """Add tokens; returns the audio (float32, 24 kHz) that is now final, maybe empty."""
        if self._finished:
            raise StreamClosed("push after finish")
        self._pending += check_tokens(tokens, self._flow.cfg.vocab_size)
        self.tokens += len(tokens)
        pieces = []
        while len(self._pending) >= self._chunk + self._lookahead:
            pieces.append(self._run(self._pending[: self._chunk + self._lookahead], last=False))
            del self._pending[: self._chunk]
        return _concat(pieces)

    def finish(self) -> np.ndarray:
        """The rest of the utterance's audio. The stream is closed afterwards."""
        if self._finished:
            raise StreamClosed("finish twice")
        self._finished = True
        if not self.tokens:
            return np.zeros(0, dtype=np.float32)
        return _concat([self._run(self._pending, last=True)])

    @torch.inference_mode()
    def _run(self, tokens: list[int], last: bool) -> np.ndarray:
        device = self._flow.input_embedding.weight.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        if self._state is None:
            self._state = self._prompt_state()
        mel, self._state = self._flow.chunk(self._state, ids, last, self._window)
        audio = self._hift.push(mel.T[None].float(), final=last)
        return audio.cpu().numpy().astype(np.float32, copy=False)


def check_tokens(tokens: Sequence[int], vocab_size: int) -> list[int]:
    ids = [int(t) for t in tokens]
    if any(not 0 <= t < vocab_size for t in ids):
        raise ValueError(f"audio tokens must be in [0, {vocab_size})")
    return ids


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
