"""Piper text-to-speech on worker threads, one audio chunk per sentence.

Sentences are computed one at a time per lane, waiting ones in priority order: the next
sentence of a live answer (0) goes before queued REST synthesis (10), as in the engine. With a
batch lane (`batch_nice`), REST synthesis runs on its own thread of lower CPU priority, on the
same ONNX session (its `run` is thread-safe; eSpeak's phonemizer is not, so it is locked).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from voxgate.model.priority import Lanes
from voxgate.model.types import AudioChunk, Voice


class PiperTTS:
    def __init__(
        self,
        name: str,
        model_path: Path,
        config_path: Path,
        threads: int = 1,
        batch_nice: int | None = None,
    ) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        config = json.loads(config_path.read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._voice = PiperVoice(session=session, config=PiperConfig.from_dict(config))
        # One thread per lane: synthesis calls run one at a time there, and a sentence
        # generator is only ever touched by its lane's thread (closing it while it runs
        # elsewhere would fail).
        self._lanes = Lanes("tts", batch_nice)
        if self._lanes.separate:
            self._voice.phonemize = _serialised(self._voice.phonemize)
        self.voice = Voice(
            name=name,
            language=config.get("language", {}).get("code", "en_US"),
            sample_rate=self._voice.config.sample_rate,
        )

    def _sentences(self, text: str, speed: float) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        syn = SynthesisConfig(length_scale=self._voice.config.length_scale / speed)
        for chunk in self._voice.synthesize(text, syn_config=syn):
            yield chunk.audio_float_array.astype(np.float32, copy=False)

    async def synthesize(
        self, text: str, speed: float = 1.0, priority: int = 0
    ) -> AsyncIterator[AudioChunk]:
        """Yield one chunk per sentence; each is computed on the TTS thread, never on the loop."""
        sentences = self._sentences(text, speed)
        lane = self._lanes.lane(priority)
        try:
            while True:
                samples = await lane.run(priority, next, sentences, None)
                if samples is None:
                    return
                yield AudioChunk(samples, self.voice.sample_rate)
        finally:
            # Stopped early (barge-in): the rest is never computed. Closing runs on the TTS
            # thread after the sentence in progress (first among waiting jobs: it frees the
            # generator); nobody needs to wait for it.
            with contextlib.suppress(RuntimeError):  # the executor is shut down
                lane.submit(-1, sentences.close)

    def close(self) -> None:
        self._lanes.shutdown()


def _serialised(phonemize):
    """`phonemize` one call at a time: eSpeak keeps its state in globals."""
    lock = threading.Lock()

    @functools.wraps(phonemize)
    def locked(text: str) -> list[list[str]]:
        with lock:
            return phonemize(text)

    return locked
