"""Piper text-to-speech on a worker thread, one audio chunk per sentence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
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

    async def synthesize(self, text: str, speed: float = 1.0) -> AsyncIterator[AudioChunk]:
        """Yield one chunk per sentence; each is computed on the TTS thread, never on the loop."""
        loop = asyncio.get_running_loop()
        sentences = self._sentences(text, speed)
        try:
            while True:
                samples = await loop.run_in_executor(self._executor, next, sentences, None)
                if samples is None:
                    return
                yield AudioChunk(samples, self.voice.sample_rate)
        finally:
            # Stopped early (barge-in): the rest is never computed. Closing runs on the TTS
            # thread after the sentence in progress; nobody needs to wait for it.
            self._executor.submit(sentences.close)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
