"""Tokens + speaker prompt -> mel: CausalMaskedDiffWithXvec with its CFM decoder (`flow.pt`).

mu = encoder_proj(encoder(tokens)) gives one 80-d target per mel frame (2 per token). The
decoder integrates the flow ODE from noise to mel with 10 Euler steps on a cosine time schedule,
each step evaluating the DiT twice (conditional, and unconditional with mu, speaker and prompt
zeroed) and mixing them with classifier-free guidance 0.7. The speaker prompt (its tokens, its
mel, its x-vector) conditions everything: its tokens come first, its mel is the `cond` of the
first frames, and those frames are dropped from the output.

Three ways to run it, all computing with the same modules:
- `setup` + `chunk`: streaming (the reference's setup_cache / inference_chunk). The prompt is
  encoded once per voice with a fake lookahead (its own first tokens), and its per-ODE-step DiT
  keys/values are shared by every stream of that voice. A chunk attends to the prompt, the
  latest `window` generated frames and itself.
- `whole(..., full_context=False)`: the same computation as streaming in one pass, with block
  attention masks. It is the test oracle for the caches.
- `whole(..., full_context=True)`: the reference's offline path (full attention everywhere).
Noise comes from `PositionalNoise`, indexed by mel frame (prompt frames first), so all three
start the ODE from the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlowConfig
from .conformer import EncoderCache, UpsampleConformerEncoderV2
from .dit import KV, ConvHistory, DiT
from .noise import PositionalNoise

N_TIMESTEPS = 10
NOISE_SEED = 1234


def time_schedule(n: int = N_TIMESTEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(t, dt) per Euler step: t_span = 1 - cos(linspace(0, 1, n + 1) * pi / 2), and t and dt
    updated in float32 exactly as the reference does (t += dt; dt = t_span[i + 1] - t)."""
    span = 1 - torch.cos(torch.linspace(0, 1, n + 1) * 0.5 * torch.pi)
    t, dt = span[0], span[1] - span[0]
    steps = []
    for i in range(1, n + 1):
        steps.append((t, dt))
        t = t + dt
        if i < n:
            dt = span[i + 1] - t
    return steps


def chunk_sizes(n_tokens: int, chunk: int, lookahead: int) -> list[int]:
    """How a stream cuts `n_tokens`: `chunk` tokens whenever `chunk + lookahead` are there,
    then the rest (with zero lookahead) when the stream finishes."""
    sizes, left = [], n_tokens
    while left >= chunk + lookahead:
        sizes.append(chunk)
        left -= chunk
    return sizes + ([left] if left else [])


@dataclass(frozen=True, slots=True)
class DiTCache:
    """Per ODE step, per DiT block. Tensors are shared, never written."""

    prompt: tuple[tuple[KV, ...], ...]
    """Keys/values of the speaker prompt's frames (the same for every stream of a voice)."""
    recent: tuple[tuple[KV, ...], ...]
    """Keys/values of the latest generated frames, at most `window` of them."""
    conv: tuple[tuple[ConvHistory, ...], ...]


@dataclass(frozen=True, slots=True)
class FlowState:
    spk: torch.Tensor
    """(2, out) projected speaker embedding; row 1 (unconditional) is zeros."""
    frames: int
    """Mel frames produced so far, prompt included: the noise position of the next frame."""
    encoder: EncoderCache
    dit: DiTCache


