"""The batched chunk step's static sizes and its preallocated state: one slot per live stream.

A CUDA graph replays fixed shapes at fixed addresses, so everything the step reads or writes
lives here, allocated once: per slot (stream) the conformer's key/value caches at full
capacity, the DiT's recent-frame keys/values as a ring, every causal conv's last frames, and
HiFT's tail (mel, F0, running phase); per voice the speaker prompt's DiT keys/values
(`VoiceBank`, shared by all streams of that voice). What is valid in a buffer is given by the
lengths the step receives; the rest is stale but finite and masked out.

`SlotBuffers.load` starts a slot from a voice's prompt state (`flow.setup`); `flow_state` and
`hift_stream` read a slot back into the per-stream (`Token2WavStream`) types, for a stream
that has to go on alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conformer import EncoderCache
from .dit import KV, ConvHistory
from .flow import N_TIMESTEPS, CausalMaskedDiffWithXvec, DiTCache, FlowState
from .hift import HiFTGenerator
from .streaming import HiftStream
from .voice import Voice


@dataclass(frozen=True, slots=True)
class StepShapes:
    """Capacities of the batched step: what is preallocated and what a graph is captured for."""

    max_batch: int = 64
    """Streams advanced in one forward. Fewer are padded to the next power of two (one graph
    per such size), so a few streams do not pay for 64."""
    slots: int = 64
    """Live streams whose caches stay on the device. A stream beyond that runs alone."""
    context_tokens: int = 2048
    """Encoder cache per stream: voice prompt + utterance tokens (2048: ~80 s at 25/s). A
    stream that outgrows it goes on alone."""
    prompt_frames: int = 0
    """A voice prompt's frames in the DiT cache (2 per prompt token); 0: the longest voice of
    the model. Every chunk attends over all of them (padding masked), so keep it tight."""
    voices: int = 4
    """Voice prompts held on the device at once (each ~0.33 MB per prompt frame, full size)."""

    padded_sizes: tuple[int, ...] = ()
    """The batch sizes a step runs at (one CUDA graph each), ascending, the last `max_batch`;
    empty: 1, 2, 4, ... up to `max_batch`. A stream's audio does not depend on the other rows
    of its batch, but kernels may round differently at another size (oneDNN's convs do)."""

    def __post_init__(self) -> None:
        sizes = self.padded_sizes
        if sizes and (
            list(sizes) != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != self.max_batch
        ):
            raise ValueError("padded_sizes must ascend, from 1 or more, to max_batch")

    def batch_sizes(self) -> tuple[int, ...]:
        if self.padded_sizes:
            return self.padded_sizes
        sizes = [1]
        while sizes[-1] * 2 < self.max_batch:
            sizes.append(sizes[-1] * 2)
        return (*sizes, self.max_batch) if self.max_batch > 1 else (1,)

    def batch_size(self, streams: int) -> int:
        """The padded size a batch of `streams` runs at."""
        return next(size for size in self.batch_sizes() if size >= streams)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Every length of the step, derived once from the model, the shapes and the chunking."""

    slots: int
    chunk_tokens: int
    lookahead: int
    up: int
    new_tokens: int
    """Tokens a chunk may carry: a final chunk takes up to chunk + lookahead - 1."""
    token_cache: int
    frame_cache: int
    window: int
    ring: int
    prompt_frames: int
    context_tokens: int
    # HiFT
    context: int
    reach: int
    hop: int

    @property
    def token_slots(self) -> int:
        return self.new_tokens + self.lookahead

    @property
    def frames(self) -> int:
        """Mel frames a chunk may produce (padded size of the flow's output)."""
        return self.up * self.new_tokens

    @property
    def chunk_frames(self) -> int:
        return self.up * self.chunk_tokens

    @property
    def mel_tail(self) -> int:
        """Mel frames HiFT keeps between chunks: from `emitted - context` to the newest."""
        return 2 * self.context + self.reach

    @property
    def f0_tail(self) -> int:
        """Frames of F0 and phase kept: from `emitted - context` to the last final one."""
        return 2 * self.context

    @property
    def vocode_frames(self) -> int:
        """HiFT's window per chunk: context, the chunk's frames, context."""
        return 2 * self.context + self.chunk_frames

    @property
    def first_frames(self) -> int:
        """Frames a stream's first chunk returns (the rest waits for the next chunk)."""
        return self.chunk_frames - self.reach - self.context

    @classmethod
    def of(
        cls,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        shapes: StepShapes,
        chunk_tokens: int,
        window: int,
        prompt_frames: int,
    ) -> Geometry:
        lookahead, up = flow.lookahead, flow.up
        new_tokens = chunk_tokens + lookahead - 1
        geo = cls(
            slots=shapes.slots,
            chunk_tokens=chunk_tokens,
            lookahead=lookahead,
            up=up,
            new_tokens=new_tokens,
            token_cache=shapes.context_tokens + new_tokens,
            frame_cache=up * (shapes.context_tokens + new_tokens),
            window=window,
            ring=window + up * new_tokens,
            prompt_frames=prompt_frames,
            context_tokens=shapes.context_tokens,
            context=hift.cfg.context_frames(),
            reach=hift.cfg.f0_layers,
            hop=hift.cfg.hop,
        )
        if geo.first_frames <= 0:
            raise ValueError(f"chunks of {chunk_tokens} tokens are shorter than HiFT's context")
        return geo


class VoiceBank:
    """Speaker prompts on the device: per ODE step and DiT block, the prompt's keys/values,
    padded to `prompt_frames`. A voice keeps its index while streams use it."""

    def __init__(
        self, flow: CausalMaskedDiffWithXvec, geo: Geometry, voices: int, device: torch.device
    ) -> None:
        dit = flow.cfg.estimator
        dtype = flow.input_embedding.weight.dtype
        shape = (voices, 2, dit.num_heads, geo.prompt_frames, dit.head_dim)

        def zeros() -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.k = [[zeros() for _ in range(dit.depth)] for _ in range(N_TIMESTEPS)]
        self.v = [[zeros() for _ in range(dit.depth)] for _ in range(N_TIMESTEPS)]
        self.frames = torch.zeros(voices, dtype=torch.long, device=device)
        self._voices: list[Voice | None] = [None] * voices
        self._users = [0] * voices

    def acquire(self, voice: Voice, state: FlowState) -> int | None:
        """The voice's index (loading its prompt if it is new), or None when its prompt is
        longer than the bank holds or every index is in use by another voice."""
        if voice in self._voices:
            index = self._voices.index(voice)
        else:
            frames = state.dit.prompt[0][0][0].shape[2]
            free = [i for i, users in enumerate(self._users) if users == 0]
            if frames > self.frames_capacity or not free:
                return None
            # an empty index before one whose idle voice may be asked for again
            index = min(free, key=lambda i: self._voices[i] is not None)
            for step, blocks in enumerate(state.dit.prompt):
                for block, (k, v) in enumerate(blocks):
                    self.k[step][block][index, :, :, :frames] = k
                    self.v[step][block][index, :, :, :frames] = v
            self.frames[index] = frames
            self._voices[index] = voice
        self._users[index] += 1
        return index

    def release(self, index: int) -> None:
        self._users[index] -= 1

    @property
    def frames_capacity(self) -> int:
        return self.k[0][0].shape[3]


class SlotBuffers:
    """Per-slot caches of the step; the last slot is scratch, written by padded rows."""

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        geo: Geometry,
        device: torch.device,
    ) -> None:
        enc, dit = flow.cfg.encoder, flow.cfg.estimator
        dtype = flow.input_embedding.weight.dtype
        n = geo.slots + 1
        self.scratch = geo.slots

        def zeros(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        heads, d_head = enc.attention_heads, enc.output_size // enc.attention_heads
        caches = [geo.token_cache] * enc.num_blocks + [geo.frame_cache] * enc.num_up_blocks
        self.enc_k = [zeros(n, heads, length, d_head) for length in caches]
        self.enc_v = [zeros(n, heads, length, d_head) for length in caches]
        self.lookahead = zeros(n, enc.output_size, 2)
        self.upsample = zeros(n, enc.output_size, 2 * enc.up_stride)
        ring = (n, 2, dit.num_heads, geo.ring, dit.head_dim)  # rows: conditional, unconditional
        self.ring_k = [[zeros(*ring) for _ in range(dit.depth)] for _ in range(N_TIMESTEPS)]
        self.ring_v = [[zeros(*ring) for _ in range(dit.depth)] for _ in range(N_TIMESTEPS)]
        conv = (n, 2, 2, dit.hidden_size, 2)  # (the block's two convs, rows, channels, frames)
        self.conv = [[zeros(*conv) for _ in range(dit.depth)] for _ in range(N_TIMESTEPS)]
        self.spk = zeros(n, 2, flow.cfg.output_size)
        harmonics = hift.cfg.nb_harmonics + 1
        self.mel = zeros(n, hift.cfg.in_channels, geo.mel_tail, dtype=torch.float32)
        self.f0 = zeros(n, geo.f0_tail, dtype=torch.float32)
        self.cycles = zeros(n, geo.f0_tail, harmonics, dtype=torch.float64)
        self.total_cycles = zeros(n, harmonics, dtype=torch.float64)
        self.window = geo.window
        self.up = enc.up_stride
        self.token_layers = enc.num_blocks

    def load(self, slot: int, state: FlowState) -> None:
        """Start `slot` from a voice's prompt state (what `flow.setup` returns)."""
        for k_buf, v_buf, (k, v) in zip(self.enc_k, self.enc_v, state.encoder.kv, strict=True):
            k_buf[slot, :, : k.shape[2]] = k[0]
            v_buf[slot, :, : v.shape[2]] = v[0]
        self.lookahead[slot] = state.encoder.lookahead[0]
        self.upsample[slot] = state.encoder.upsample[0]
        for step, blocks in enumerate(state.dit.conv):
            for block, (a, b) in enumerate(blocks):
                self.conv[step][block][slot] = torch.stack([a, b])
        self.spk[slot] = state.spk
        self.total_cycles[slot] = 0

    def flow_state(
        self, slot: int, voice: FlowState, tokens: int, frames: int, generated: int
    ) -> FlowState:
        """Slot `slot` as a stream's own `FlowState` (copies): `tokens` encoded, `frames` the
        next noise position, `generated` mel frames made after the prompt."""
        lengths = [tokens] * self.token_layers
        lengths += [self.up * tokens] * (len(self.enc_k) - self.token_layers)
        enc_kv = tuple(
            (k[slot, :, :length][None].clone(), v[slot, :, :length][None].clone())
            for k, v, length in zip(self.enc_k, self.enc_v, lengths, strict=True)
        )
        encoder = EncoderCache(
            tokens, self.lookahead[slot][None].clone(), self.upsample[slot][None].clone(), enc_kv
        )
        recent_count = min(generated, self.window)
        ring = self.ring_k[0][0].shape[3]
        order = (generated - recent_count + torch.arange(recent_count)) % ring
        order = order.to(self.lookahead.device)
        recent: tuple[tuple[KV, ...], ...] = tuple(
            tuple(
                (k[slot][:, :, order].clone(), v[slot][:, :, order].clone())
                for k, v in zip(ks, vs, strict=True)
            )
            for ks, vs in zip(self.ring_k, self.ring_v, strict=True)
        )
        conv: tuple[tuple[ConvHistory, ...], ...] = tuple(
            tuple((c[slot, 0].clone(), c[slot, 1].clone()) for c in blocks) for blocks in self.conv
        )
        return FlowState(voice.spk, frames, encoder, DiTCache(voice.dit.prompt, recent, conv))

    def hift_stream(self, slot: int, hift: HiFTGenerator, f0_done: int, emitted: int) -> HiftStream:
        """Slot `slot`'s HiFT tail as a `HiftStream` that has returned `emitted` frames."""
        return HiftStream.resume(
            hift,
            self.mel[slot][None].clone(),
            self.f0[slot][None].clone(),
            self.cycles[slot][None].clone(),
            f0_done,
            emitted,
        )
