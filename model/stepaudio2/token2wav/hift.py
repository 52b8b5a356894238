"""Mel -> 24 kHz waveform: the HiFT vocoder (HiFi-GAN + neural source filter + iSTFT), `hift.pt`.

An F0 predictor reads pitch from the mel; a sine source (8 harmonics plus noise) at that pitch
is merged to one excitation, and its STFT is fed into every upsampling stage of a HiFi-GAN-style
generator whose last layer predicts the magnitude and phase of a 16-point STFT (hop 4):
50 Hz mel x 8 x 5 x 3 x 4 = 24 kHz, 480 samples per mel frame.

Streaming without approximation: every layer is a finite convolution except the sine phase,
which is a running sum of F0 over frames. So `f0`, `phase_increments`, `source` and `decode` are
separate steps: a stream keeps the running phase itself and recomputes a window of frames
with `context_frames()` of context on each side; outputs far enough from a window's edges are
exactly those of the whole-utterance pass. The phase is summed in float64 (the reference sums
in float32, which drifts by a fraction of a radian over a minute). The source noise is drawn
by absolute sample position (`PositionalNoise`), and the harmonics start at phase 0: the
reference adds a random initial phase at sample 0 only, which its frame-rate resampling of the
phase then drops, so it has no effect there either.

Weight norm: the modules use torch's parametrized `weight_norm` (checkpoint keys
`*.parametrizations.weight.original0/1`); `load_hift` also takes the older
`*.weight_g/*.weight_v` keys and a `generator.` prefix, then folds the norms into plain weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .noise import PositionalNoise

NOISE_SEED = 4321


@dataclass(frozen=True, slots=True)
class HiFTConfig:
    """The reference's hard-coded HiFT (Step-Audio-2 / CosyVoice2 24 kHz). Only the widths are
    read from `hift.pt` (so a tiny checkpoint can be narrower); rates and kernels are fixed."""

    base_channels: int = 512
    f0_channels: int = 512
    in_channels: int = 80
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    dilations: tuple[int, ...] = (1, 3, 5)
    f0_layers: int = 5
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame (480)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> HiFTConfig:
        """The widths of a (key-normalised) `hift.pt`."""
        suffix = "parametrizations.weight.original1"
        return cls(
            base_channels=state[f"conv_pre.{suffix}"].shape[0],
            f0_channels=state[f"f0_predictor.condnet.0.{suffix}"].shape[0],
        )

    def context_frames(self) -> int:
        """Mel frames on each side of an output sample that can change it in `decode` (given
        the mel and the source): a conservative sum, in samples, of every layer's reach."""
        rates, stages = self.upsample_rates, len(self.upsample_rates)
        step = [self.hop // math.prod(rates[: i + 1]) for i in range(stages)]  # samples per step

        def res(kernel: int) -> int:  # a ResBlock: per dilation, a dilated conv + a plain one
            return sum((kernel - 1) // 2 * (d + 1) for d in self.dilations)

        def up(i: int) -> int:  # a transposed conv reaches kernel/rate of its input steps
            return math.ceil(self.upsample_kernel_sizes[i] / rates[i]) * step[i] * rates[i]

        # From where the source joins stage i to the waveform: the stage's resblocks, the
        # later stages, and at the end conv_post (k7), the 1-step reflection pad and the iSTFT.
        after = [0] * stages
        for i in reversed(range(stages)):
            blocks = max(res(k) for k in self.resblock_kernel_sizes) * step[i]
            if i == stages - 1:
                after[i] = blocks + 4 * self.hop_len + self.n_fft // 2
            else:
                after[i] = blocks + up(i + 1) + after[i + 1]
        mel_path = 3 * self.hop + up(0) + after[0]  # conv_pre (k7), then the stages
        source_paths = []
        for i in range(stages):
            down = math.prod(rates[i + 1 :])  # source_downs[i]: kernel 2 * down STFT frames
            source_paths.append(
                self.hop  # the sine's phase interpolates between neighbouring frames
                + self.n_fft // 2  # the source's STFT
                + (2 * down if down > 1 else 1) * self.hop_len
                + res(self.source_resblock_kernel_sizes[i]) * step[i]
                + after[i]
            )
        return math.ceil(max(mel_path, *source_paths) / self.hop)


def _wn_conv(*args: int, **kwargs: int) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(*args, **kwargs))  # type: ignore[arg-type]


class Snake(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[:, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        self.convs1 = nn.ModuleList(
            _wn_conv(channels, channels, kernel, dilation=d, padding=pad * d) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _wn_conv(channels, channels, kernel, padding=pad) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            x = x + c2(a2(c1(a1(x))))
        return x


class F0Predictor(nn.Module):
    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for i in range(layers):
            convs += [
                _wn_conv(in_channels if i == 0 else channels, channels, 3, padding=1),
                nn.ELU(),
            ]
        self.condnet = nn.Sequential(*convs)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class SourceModule(nn.Module):
    """Merges the harmonics into one excitation (SourceModuleHnNSF2's weights)."""

    def __init__(self, harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(harmonics, 1)

    def forward(self, sines: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.l_linear(sines))


class HiFTGenerator(nn.Module):
    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base, n_fft = cfg.base_channels, cfg.n_fft
        self.m_source = SourceModule(cfg.nb_harmonics + 1)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_channels, cfg.f0_layers)
        self.conv_pre = _wn_conv(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(base >> i, base >> (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(
                zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
            )
        )
        # The source's STFT enters each stage, downsampled to that stage's rate.
        down = [math.prod(cfg.upsample_rates[i + 1 :]) for i in range(len(cfg.upsample_rates))]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(n_fft + 2, base >> (i + 1), 2 * u, u, padding=u // 2)
            if u > 1
            else nn.Conv1d(n_fft + 2, base >> (i + 1), 1)
            for i, u in enumerate(down)
        )
        self.source_resblocks = nn.ModuleList(
            ResBlock(base >> (i + 1), k, cfg.dilations)
            for i, k in enumerate(cfg.source_resblock_kernel_sizes)
        )
        self.resblocks = nn.ModuleList(
            ResBlock(base >> (i + 1), k, cfg.dilations)
            for i in range(len(cfg.upsample_rates))
            for k in cfg.resblock_kernel_sizes
        )
        self.conv_post = _wn_conv(base >> len(cfg.upsample_rates), n_fft + 2, 7, padding=3)
        self.noise = PositionalNoise(NOISE_SEED, cfg.nb_harmonics + 1, block=cfg.sampling_rate)

    # -- the source -----------------------------------------------------------------------------

    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, mel, T) -> F0 in Hz per frame, (1, T)."""
        return self.f0_predictor(mel)

    def phase_increments(self, f0: torch.Tensor) -> torch.Tensor:
        """Per frame and harmonic, the phase advance in cycles per sample, mod 1 (float64,
        (1, T, harmonics)); the running sum over frames of this is the sine's phase."""
        harmonics = torch.arange(1, self.cfg.nb_harmonics + 2, device=f0.device, dtype=f0.dtype)
        return ((f0[..., None] * harmonics / self.cfg.sampling_rate) % 1).double()

    def source(self, f0: torch.Tensor, cycles: torch.Tensor, first_sample: int) -> torch.Tensor:
        """The excitation (1, 1, hop * T) for frames with F0 `f0` (1, T) and running phase
        `cycles` (1, T, harmonics; the sum of increments up to each frame), whose first sample
        is `first_sample` of the utterance (for the noise)."""
        samples = self.cfg.hop * f0.shape[1]
        noise = self.noise.slice(first_sample, first_sample + samples).T[None]
        return self.excitation(f0, cycles, noise)

    def excitation(
        self, f0: torch.Tensor, cycles: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """`source` with its noise given, (B, hop * T, harmonics): the batched step reads it
        from a table on the device instead of drawing it per call."""
        hop, cfg = self.cfg.hop, self.cfg
        # Linear interpolation of the frame phases to samples (the reference's
        # F.interpolate(mode="linear") with clamped edges): the first half of a frame blends
        # with the previous frame, the second half with the next.
        prev = torch.cat([cycles[:, :1], cycles[:, :-1]], dim=1)
        nxt = torch.cat([cycles[:, 1:], cycles[:, -1:]], dim=1)
        offset = (torch.arange(hop, device=f0.device, dtype=torch.float64) + 0.5) / hop
        first_half = offset[: hop // 2] + 0.5
        second_half = offset[hop // 2 :] - 0.5
        a = prev[:, :, None] * (1 - first_half[:, None]) + cycles[:, :, None] * first_half[:, None]
        b = cycles[:, :, None] * (1 - second_half[:, None]) + nxt[:, :, None] * second_half[:, None]
        phase = torch.cat([a, b], dim=2).flatten(1, 2) * (2 * math.pi * hop)  # (B, hop*T, H)
        sines = (torch.sin(phase) * cfg.nsf_alpha).to(f0.dtype)
        # each frame's flag repeated over its samples (repeat_interleave without its host sync)
        voiced = (f0 > cfg.nsf_voiced_threshold).to(f0.dtype)[..., None].expand(-1, -1, hop)
        voiced = voiced.flatten(1)[..., None]
        noise_amp = voiced * cfg.nsf_sigma + (1 - voiced) * cfg.nsf_alpha / 3
        return self.m_source(sines * voiced + noise_amp * noise.to(f0)).transpose(1, 2)

    # -- the generator --------------------------------------------------------------------------

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """(B, mel, T) and the excitation (B, 1, hop * T) -> waveform (B, hop * T)."""
        cfg = self.cfg
        window = torch.hann_window(cfg.n_fft, device=mel.device, dtype=mel.dtype)
        spec = torch.stft(
            source[:, 0], cfg.n_fft, cfg.hop_len, cfg.n_fft, window, return_complex=True
        )
        s = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            x = sum(self.resblocks[i * kernels + j](x) for j in range(kernels)) / kernels
        x = self.conv_post(F.leaky_relu(x))
        bins = cfg.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        phase = torch.sin(x[:, bins:])  # as the reference: a sin inside the phase
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        audio = istft(spec, cfg.n_fft, cfg.hop_len, window)
        return audio.clamp(-cfg.audio_limit, cfg.audio_limit)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Whole utterance: (1, mel, T) -> (1, hop * T)."""
        f0 = self.f0(mel)
        cycles = torch.cumsum(self.phase_increments(f0), dim=1)
        return self.decode(mel, self.source(f0, cycles, 0))


def istft(spec: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """`torch.istft(spec, n_fft, hop, n_fft, window)` (centred, one-sided; spec (B, bins, frames)),
    by the same operations (bit for bit on the CPU) but without its check that the window
    overlap-adds to non-zero values: that check reads a tensor back to the host, which a CUDA
    graph cannot capture. A Hann window at hop n_fft / 4 always passes it."""
    batch, frames = spec.shape[0], spec.shape[-1]
    length = n_fft + hop * (frames - 1)
    pieces = torch.fft.irfft(spec.mT, n=n_fft, dim=-1) * window
    signal = torch.ops.aten.unfold_backward(pieces, [batch, length], 1, n_fft, hop)
    weight = window.pow(2).expand(1, frames, n_fft)
    envelope = torch.ops.aten.unfold_backward(weight, [1, length], 1, n_fft, hop)
    half = n_fft // 2
    return signal[:, half : length - half] / envelope[:, half : length - half]


def normalise_hift_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`hift.pt` keys in our modules' style: no `generator.` prefix, and the old weight-norm
    names `weight_g`/`weight_v` as the parametrized `parametrizations.weight.original0/1`."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("generator.")
        if key.endswith(".weight_g"):
            key = key.removesuffix(".weight_g") + ".parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key.removesuffix(".weight_v") + ".parametrizations.weight.original1"
        renamed[key] = value
    return renamed


def load_hift(state: dict[str, torch.Tensor]) -> HiFTGenerator:
    """A HiFT with the weights of `hift.pt` (either weight-norm key style, with or without a
    `generator.` prefix), loaded strictly, its weight norms folded into plain weights."""
    state = normalise_hift_keys(state)
    model = HiFTGenerator(HiFTConfig.from_state_dict(state))
    model.load_state_dict(state, strict=True)
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