class CausalConditionalCFM(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.estimator = DiT(cfg.estimator)
        self.cfg_rate = cfg.inference_cfg_rate

    def solve(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        spk: torch.Tensor,
        cond: torch.Tensor,
        past: list[list[list[KV]]] | None = None,
        conv: list[list[ConvHistory]] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[list[KV]], list[list[ConvHistory]]]:
        """Integrate from `noise` (1, T, mel). mu and cond (1, T, mel); spk (2, mel).
        past/conv: per step, the estimator's caches. Returns the mel and, per step, this
        call's keys/values and conv history."""
        # Row 0 is conditional, row 1 unconditional (mu, speaker and prompt cond zeroed).
        frames = noise.shape[1]
        fixed = torch.cat(
            [torch.cat([mu, torch.zeros_like(mu)]), spk[:, None].expand(2, frames, -1)], dim=2
        )
        fixed = torch.cat([fixed, torch.cat([cond, torch.zeros_like(cond)])], dim=2)
        x, kv_steps, conv_steps = noise, [], []
        for step, (t, dt) in enumerate(time_schedule()):
            inputs = torch.cat([x.expand(2, -1, -1), fixed], dim=2)
            t_in = t.to(x).expand(2)
            v, kv, history = self.estimator(
                inputs, t_in, past[step] if past else None, conv[step] if conv else None, mask
            )
            x = x + dt.to(x) * ((1 + self.cfg_rate) * v[:1] - self.cfg_rate * v[1:])
            kv_steps.append(kv)
            conv_steps.append(history)
        return x, kv_steps, conv_steps


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoderV2(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(cfg)
        self.lookahead = cfg.encoder.pre_lookahead_len
        self.up = cfg.encoder.up_stride
        self.noise = PositionalNoise(NOISE_SEED, cfg.output_size, block=1000)

    # -- pieces -------------------------------------------------------------------------------

    def _speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        spk = self.spk_embed_affine_layer(F.normalize(embedding.reshape(1, -1), dim=1))
        return torch.cat([spk, torch.zeros_like(spk)])

    def _segment(self, tokens: torch.Tensor, zero_lookahead: bool) -> torch.Tensor:
        """Embedded tokens (1, n, d), followed by `lookahead` zero frames if asked."""
        x = self.encoder.embed(self.input_embedding(tokens)[None])
        if zero_lookahead:
            x = F.pad(x, (0, 0, 0, self.lookahead))
        return x

    def _prompt_segment(self, prompt_tokens: torch.Tensor) -> torch.Tensor:
        # The prompt is encoded before any generated token exists, so its lookahead is its own
        # first tokens (repeated if the prompt is shorter than the lookahead), as the reference.
        fake = prompt_tokens.repeat(-(-self.lookahead // len(prompt_tokens)))[: self.lookahead]
        return self._segment(torch.cat([prompt_tokens, fake]), zero_lookahead=False)

    def _noise(self, start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
        return self.noise.slice(start, stop).T[None].to(like)

    # -- streaming ----------------------------------------------------------------------------

    def setup(
        self, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, embedding: torch.Tensor
    ) -> FlowState:
        """Encode a speaker prompt: tokens (P,), mel (2P, mel), x-vector. The state it returns
        starts every stream of that voice."""
        spk = self._speaker(embedding)
        h, enc_cache = self.encoder([self._prompt_segment(prompt_tokens)])
        mu = self.encoder_proj(h)
        frames = mu.shape[1]
        noise = self._noise(0, frames, mu)
        _, kv, conv = self.decoder.solve(noise, mu, spk, prompt_mel[None].to(mu), None, None)
        empty = tuple(tuple((k[:, :, :0], v[:, :, :0]) for k, v in step) for step in kv)
        dit = DiTCache(
            prompt=tuple(tuple(step) for step in kv),
            recent=empty,
            conv=tuple(tuple(step) for step in conv),
        )
        return FlowState(spk, frames, enc_cache, dit)

    def chunk(
        self, state: FlowState, tokens: torch.Tensor, last: bool, window: int | None
    ) -> tuple[torch.Tensor, FlowState]:
        """Mel (2n, mel) for the next n tokens. `tokens` carries `lookahead` more tokens after
        them unless `last` (then the lookahead is zeros)."""
        h, enc_cache = self.encoder([self._segment(tokens, zero_lookahead=last)], state.encoder)
        mu = self.encoder_proj(h)
        frames = mu.shape[1]
        noise = self._noise(state.frames, state.frames + frames, mu)
        past = [
            [[prompt, recent] for prompt, recent in zip(ps, rs, strict=True)]
            for ps, rs in zip(state.dit.prompt, state.dit.recent, strict=True)
        ]
        conv = [list(step) for step in state.dit.conv]
        mel, kv, new_conv = self.decoder.solve(
            noise, mu, state.spk, torch.zeros_like(mu), past, conv
        )

        def keep(old: KV, new: KV) -> KV:
            k, v = torch.cat([old[0], new[0]], dim=2), torch.cat([old[1], new[1]], dim=2)
            return (k, v) if window is None else (k[:, :, -window:], v[:, :, -window:])

        recent = tuple(
            tuple(keep(old, new) for old, new in zip(olds, news, strict=True))
            for olds, news in zip(state.dit.recent, kv, strict=True)
        )
        dit = DiTCache(state.dit.prompt, recent, tuple(tuple(step) for step in new_conv))
        new_state = FlowState(state.spk, state.frames + frames, enc_cache, dit)
        return mel[0], new_state

    # -- whole utterance ----------------------------------------------------------------------

    def whole(
        self,
        prompt_tokens: torch.Tensor,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        tokens: torch.Tensor,
        *,
        full_context: bool,
        chunk: int = 25,
        window: int | None = None,
    ) -> torch.Tensor:
        """Mel (2n, mel) for all `tokens` in one pass. With `full_context`, the reference's
        offline path; without, exactly what a stream with this `chunk` and `window` computes."""
        n_prompt, n = len(prompt_tokens), len(tokens)
        if n == 0:
            return torch.zeros(0, self.cfg.output_size, device=tokens.device)
        spk = self._speaker(embedding)
        masks: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        dit_mask = None
        if full_context:
            segments = [self._segment(torch.cat([prompt_tokens, tokens]), zero_lookahead=True)]
        else:
            segments = [self._prompt_segment(prompt_tokens), self._segment(tokens, True)]
            # Per position, the end of its chunk (the prompt is the first chunk): a chunk sees
            # everything before its end, as it does when streamed with caches.
            sizes = torch.tensor([n_prompt, *chunk_sizes(n, chunk, self.lookahead)])
            token_end = sizes.cumsum(0).repeat_interleave(sizes)
            frame_end = token_end.repeat_interleave(self.up) * self.up
            device = tokens.device
            masks = (_block_mask(token_end).to(device), _block_mask(frame_end).to(device))
            dit_mask = _dit_mask(frame_end, window).to(tokens.device)
        h, _ = self.encoder(segments, None, masks)
        mu = self.encoder_proj(h)
        frames, prompt_frames = mu.shape[1], self.up * n_prompt
        cond = torch.zeros_like(mu)
        cond[0, :prompt_frames] = prompt_mel.to(mu)
        noise = self._noise(0, frames, mu)
        mel, _, _ = self.decoder.solve(noise, mu, spk, cond, mask=dit_mask)
        return mel[0, prompt_frames:]


def _block_mask(ends: torch.Tensor) -> torch.Tensor:
    """Position i may see position j if j is before the end of i's chunk, `ends[i]`."""
    return torch.arange(len(ends))[None, :] < ends[:, None]


def _dit_mask(ends: torch.Tensor, window: int | None) -> torch.Tensor:
    """As `_block_mask`, but of the generated frames before a chunk only the last `window`
    (what a stream keeps in its DiT cache); the prompt frames stay visible."""
    prompt = int(ends[0])
    visible = _block_mask(ends)
    if window is not None:
        first = torch.searchsorted(ends, ends)  # first frame of each frame's chunk
        j = torch.arange(len(ends))[None, :]
        visible &= (j < prompt) | (j >= torch.clamp(first - window, min=prompt)[:, None])
    return visible
