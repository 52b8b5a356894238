"""A tiny random token2wav checkpoint in the published layout, for tests and benchmarks.

Same files, key names and fixed structure as Step-Audio-2-mini's `token2wav/` (6561-token
vocabulary, 25 Hz tokens, 80-bin mel at 50 Hz, 24 kHz audio, HiFT rates and kernels), with
small widths and depths. Weights are random but scaled so signals stay in a useful range:
unlike the reference initialisation (zeroed adaLN gates and output layer), every layer
contributes, so tests exercise every path. HiFT's F0 head is biased to ~120 Hz so the sine
source is voiced.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import DiTConfig, EncoderConfig, FlowConfig, dump_flow_config
from .conformer import RelPositionAttention
from .flow import CausalMaskedDiffWithXvec
from .hift import HiFTConfig, HiFTGenerator, Snake
from .voice import FRAMES_PER_TOKEN, MEL_BINS, SPEAKER_DIM, Voice

TINY_FLOW = FlowConfig(
    input_size=64,
    encoder=EncoderConfig(
        input_size=64,
        output_size=64,
        num_blocks=2,
        num_up_blocks=1,
        attention_heads=2,
        linear_units=128,
    ),
    estimator=DiTConfig(mlp_ratio=2.0, depth=2, num_heads=2, head_dim=32, hidden_size=64),
)
TINY_HIFT = HiFTConfig(base_channels=32, f0_channels=32)
TINY_PROMPT_TOKENS = 20


def _randomise(model: nn.Module, g: torch.Generator) -> None:
    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    with torch.no_grad():
        for module in model.modules():
            params = dict(module.named_parameters(recurse=False))
            if isinstance(module, nn.LayerNorm) and params:
                params["weight"].copy_(1 + normal(params["weight"].shape, 0.1))
                params["bias"].copy_(normal(params["bias"].shape, 0.1))
            elif isinstance(module, nn.Embedding):
                params["weight"].copy_(normal(params["weight"].shape, 1.0))
            elif isinstance(module, RelPositionAttention):
                params["pos_bias_u"].copy_(normal(params["pos_bias_u"].shape, 0.1))
                params["pos_bias_v"].copy_(normal(params["pos_bias_v"].shape, 0.1))
            elif isinstance(module, Snake):
                params["alpha"].copy_(0.5 + torch.rand(params["alpha"].shape, generator=g))
            elif isinstance(module, nn.Linear | nn.Conv1d | nn.ConvTranspose1d):
                bias = params.get("bias")
                if bias is not None:
                    bias.copy_(normal(bias.shape, 0.02))
                wn = getattr(module, "parametrizations", None)
                if wn is None:
                    weight = module.weight
                    weight.copy_(normal(weight.shape, 1 / math.sqrt(weight[0].numel())))
                else:  # weight norm: direction v random, magnitude g = |v| (so weight == v)
                    g_, v = wn.weight.original0, wn.weight.original1
                    v.copy_(normal(v.shape, 1 / math.sqrt(v[0].numel())))
                    g_.copy_(v.flatten(1).norm(dim=1).reshape(g_.shape))


def tiny_voice(seed: int, name: str = "default") -> Voice:
    rng = np.random.default_rng(seed)
    n = TINY_PROMPT_TOKENS
    return Voice(
        name=name,
        prompt_tokens=rng.integers(0, TINY_FLOW.vocab_size, n).astype(np.int64),
        prompt_mel=(rng.standard_normal((FRAMES_PER_TOKEN * n, MEL_BINS)) - 5).astype(np.float32),
        speaker_embedding=rng.standard_normal(SPEAKER_DIM).astype(np.float32),
    )


def write_tiny_token2wav(directory: Path, seed: int = 0) -> Path:
    """Write `token2wav/{flow.yaml,flow.pt,hift.pt}` and `voices/default.npz` under
    `directory`; returns it (the `model_dir` of `Token2Wav.load`)."""
    g = torch.Generator().manual_seed(seed)
    flow = CausalMaskedDiffWithXvec(TINY_FLOW)
    _randomise(flow, g)
    hift = HiFTGenerator(TINY_HIFT)
    _randomise(hift, g)
    with torch.no_grad():
        classifier = hift.f0_predictor.classifier
        classifier.weight.mul_(5.0)
        classifier.bias.fill_(120.0)  # voiced: F0 well above the 10 Hz threshold
        # a quiet log-magnitude head, so the waveform is not clipped at +-0.99
        post = hift.conv_post
        post.parametrizations.weight.original0.mul_(0.2)
        post.bias[: TINY_HIFT.n_fft // 2 + 1].fill_(-2.0)
    folder = Path(directory) / "token2wav"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.yaml").write_text(dump_flow_config(TINY_FLOW), encoding="utf-8")
    torch.save(flow.state_dict(), folder / "flow.pt")
    torch.save(hift.state_dict(), folder / "hift.pt")
    tiny_voice(seed).save(Path(directory) / "voices" / "default.npz")
    return Path(directory)
