"""Piper text-to-speech on a worker thread, one audio chunk per sentence.

Sentences are computed one at a time, waiting ones in priority order: the next sentence of a
live answer (0) goes before queued REST synthesis (10), as in the engine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from voxgate.model.priority import PriorityExecutor
from voxgate.model.types import AudioChunk, Voice


class PiperTTS:
    def __init__(self, name: str, model_path: Path, config_path: Path, threads: int = 1) -> None:
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
        # One thread: synthesis calls run one at a time, and a sentence generator is only
        # ever touched by this thread (closing it while it runs elsewhere would fail).
        self._executor = PriorityExecutor("tts")
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
        try:
            while True:
                samples = await self._executor.run(priority, next, sentences, None)
                if samples is None:
                    return
                yield AudioChunk(samples, self.voice.sample_rate)
        finally:
            # Stopped early (barge-in): the rest is never computed. Closing runs on the TTS
            # thread after the sentence in progress (first among waiting jobs: it frees the
            # generator); nobody needs to wait for it.
            with contextlib.suppress(RuntimeError):  # the executor is shut down
                self._executor.submit(-1, sentences.close)

    def close(self) -> None:
        self._executor.shutdown()
