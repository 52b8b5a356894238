"""`VocoderScheduler`: one thread that steps, together, every live stream with a chunk ready.

Callers (one per utterance, on any thread or event loop) push tokens and get a future of the
audio those tokens completed. A push that completes no chunk resolves at once with no audio;
one that completes chunks waits for the steps that run them. The thread takes the ready
streams in priority order (lower first, then first come), at most `max_batch` of them, runs
them as one `BatchedVocoder.step`, and takes again: streams that became ready while a step
ran form the next batch, so the batch grows with the load and no one waits for a batch to
fill. A stream with several chunks ready (a burst of tokens) runs one chunk per step and
goes to the back of its priority after each.

Rules: one outstanding push/finish per stream (as a live answer feeds its vocoder); a
cancelled future abandons its stream (its slot is given back, further pushes fail), which is
how a cancelled response stops its vocoder.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from .batched import BatchedStream, BatchedVocoder
from .streaming import StreamClosed
from .voice import Voice


@dataclass(eq=False)
class _Entry:
    stream: BatchedStream
    future: Future[np.ndarray] | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    order: int = 0
    abandoned: bool = False


class ScheduledStream:
    """One utterance fed to a `VocoderScheduler`. `with` it: leaving abandons it if unfinished."""

    def __init__(self, scheduler: VocoderScheduler, entry: _Entry) -> None:
        self._scheduler = scheduler
        self._entry = entry

    def push(self, tokens: Sequence[int]) -> Future[np.ndarray]:
        """Add tokens; the future holds the audio (float32, 24 kHz) they completed, maybe none."""
        return self._scheduler._submit(self._entry, tokens, finish=False)

    def finish(self) -> Future[np.ndarray]:
        """The rest of the utterance's audio; the stream is closed afterwards."""
        return self._scheduler._submit(self._entry, (), finish=True)

    async def apush(self, tokens: Sequence[int]) -> np.ndarray:
        return await asyncio.wrap_future(self.push(tokens))

    async def afinish(self) -> np.ndarray:
        return await asyncio.wrap_future(self.finish())

    def close(self) -> None:
        """Abandon the stream (a no-op once it has finished)."""
        self._scheduler._abandon(self._entry)

    def __enter__(self) -> ScheduledStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class VocoderScheduler:
    def __init__(self, vocoder: BatchedVocoder, name: str = "token2wav") -> None:
        self.vocoder = vocoder
        self.max_batch = vocoder.shapes.max_batch
        self._ready: list[_Entry] = []
        self._leaving: list[BatchedStream] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        """Forwards run so far (for tests and metrics)."""
        self.batch_sizes: list[int] = []
        """Streams per step, the latest 1000."""
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def open(self, voice: Voice, priority: int = 0) -> ScheduledStream:
        """A stream in `voice`; `priority` as the engine's (lower is served first)."""
        return ScheduledStream(self, _Entry(self.vocoder.stream(voice, priority)))

    def shutdown(self) -> None:
        """Stop: waiting futures are cancelled, a step in progress finishes."""
        with self._cond:
            self._closed = True
            for entry in self._ready:
                if entry.future is not None:
                    entry.future.cancel()
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()

    # -- callers' side --------------------------------------------------------------------------

    def _submit(self, entry: _Entry, tokens: Sequence[int], finish: bool) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the vocoder scheduler is shut down")
            if entry.abandoned:
                raise StreamClosed("the stream was abandoned")
            if entry.future is not None:
                raise RuntimeError("one push or finish at a time per stream")
            if finish:
                entry.stream.finish()
            else:
                entry.stream.push(tokens)
            if not entry.stream.ready:
                future.set_result(np.zeros(0, dtype=np.float32))
                return future
            entry.future = future
            self._enqueue(entry)
        future.add_done_callback(lambda f: f.cancelled() and self._abandon(entry))
        return future

    def _abandon(self, entry: _Entry) -> None:
        with self._cond:
            if entry.abandoned or entry.stream.done:
                return
            entry.abandoned = True
            if entry in self._ready:
                self._ready.remove(entry)
                self._leaving.append(entry.stream)
                self._cond.notify()
            elif entry.future is None:  # idle between pushes; in a step, the worker sees it
                self._leaving.append(entry.stream)
                self._cond.notify()

    def _enqueue(self, entry: _Entry) -> None:
        entry.order = next(self._order)
        self._ready.append(entry)
        self._cond.notify()

    # -- the thread -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._leaving and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                leaving, self._leaving = self._leaving, []
                self._ready.sort(key=lambda e: (e.stream.priority, e.order))
                batch = self._ready[: self.max_batch]
                del self._ready[: self.max_batch]
            for stream in leaving:
                self.vocoder.close(stream)
            if batch:
                self._step(batch)

    def _step(self, batch: list[_Entry]) -> None:
        try:
            waves = self.vocoder.step([entry.stream for entry in batch])
        except BaseException as error:  # handed to each waiter, which re-raises it
            with self._cond:
                for entry in batch:
                    entry.abandoned = True
                    self.vocoder.close(entry.stream)
                    _settle(entry, error=error)
            return
        self.steps += 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
        with self._cond:
            for entry, wave in zip(batch, waves, strict=True):
                entry.audio.append(wave)
                if entry.abandoned:
                    self.vocoder.close(entry.stream)
                elif entry.stream.ready:
                    self._enqueue(entry)
                else:
                    _settle(entry)


def _settle(entry: _Entry, error: BaseException | None = None) -> None:
    future, entry.future = entry.future, None
    audio = np.concatenate(entry.audio) if entry.audio else np.zeros(0, dtype=np.float32)
    entry.audio = []
    if future is None:
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(audio)
    except InvalidStateError:  # cancelled meanwhile: the stream is being abandoned
        pass
