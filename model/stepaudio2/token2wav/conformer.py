"""The flow's token encoder: UpsampleConformerEncoderV2 (module and weight names as in `flow.pt`).

Tokens (25 Hz) -> linear embed -> pre-lookahead conv (each output sees the next 3 tokens) ->
6 conformer layers -> nearest x2 upsample + causal conv -> linear embed -> 4 conformer layers ->
LayerNorm: one 512-d vector per mel frame (50 Hz). The conformer layers have no conv module and
no macaron FFN; attention is ESPnet's relative-position attention (Transformer-XL style).

One `forward` serves every mode. It takes the new positions plus a cache of what came before
(empty for a whole utterance) and an optional boolean attention mask over [cache, new]:
- whole utterance, full context: no cache, no mask;
- streaming: the cache of earlier chunks, no mask (a chunk sees everything before it and itself);
- whole utterance, chunk-causal: no cache, a block mask; it computes what streaming computes, in
  one pass, which is how the tests check the caches.
The pre-lookahead conv takes `segments`, each a run of embedded positions followed by its
lookahead frames, because a chunk's lookahead is not always the tokens that follow it in the
utterance (the speaker prompt is set up with a fake lookahead; the last chunk has zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True)
class EncoderCache:
    """What a chunk needs from the chunks before it. Tensors are never changed in place, so a
    cache can be shared (one speaker prompt's cache starts every stream of that voice)."""

    tokens: int
    """Token positions already encoded."""
    lookahead: torch.Tensor
    """(B, d, 2): the last two pre-lookahead conv1 outputs (conv2 is causal, kernel 3)."""
    upsample: torch.Tensor
    """(B, d, 2 * stride): the last upsampled frames (the up conv is causal)."""
    kv: tuple[KV, ...]
    """Per conformer layer (token-rate layers, then frame-rate layers): keys and values
    (B, heads, positions, d_head) of every position so far."""


class LinearEmbed(nn.Module):
    """LinearNoSubsampling, then EspnetRelPositionalEncoding's input scaling (its sinusoid
    table has no weights)."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.scale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


def relative_position_table(first: int, last: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """ESPnet's sinusoid for relative positions `first..last`: (last - first + 1, dim), with
    sin on even and cos on odd channels."""
    rel = torch.arange(first, last + 1, dtype=torch.float32, device=like.device)
    div = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=like.device)
        * -(math.log(10000.0) / dim)
    )
    table = torch.zeros(rel.numel(), dim, device=like.device)
    table[:, 0::2] = torch.sin(rel[:, None] * div)
    table[:, 1::2] = torch.cos(rel[:, None] * div)
    return table.to(like.dtype)


class RelPositionAttention(nn.Module):
    def __init__(self, heads: int, dim: int, key_bias: bool) -> None:
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim, bias=key_bias)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_head))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.d_head)).transpose(1, 2)  # (B, h, T, d)

    def forward(
        self, x: torch.Tensor, past: KV | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KV]:
        n = x.shape[1]
        q = self._split(self.linear_q(x))
        k, v = self._split(self.linear_k(x)), self._split(self.linear_v(x))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        offset = k.shape[2] - n
        # Query i sits at position offset + i, key j at j: relative position offset + i - j,
        # from -(n - 1) to offset + n - 1. Score the query against every relative position once,
        # then pick each (query, key) pair's entry (ESPnet's rel_shift, without the reshaping).
        table = relative_position_table(-(n - 1), offset + n - 1, x.shape[-1], x)
        pos = self.linear_pos(table).unflatten(-1, (self.heads, self.d_head)).transpose(0, 1)
        content = torch.matmul(q + self.pos_bias_u[:, None], k.transpose(-2, -1))
        by_rel = torch.matmul(q + self.pos_bias_v[:, None], pos.transpose(-2, -1))
        positions = torch.arange(offset + n, device=x.device)
        rel = positions[offset:, None] - positions[None, :]  # (n, offset + n)
        index = (rel + n - 1).expand(*by_rel.shape[:2], n, offset + n)  # row of `table`
        position = torch.gather(by_rel, -1, index)
        scores = (content + position) / math.sqrt(self.d_head)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.linear_out(out.transpose(1, 2).flatten(2)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm attention + FFN (ConformerEncoderLayer without conv module and macaron)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.output_size
        self.self_attn = RelPositionAttention(cfg.attention_heads, d, cfg.key_bias)
        self.feed_forward = FeedForward(d, cfg.linear_units)
        self.norm_mha = nn.LayerNorm(d, eps=1e-12)
        self.norm_ff = nn.LayerNorm(d, eps=1e-12)

    def forward(
        self, x: torch.Tensor, past: KV | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KV]:
        attended, kv = self.self_attn(self.norm_mha(x), past, mask)
        x = x + attended
        return x + self.feed_forward(self.norm_ff(x)), kv


class PreLookaheadLayer(nn.Module):
    def __init__(self, dim: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3)

    def forward(
        self, segments: list[torch.Tensor], history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """segments: (B, n_i + lookahead, d) each; history: (B, d, 2). Returns (B, sum n_i, d)."""
        ahead = [F.leaky_relu(self.conv1(s.transpose(1, 2))) for s in segments]
        y = torch.cat([history, *ahead], dim=2)
        out = self.conv2(y).transpose(1, 2)
        inputs = torch.cat([s[:, : s.shape[1] - self.lookahead] for s in segments], dim=1)
        return out + inputs, y[:, :, -2:]


class Upsample1D(nn.Module):
    """Nearest-neighbour upsampling, then a causal conv (left context carried in a cache)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(dim, dim, kernel_size=2 * stride + 1)

    def forward(self, x: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, d, n); history: (B, d, 2 * stride). Returns (B, d, stride * n)."""
        y = torch.cat([history, x.repeat_interleave(self.stride, dim=2)], dim=2)
        return self.conv(y), y[:, :, -2 * self.stride :]


class UpsampleConformerEncoderV2(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.output_size
        self.cfg = cfg
        self.embed = LinearEmbed(cfg.input_size, d)
        self.pre_lookahead_layer = PreLookaheadLayer(d, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_blocks))
        self.up_layer = Upsample1D(d, cfg.up_stride)
        self.up_embed = LinearEmbed(cfg.input_size, d)
        self.up_encoders = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_up_blocks))
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def empty_cache(self, like: torch.Tensor) -> EncoderCache:
        d, b = self.cfg.output_size, like.shape[0]
        zeros = like.new_zeros
        return EncoderCache(0, zeros(b, d, 2), zeros(b, d, 2 * self.cfg.up_stride), ())

    def forward(
        self,
        segments: list[torch.Tensor],
        cache: EncoderCache | None = None,
        masks: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> tuple[torch.Tensor, EncoderCache]:
        """segments: embedded positions, each followed by its `pre_lookahead_len` lookahead
        frames (already zero where there is none). masks: bool (new, cache + new) at the token
        and the frame rate, True = may attend. Returns (B, stride * n, d) and the new cache."""
        cache = cache or self.empty_cache(segments[0])
        x, lookahead = self.pre_lookahead_layer(segments, cache.lookahead)
        kv: list[KV] = []
        for i, layer in enumerate(self.encoders):
            x, layer_kv = layer(x, cache.kv[i] if cache.kv else None, masks[0])
            kv.append(layer_kv)
        x, upsample = self.up_layer(x.transpose(1, 2), cache.upsample)
        x = self.up_embed(x.transpose(1, 2))
        for i, layer in enumerate(self.up_encoders, start=len(self.encoders)):
            x, layer_kv = layer(x, cache.kv[i] if cache.kv else None, masks[1])
            kv.append(layer_kv)
        tokens = cache.tokens + sum(s.shape[1] - self.cfg.pre_lookahead_len for s in segments)
        return self.after_norm(x), EncoderCache(tokens, lookahead, upsample, tuple(kv))
