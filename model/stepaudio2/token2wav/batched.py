"""`BatchedVocoder`: the chunks of many live streams, each at its own position, in one step.

A `BatchedStream` is one utterance: tokens in, cut into chunks exactly as `Token2WavStream`
cuts them. `BatchedVocoder.step(streams)` advances each given stream by its next chunk:
streams holding a slot run together in one forward (`ChunkStep`), padded to a power of two;
on CUDA, `capture()` records that forward once per padded size as a CUDA graph, and a step is
a copy of the rows' positions and a replay. A stream takes a slot at its first chunk and gives
it back after its last. One that cannot have a slot (all taken, its voice prompt does not fit
the bank, or it outgrows `context_tokens`) runs alone on the per-stream path
(`flow.chunk` + `HiftStream`), from where it stands.

Output: each stream gets what `Token2Wav.stream()` gives for the same tokens, up to float
rounding (the batch attends over padded, masked caches); a stream's audio does not depend on
which other streams share its steps (bit for bit on the CPU). The tests hold both.
Not thread-safe: one thread steps it (`VocoderScheduler` owns that thread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batch_state import Geometry, SlotBuffers, StepShapes, VoiceBank
from .batch_step import ChunkStep, StepInputs, StepOutputs
from .flow import FlowState
from .streaming import HiftStream, StreamClosed, check_tokens
from .vocoder import Token2Wav
from .voice import Voice


class BatchedStream:
    """One utterance in one voice. Host state only: the vocoder's `step` advances it."""

    def __init__(
        self, voice: Voice, vocab_size: int, chunk_tokens: int, lookahead: int, priority: int
    ) -> None:
        self.voice = voice
        self.priority = priority
        """Lower runs first when more streams are ready than a step takes (the engine's order)."""
        self.tokens = 0
        """Tokens pushed so far."""
        self._vocab = vocab_size
        self._chunk, self._lookahead = chunk_tokens, lookahead
        self._pending: list[int] = []
        self._finished = False
        # Where the stream stands: in a slot, alone, or not started.
        self.slot: int | None = None
        self.voice_index: int | None = None
        self.alone: tuple[FlowState, HiftStream] | None = None
        self.cached_tokens = 0
        self.noise_frame = 0
        self.generated = 0
        self.vocoded = 0
        """Chunks whose audio the batched HiFT made (all but a final one)."""

    def push(self, tokens: Sequence[int]) -> None:
        if self._finished:
            raise StreamClosed("push after finish")
        self._pending += check_tokens(tokens, self._vocab)
        self.tokens += len(tokens)

    def finish(self) -> None:
        if self._finished:
            raise StreamClosed("finish twice")
        self._finished = True

    @property
    def ready(self) -> bool:
        """A chunk can run: chunk + lookahead tokens are there, or the rest after `finish`."""
        full = len(self._pending) >= self._chunk + self._lookahead
        return full or (self._finished and bool(self._pending))

    @property
    def done(self) -> bool:
        """Finished and every chunk has run."""
        return self._finished and not self._pending

    def next_chunk(self) -> tuple[list[int], bool]:
        """(tokens with their lookahead, whether it is the last chunk)."""
        if len(self._pending) >= self._chunk + self._lookahead:
            return self._pending[: self._chunk + self._lookahead], False
        if not (self._finished and self._pending):
            raise RuntimeError("no chunk is ready")
        return list(self._pending), True

    def _advance(self, last: bool) -> None:
        del self._pending[: len(self._pending) if last else self._chunk]


