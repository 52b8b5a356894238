"""One chunk of N streams in one forward, at static shapes: the function a CUDA graph captures.

Each row is a stream at its own position: its slot in `SlotBuffers` (caches), its voice in
`VoiceBank`, and lengths saying what is real. The arithmetic is `flow.chunk` followed by
`HiftStream.push`, rewritten so that no shape depends on a stream:
- tokens: `new_tokens` slots (a final chunk may carry chunk + lookahead - 1), padded; the last
  chunk's lookahead and the padding are zeroed after the embedding, as `flow.chunk` pads.
- conformer: new keys/values are written into the slot's cache at the stream's position, then
  the chunk attends over the whole cache with the invalid part masked; the relative-position
  term reads a table that covers every position, projected once (it has no stream in it).
- DiT: keys are [voice prompt (padded), ring of the latest generated frames, the chunk]; the
  ring is attention-order free (the DiT has no positions), so frames are written where the
  ring wraps, never shifted. Conv histories end at each row's last real frame.
- HiFT: only chunks that are not a stream's last (their geometry is fixed: 50 new frames, a
  82-frame window); each row's window starts at column 0, so the convs' left padding is the
  utterance's start for a first chunk and lies in discarded context otherwise; what lies right
  of a row's real frames is within the context HiFT discards. A final chunk's HiFT runs alone
  (`HiftStream`), so its window ends exactly where the utterance does.
- noise comes from tables on the device, indexed by each row's position.
Nothing here reads a value back to the host, and every tensor the step keeps is in the
buffers, so a replay is exactly a call. Rows that pad a batch use the scratch slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .batch_state import Geometry, SlotBuffers, VoiceBank
from .conformer import ConformerLayer, relative_position_table
from .flow import CausalMaskedDiffWithXvec, time_schedule
from .hift import HiFTGenerator


@dataclass(frozen=True, slots=True)
class StepInputs:
    """Per row (stream); every field is a tensor with the batch first."""

    slots: torch.Tensor
    """long: the stream's slot (padding rows: the scratch slot)."""
    tokens: torch.Tensor
    """long (B, new_tokens + lookahead): the chunk's tokens, then its lookahead, then zeros."""
    new_tokens: torch.Tensor
    """long: tokens this chunk adds (25, or 1 .. 27 for a final chunk)."""
    last: torch.Tensor
    """bool: a final chunk (its lookahead is zeros)."""
    cached_tokens: torch.Tensor
    """long: token positions in the encoder cache (prompt included)."""
    noise_frame: torch.Tensor
    """long: the flow noise position of the chunk's first frame (prompt frames included)."""
    generated: torch.Tensor
    """long: mel frames generated before this chunk (the DiT ring's write position)."""
    voice: torch.Tensor
    """long: the voice's index in the bank."""
    vocode: torch.Tensor
    """bool: run HiFT on this row here (not a final chunk, not padding)."""
    first: torch.Tensor
    """bool: the stream's first HiFT chunk (its window starts at the utterance's start)."""
    first_sample: torch.Tensor
    """long: the HiFT window's first sample in the utterance (noise position)."""

    def copy_(self, other: StepInputs) -> None:
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name), non_blocking=True)


@dataclass(frozen=True, slots=True)
class StepOutputs:
    mel: torch.Tensor
    """(B, frames, mel) in the flow's dtype; row b's first 2 * new_tokens[b] are real."""
    audio: torch.Tensor
    """float32 (B, chunk_frames * hop): rows with `vocode`; a first chunk's first
    `first_frames * hop` samples are real, any other's all."""


