"""Whisper speech recognition (faster-whisper, CTranslate2) on a worker thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE, Transcription

MIN_AUDIO_S = 0.1
"""Shorter input is not speech Whisper can read; it transcribes as ''."""


class WhisperASR:
    def __init__(self, model_dir: Path, threads: int = 2, beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
        )
        # One request at a time: CTranslate2 already spreads one request over `threads` cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._beam_size = beam_size

    def _transcribe(self, audio: np.ndarray, language: str | None, prompt: str | None) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=language or "en",
            beam_size=self._beam_size,
            initial_prompt=prompt,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    async def transcribe(
        self, audio: np.ndarray, language: str | None = None, prompt: str | None = None
    ) -> Transcription:
        duration = len(audio) / INPUT_SAMPLE_RATE
        if duration < MIN_AUDIO_S:
            return Transcription(text="", duration_s=duration, language=language)
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._executor, self._transcribe, audio, language, prompt)
        return Transcription(text=text, duration_s=duration, language=language or "en")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
