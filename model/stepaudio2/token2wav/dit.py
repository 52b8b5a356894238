"""The flow-matching estimator: the Step-Audio-2 "DiT-v5" (module and weight names as in `flow.pt`).

Per mel frame the input is [noisy mel, mu, speaker, prompt cond] (4 x 80 channels). Each block
is adaLN-modulated attention, a causal conv block, then an MLP; the ODE time enters only through
the modulation. There is no positional encoding, so attention sees its keys as a set: a
streaming chunk attends to cached keys of earlier frames plus its own, and the cache may be cut
(prompt + the latest frames) without renumbering anything.

Like the encoder, one `forward` serves whole utterances (no cache, optional mask) and chunks
(`past` keys/values of earlier frames, the causal convs' last input frames in `conv`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig

KV = tuple[torch.Tensor, torch.Tensor]
ConvHistory = tuple[torch.Tensor, torch.Tensor]
"""The last two input frames of each of a conv block's two causal convs, (B, hidden, 2)."""


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequencies: int = 256) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(
            nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half).to(t)
        args = (t * 1000.0)[:, None] * freqs[None]  # the reference scales t in [0, 1] by 1000
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(hidden, inner)
        self.to_k = nn.Linear(hidden, inner)
        self.to_v = nn.Linear(hidden, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, h, T, d)

    def forward(
        self, x: torch.Tensor, past: list[KV], mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KV]:
        q = self.q_norm(self._split(self.to_q(x)))
        k = self.k_norm(self._split(self.to_k(x)))
        v = self._split(self.to_v(x))
        keys = torch.cat([*(p[0] for p in past), k], dim=2) if past else k
        values = torch.cat([*(p[1] for p in past), v], dim=2) if past else v
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2)), (k, v)


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CausalConvBlock(nn.Module):
    """causal conv (k=3) -> LayerNorm -> Mish -> causal conv (k=3).

    `block` keeps the reference's nn.Sequential indices (1, 3, 6 hold weights; the others were
    transposes and activations) so the checkpoint keys `conv.block.{1,3,6}.*` load as they are.
    """

    def __init__(self, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.history = kernel - 1
        self.block = nn.Sequential(
            nn.Identity(),
            nn.Conv1d(hidden, hidden, kernel),
            nn.Identity(),
            nn.LayerNorm(hidden),
            nn.Mish(),
            nn.Identity(),
            nn.Conv1d(hidden, hidden, kernel),
            nn.Identity(),
        )

    def forward(
        self, x: torch.Tensor, history: ConvHistory, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ConvHistory]:
        """x: (B, T, hidden). Returns (B, T, hidden) and the new history: the last input
        frames, or with `lengths` (B,) those before row b's first padded frame `lengths[b]`."""
        a = torch.cat([history[0], x.transpose(1, 2)], dim=2)
        y = self.block[1](a).transpose(1, 2)
        y = self.block[4](self.block[3](y)).transpose(1, 2)
        b = torch.cat([history[1], y], dim=2)
        return self.block[6](b).transpose(1, 2), (self._last(a, lengths), self._last(b, lengths))

    def _last(self, frames: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        h = self.history
        if lengths is None:
            return frames[:, :, -h:]
        # row b holds h history frames, then lengths[b] real ones: keep the h before padding
        index = lengths[:, None] + torch.arange(h, device=frames.device)
        return frames.gather(2, index[:, None].expand(-1, frames.shape[1], -1))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, cfg.num_heads, cfg.head_dim)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(h, int(h * cfg.mlp_ratio))
        self.norm3 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.conv = CausalConvBlock(h)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 9 * h))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        past: list[KV],
        conv: ConvHistory,
        mask: torch.Tensor | None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KV, ConvHistory]:
        mods = self.adaLN_modulation(c).chunk(9, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        shift_conv, scale_conv, gate_conv = mods[6:]
        attended, kv = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), past, mask)
        x = x + gate_msa * attended
        convolved, conv = self.conv(modulate(self.norm3(x), shift_conv, scale_conv), conv, lengths)
        x = x + gate_conv * convolved
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x, kv, conv


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.in_proj = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.out_channels)

    def empty_conv(self, like: torch.Tensor) -> list[ConvHistory]:
        zeros = like.new_zeros(like.shape[0], self.cfg.hidden_size, 2)
        return [(zeros, zeros) for _ in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        past: list[list[KV]] | None = None,
        conv: list[ConvHistory] | None = None,
        mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV], list[ConvHistory]]:
        """x: (B, T, in_channels), the concatenated inputs; t: (B,). past[i]: cached key/value
        pieces for block i; mask: bool (T, cached + T) or any shape that broadcasts to
        (B, heads, T, cached + T), True = may attend; lengths: (B,) real frames per row when
        rows are padded (the conv histories end there).
        Returns the velocity (B, T, out_channels), this call's keys/values and conv history."""
        c = self.t_embedder(t)[:, None]
        h = self.in_proj(x)
        conv = conv or self.empty_conv(x)
        new_kv, new_conv = [], []
        for i, block in enumerate(self.blocks):
            h, kv, history = block(h, c, past[i] if past else [], conv[i], mask, lengths)
            new_kv.append(kv)
            new_conv.append(history)
        return self.final_layer(h, c), new_kv, new_conv