class BatchedVocoder:
    def __init__(self, t2w: Token2Wav, shapes: StepShapes | None = None) -> None:
        if t2w.dit_window is None:
            raise ValueError("the batched step needs a bounded DiT window (dit_window)")
        self.t2w = t2w
        self.shapes = shapes = shapes or StepShapes()
        flow, hift = t2w.flow, t2w.hift
        prompt_frames = shapes.prompt_frames or max(
            (flow.up * len(t2w.voice(name).prompt_tokens) for name in t2w.voices()), default=0
        )
        if not prompt_frames:
            raise ValueError("the model has no voices: set StepShapes.prompt_frames")
        self.geo = Geometry.of(flow, hift, shapes, t2w.chunk_tokens, t2w.dit_window, prompt_frames)
        self.device = flow.input_embedding.weight.device
        with torch.inference_mode():
            self.buffers = SlotBuffers(flow, hift, self.geo, self.device)
            self.bank = VoiceBank(flow, self.geo, shapes.voices, self.device)
            self.forward = ChunkStep(flow, hift, self.geo, self.buffers, self.bank)
        self._free = list(reversed(range(shapes.slots)))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, StepInputs, StepOutputs]] = {}

    def stream(self, voice: Voice, priority: int = 0) -> BatchedStream:
        return BatchedStream(
            voice,
            self.t2w.flow.cfg.vocab_size,
            self.geo.chunk_tokens,
            self.geo.lookahead,
            priority,
        )

    @property
    def captured(self) -> tuple[int, ...]:
        """Batch sizes that replay a CUDA graph."""
        return tuple(sorted(self._graphs))

    # -- stepping -------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, streams: Sequence[BatchedStream]) -> list[np.ndarray]:
        """Advance each stream by its next chunk (each must be `ready`, each listed once):
        those with a slot in one forward per `max_batch`, others alone. Returns each stream's
        new audio (float32, 24 kHz), in order; a stream that is `done` has left its slot."""
        if len({id(s) for s in streams}) != len(streams) or not all(s.ready for s in streams):
            raise ValueError("step takes distinct streams that each have a chunk ready")
        batch: list[int] = []
        audio: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(streams)
        for i, stream in enumerate(streams):
            if stream.slot is None and stream.alone is None:
                self._join(stream)
            if stream.slot is not None and not self._fits(stream):
                self._go_alone(stream)
            if stream.slot is None:
                audio[i] = self._step_alone(stream)
            else:
                batch.append(i)
        size = self.shapes.max_batch
        for start in range(0, len(batch), size):
            rows = batch[start : start + size]
            for i, wave in zip(rows, self._step_batch([streams[i] for i in rows]), strict=True):
                audio[i] = wave
        return audio

    def close(self, stream: BatchedStream) -> None:
        """Give back a stream's slot (at its end, or when it is abandoned midway)."""
        if stream.slot is not None:
            self._free.append(stream.slot)
            stream.slot = None
        if stream.voice_index is not None:
            self.bank.release(stream.voice_index)
            stream.voice_index = None

    def _join(self, stream: BatchedStream) -> None:
        state = self.t2w.prompt_state(stream.voice)
        room = self._free and state.encoder.tokens < self.geo.context_tokens
        index = self.bank.acquire(stream.voice, state) if room else None
        if index is None:
            stream.alone = (state, HiftStream(self.t2w.hift))
            return
        stream.slot, stream.voice_index = self._free.pop(), index
        self.buffers.load(stream.slot, state)
        stream.cached_tokens = state.encoder.tokens
        stream.noise_frame = state.frames
        stream.generated = stream.vocoded = 0

    def _fits(self, stream: BatchedStream) -> bool:
        tokens, last = stream.next_chunk()
        new = len(tokens) if last else self.geo.chunk_tokens
        return stream.cached_tokens + new <= self.geo.context_tokens

    def _hift_positions(self, stream: BatchedStream) -> tuple[int, int]:
        """(f0_done, emitted) of a stream's HiFT after its batched chunks."""
        f0_done = stream.vocoded * self.geo.chunk_frames - self.geo.reach
        return f0_done, f0_done - self.geo.context

    def _hift_stream(self, stream: BatchedStream) -> HiftStream:
        if stream.vocoded == 0:
            return HiftStream(self.t2w.hift)
        assert stream.slot is not None
        return self.buffers.hift_stream(stream.slot, self.t2w.hift, *self._hift_positions(stream))

    def _go_alone(self, stream: BatchedStream) -> None:
        assert stream.slot is not None
        state = self.buffers.flow_state(
            stream.slot,
            self.t2w.prompt_state(stream.voice),
            stream.cached_tokens,
            stream.noise_frame,
            stream.generated,
        )
        stream.alone = (state, self._hift_stream(stream))
        self.close(stream)

    def _step_alone(self, stream: BatchedStream) -> np.ndarray:
        assert stream.alone is not None
        state, hift = stream.alone
        tokens, last = stream.next_chunk()
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        mel, state = self.t2w.flow.chunk(state, ids, last, self.t2w.dit_window)
        audio = hift.push(mel.T[None].float(), final=last)
        stream.alone = (state, hift)
        stream._advance(last)
        return audio.cpu().numpy().astype(np.float32, copy=False)

    def _step_batch(self, streams: list[BatchedStream]) -> list[np.ndarray]:
        geo = self.geo
        size = self.shapes.batch_size(len(streams))
        chunks = [s.next_chunk() for s in streams]
        inputs = self._inputs(size, streams, chunks)
        out = self._run(size, inputs)
        audio = out.audio[: len(streams)].cpu().numpy()
        waves = []
        for b, (stream, (tokens, last)) in enumerate(zip(streams, chunks, strict=True)):
            new = len(tokens) if last else geo.chunk_tokens
            if last:  # HiFT to the utterance's very end: alone, at its own length
                mel = out.mel[b, : geo.up * new].T[None].float()
                wave = self._hift_stream(stream).push(mel, final=True).cpu().numpy()
            else:
                frames = geo.first_frames if stream.vocoded == 0 else geo.chunk_frames
                wave = audio[b, : frames * geo.hop]
                stream.vocoded += 1
            waves.append(wave.astype(np.float32, copy=False))
            stream.cached_tokens += new
            stream.noise_frame += geo.up * new
            stream.generated += geo.up * new
            stream._advance(last)
            if stream.done:
                self.close(stream)
        return waves

    def _inputs(
        self, size: int, streams: list[BatchedStream], chunks: list[tuple[list[int], bool]]
    ) -> StepInputs:
        """The rows on the host; rows past the streams are padding on the scratch slot."""
        geo = self.geo
        tokens = torch.zeros(size, geo.token_slots, dtype=torch.long)
        columns: dict[str, list[int]] = {
            name: [0] * size
            for name in ("slots", "new_tokens", "cached", "noise", "generated", "voice", "sample")
        }
        columns["slots"] = [self.buffers.scratch] * size
        columns["new_tokens"] = [1] * size
        last, vocode, first = [False] * size, [False] * size, [True] * size
        for b, (stream, (ids, is_last)) in enumerate(zip(streams, chunks, strict=True)):
            assert stream.slot is not None and stream.voice_index is not None
            tokens[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            columns["slots"][b] = stream.slot
            columns["new_tokens"][b] = len(ids) if is_last else geo.chunk_tokens
            columns["cached"][b] = stream.cached_tokens
            columns["noise"][b] = stream.noise_frame
            columns["generated"][b] = stream.generated
            columns["voice"][b] = stream.voice_index
            last[b], vocode[b], first[b] = is_last, not is_last, stream.vocoded == 0
            if stream.vocoded:
                columns["sample"][b] = (self._hift_positions(stream)[1] - geo.context) * geo.hop

        def long(name: str) -> torch.Tensor:
            return torch.tensor(columns[name], dtype=torch.long)

        return StepInputs(
            slots=long("slots"),
            tokens=tokens,
            new_tokens=long("new_tokens"),
            last=torch.tensor(last),
            cached_tokens=long("cached"),
            noise_frame=long("noise"),
            generated=long("generated"),
            voice=long("voice"),
            vocode=torch.tensor(vocode),
            first=torch.tensor(first),
            first_sample=long("sample"),
        )

    def _run(self, size: int, inputs: StepInputs) -> StepOutputs:
        if size in self._graphs:
            graph, static_inputs, outputs = self._graphs[size]
            static_inputs.copy_(inputs)
            graph.replay()
            return outputs
        return self.forward(_to(inputs, self.device))

    # -- CUDA graphs ----------------------------------------------------------------------------

    @torch.inference_mode()
    def capture(self) -> bool:
        """Record the step as a CUDA graph for every padded batch size (CUDA only; elsewhere
        steps stay eager and this returns False). Graphs share one memory pool: they never
        run at the same time."""
        if self.device.type != "cuda" or self._graphs:
            return bool(self._graphs)
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.shapes.batch_sizes()):  # the largest sizes the pool
            inputs = _to(self._inputs(size, [], []), self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up: cuBLAS/cuFFT plans, allocator
                for _ in range(2):
                    self.forward(inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = self.forward(inputs)
            self._graphs[size] = (graph, inputs, outputs)
        torch.cuda.synchronize()
        return True


def _to(inputs: StepInputs, device: torch.device) -> StepInputs:
    return StepInputs(
        **{name: getattr(inputs, name).to(device) for name in StepInputs.__dataclass_fields__}
    )