def take(x: torch.Tensor, start: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Per row b, `length` entries of x along `dim` from `start[b]`; indices past the end
    repeat the last entry (they only ever fill padding)."""
    index = (start[:, None] + torch.arange(length, device=x.device)).clamp(max=x.shape[dim] - 1)
    shape = [1] * x.dim()
    shape[0], shape[dim] = x.shape[0], length
    sizes = list(x.shape)
    sizes[dim] = length
    return x.gather(dim, index.view(shape).expand(sizes))


def write_at(
    buffer: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, values: torch.Tensor
) -> None:
    """buffer (S, *mid, L, d)[slots[b], ..., positions[b, j], :] = values (B, *mid, T, d)."""
    n, length, d = buffer.shape[0], buffer.shape[-2], buffer.shape[-1]
    flat = buffer.view(n, -1, length, d)
    mid = torch.arange(flat.shape[1], device=buffer.device)
    rows = values.reshape(values.shape[0], flat.shape[1], -1, d)
    flat.index_put_((slots[:, None, None], mid[None, :, None], positions[:, None, :]), rows)


class ChunkStep:
    """The batched chunk step over `SlotBuffers` and a `VoiceBank`; call it with `StepInputs`."""

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        geo: Geometry,
        buffers: SlotBuffers,
        bank: VoiceBank,
    ) -> None:
        self.flow, self.hift, self.geo = flow, hift, geo
        self.buffers, self.bank = buffers, bank
        weight = flow.input_embedding.weight
        device, dtype = weight.device, weight.dtype
        enc = flow.encoder
        self.cfg_rate = flow.decoder.cfg_rate
        with torch.inference_mode():
            # The relative-position projections of every position a cache can hold: constant.
            self.positions = [
                self._positions(layer, geo.new_tokens, geo.token_cache, weight)
                for layer in enc.encoders
            ] + [
                self._positions(layer, geo.frames, geo.frame_cache, weight)
                for layer in enc.up_encoders
            ]
            self.schedule = [
                (t.to(device, dtype), dt.to(device, dtype)) for t, dt in time_schedule()
            ]
            # Noise by position, for every position a slot can reach (the same for all streams).
            frames = geo.up * geo.context_tokens + geo.frames
            self.flow_noise = flow.noise.slice(0, frames).T.contiguous().to(device)
            samples = geo.hop * (geo.up * geo.context_tokens + geo.vocode_frames)
            self.hift_noise = hift.noise.slice(0, samples).T.contiguous().to(device)

    @staticmethod
    def _positions(
        layer: ConformerLayer, queries: int, keys: int, like: torch.Tensor
    ) -> torch.Tensor:
        attn = layer.self_attn
        table = relative_position_table(-(queries - 1), keys - 1, attn.linear_pos.in_features, like)
        pos = attn.linear_pos(table).unflatten(-1, (attn.heads, attn.d_head))
        return pos.transpose(0, 1).contiguous()  # (heads, relative positions, d_head)

    def __call__(self, inp: StepInputs) -> StepOutputs:
        mu = self._encode(inp)
        mel = self._solve(mu, inp)
        return StepOutputs(mel, self._vocode(mel, inp))

    # -- the flow's encoder -----------------------------------------------------------------

    def _encode(self, inp: StepInputs) -> torch.Tensor:
        flow, geo, buf = self.flow, self.geo, self.buffers
        enc = flow.encoder
        slots, n = inp.slots, inp.new_tokens
        x = enc.embed(flow.input_embedding(inp.tokens))
        real = torch.where(inp.last, n, n + geo.lookahead)  # a last chunk's lookahead is zeros
        column = torch.arange(geo.token_slots, device=x.device)
        x = torch.where((column[None] < real[:, None])[..., None], x, 0.0)
        pre = enc.pre_lookahead_layer
        ahead = F.leaky_relu(pre.conv1(x.transpose(1, 2)))
        y = torch.cat([buf.lookahead[slots], ahead], dim=2)
        h = pre.conv2(y).transpose(1, 2) + x[:, : geo.new_tokens]
        buf.lookahead.index_copy_(0, slots, take(y, n, 2, dim=2))
        for i, layer in enumerate(enc.encoders):
            h = self._conformer(layer, i, h, slots, inp.cached_tokens, n)
        up = enc.up_layer
        stride = up.stride
        repeated = h.transpose(1, 2)[..., None].expand(-1, -1, -1, stride).flatten(2)
        y = torch.cat([buf.upsample[slots], repeated], dim=2)
        h = up.conv(y)
        buf.upsample.index_copy_(0, slots, take(y, stride * n, 2 * stride, dim=2))
        h = enc.up_embed(h.transpose(1, 2))
        for i, layer in enumerate(enc.up_encoders, start=len(enc.encoders)):
            h = self._conformer(layer, i, h, slots, stride * inp.cached_tokens, stride * n)
        return flow.encoder_proj(enc.after_norm(h))

    def _conformer(
        self,
        layer: ConformerLayer,
        index: int,
        x: torch.Tensor,
        slots: torch.Tensor,
        cached: torch.Tensor,
        new: torch.Tensor,
    ) -> torch.Tensor:
        """`ConformerLayer` on the rows' new positions against their slot's cache (which it
        extends): the arithmetic of `RelPositionAttention` at a fixed key length."""
        attn = layer.self_attn
        k_cache, v_cache = self.buffers.enc_k[index], self.buffers.enc_v[index]
        queries, keys = x.shape[1], k_cache.shape[2]
        h = layer.norm_mha(x)
        q = attn._split(attn.linear_q(h))
        where = cached[:, None] + torch.arange(queries, device=x.device)  # (B, queries)
        write_at(k_cache, slots, where, attn._split(attn.linear_k(h)))
        write_at(v_cache, slots, where, attn._split(attn.linear_v(h)))
        k, v = k_cache[slots], v_cache[slots]
        pos = self.positions[index]
        content = torch.matmul(q + attn.pos_bias_u[:, None], k.transpose(-2, -1))
        by_rel = torch.matmul(q + attn.pos_bias_v[:, None], pos.transpose(-2, -1))
        key = torch.arange(keys, device=x.device)
        rel = where[:, :, None] - key  # query position - key position
        row = (rel + queries - 1).clamp(0, pos.shape[1] - 1)  # the table starts at -(q - 1)
        position = torch.gather(by_rel, -1, row[:, None].expand(-1, attn.heads, -1, -1))
        scores = (content + position) / math.sqrt(attn.d_head)
        visible = key[None] < (cached + new)[:, None]
        scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + attn.linear_out(out.transpose(1, 2).flatten(2))
        return x + layer.feed_forward(layer.norm_ff(x))

    # -- the flow's ODE ---------------------------------------------------------------------

    def _solve(self, mu: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """`CausalConditionalCFM.solve` for a chunk, rows (stream, conditional/unconditional)."""
        geo, buf, bank = self.geo, self.buffers, self.bank
        batch, frames, mel = mu.shape
        device = mu.device
        slots = inp.slots
        column = torch.arange(frames, device=device)
        noise = self.flow_noise[inp.noise_frame[:, None] + column].to(mu)
        zeros = torch.zeros_like(mu)
        spk = buf.spk[slots][:, :, None].expand(-1, -1, frames, -1)
        fixed = torch.cat([torch.stack([mu, zeros], 1), spk, torch.stack([zeros, zeros], 1)], dim=3)
        new_frames = geo.up * inp.new_tokens
        lengths = new_frames[:, None].expand(-1, 2).flatten()  # per (stream, cond/uncond) row
        mask = (
            self._dit_mask(inp, new_frames)[:, None].expand(-1, 2, -1).flatten(0, 1)[:, None, None]
        )
        ring_at = (inp.generated[:, None] + column) % geo.ring
        estimator = self.flow.decoder.estimator
        x = noise
        for step, (t, dt) in enumerate(self.schedule):
            inputs = torch.cat([x[:, None].expand(-1, 2, -1, -1), fixed], dim=3).flatten(0, 1)
            past = [
                [
                    (
                        bank.k[step][i][inp.voice].flatten(0, 1),
                        bank.v[step][i][inp.voice].flatten(0, 1),
                    ),
                    (
                        buf.ring_k[step][i][slots].flatten(0, 1),
                        buf.ring_v[step][i][slots].flatten(0, 1),
                    ),
                ]
                for i in range(len(estimator.blocks))
            ]
            conv = [
                (c[slots][:, 0].flatten(0, 1), c[slots][:, 1].flatten(0, 1)) for c in buf.conv[step]
            ]
            v, kv, history = estimator(inputs, t.expand(2 * batch), past, conv, mask, lengths)
            v = v.view(batch, 2, frames, mel)
            x = x + dt * ((1 + self.cfg_rate) * v[:, 0] - self.cfg_rate * v[:, 1])
            for i, ((k, val), (a, b)) in enumerate(zip(kv, history, strict=True)):
                write_at(buf.ring_k[step][i], slots, ring_at, k.unflatten(0, (batch, 2)))
                write_at(buf.ring_v[step][i], slots, ring_at, val.unflatten(0, (batch, 2)))
                both = torch.stack([a.unflatten(0, (batch, 2)), b.unflatten(0, (batch, 2))], 1)
                buf.conv[step][i].index_copy_(0, slots, both)
        return x

    def _dit_mask(self, inp: StepInputs, new_frames: torch.Tensor) -> torch.Tensor:
        """(B, prompt + ring + frames): the voice's prompt frames, the ring's latest `window`
        generated frames, and the chunk's real frames."""
        geo, device = self.geo, inp.slots.device
        prompt = torch.arange(geo.prompt_frames, device=device)[None]
        prompt = prompt < self.bank.frames[inp.voice][:, None]
        behind = (torch.arange(geo.ring, device=device)[None] - inp.generated[:, None]) % geo.ring
        recent = torch.clamp(inp.generated, max=geo.window)
        ring = behind >= (geo.ring - recent)[:, None]
        chunk = torch.arange(geo.frames, device=device)[None] < new_frames[:, None]
        return torch.cat([prompt, ring, chunk], dim=1)

    # -- HiFT -------------------------------------------------------------------------------

    def _vocode(self, mel: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """`HiftStream.push(final=False)` for rows whose chunk is not their stream's last."""
        geo, buf, hift = self.geo, self.buffers, self.hift
        slots, first = inp.slots, inp.first
        ctx, reach, chunk = geo.context, geo.reach, geo.chunk_frames
        device = mel.device

        def choose(if_first: int, otherwise: int) -> torch.Tensor:
            return torch.where(first, if_first, otherwise).to(device)

        new = mel[:, :chunk].transpose(1, 2).float()
        tail = buf.mel[slots]
        # [emitted - ctx, newest): a first chunk has no tail, its window is its own frames
        window = take(
            torch.cat([tail, new], dim=2), choose(geo.mel_tail, 0), geo.mel_tail + chunk, 2
        )
        f0_mel = take(window, choose(0, 2 * ctx - reach), chunk + 2 * reach, dim=2)
        f0 = take(hift.f0(f0_mel), choose(0, reach), chunk, dim=1)  # frames made final now
        increments = hift.phase_increments(f0)
        cycles = torch.cumsum(torch.cat([buf.total_cycles[slots][:, None], increments], 1), 1)
        cycles = cycles[:, 1:]
        total = take(cycles, choose(chunk - reach, chunk) - 1, 1, dim=1)[:, 0]
        f0 = take(torch.cat([buf.f0[slots], f0], 1), choose(2 * ctx, 0), geo.vocode_frames, 1)
        cycles = take(
            torch.cat([buf.cycles[slots], cycles], 1), choose(2 * ctx, 0), geo.vocode_frames, 1
        )
        samples = torch.arange(geo.vocode_frames * geo.hop, device=device)
        noise = self.hift_noise[inp.first_sample[:, None] + samples]
        source = hift.excitation(f0, cycles, noise)
        audio = hift.decode(window[:, :, : geo.vocode_frames], source)
        out = take(audio, choose(0, ctx * geo.hop), chunk * geo.hop, dim=1)
        # keep [emitted - ctx, ...) of what this chunk made final
        keep = choose(chunk - reach - 2 * ctx, chunk)
        on = inp.vocode
        updates = (
            (buf.mel, take(window, keep, geo.mel_tail, dim=2)),
            (buf.f0, take(f0, keep, geo.f0_tail, dim=1)),
            (buf.cycles, take(cycles, keep, geo.f0_tail, dim=1)),
            (buf.total_cycles, total),
        )
        for buffer, value in updates:
            old = buffer[slots]
            flag = on.view(-1, *[1] * (value.dim() - 1))
            buffer.index_copy_(0, slots, torch.where(flag, value, old))
        return out
