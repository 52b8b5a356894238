"""Whisper speech recognition (faster-whisper, CTranslate2) on a worker thread.

One request at a time (CTranslate2 spreads one over the cores), waiting requests in priority
order: a live turn (0) goes before queued REST transcriptions (10), as in the engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate.model.priority import PriorityExecutor
from voxgate.model.types import INPUT_SAMPLE_RATE, Segment, Transcription, Word

MIN_AUDIO_S = 0.1
"""Shorter input is not speech Whisper can read; it transcribes as ''."""


class WhisperASR:
    def __init__(self, model_dir: Path, threads: int = 2, beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
        )
        # One request at a time: CTranslate2 already spreads one request over `threads` cores.
        self._executor = PriorityExecutor("asr")
        self._beam_size = beam_size

    def _transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        prompt: str | None,
        temperature: float,
        timestamps: str,
    ) -> tuple[str, tuple[Segment, ...]]:
        segments, _info = self._model.transcribe(
            audio,
            language=language or "en",
            beam_size=self._beam_size,
            temperature=temperature,
            initial_prompt=prompt,
            condition_on_previous_text=False,
            without_timestamps=timestamps == "none",
            word_timestamps=timestamps == "word",
            vad_filter=False,
        )
        found = tuple(
            Segment(
                start_s=s.start,
                end_s=s.end,
                text=s.text.strip(),
                words=tuple(Word(w.start, w.end, w.word.strip()) for w in s.words or ()),
            )
            for s in segments
        )
        text = " ".join(s.text for s in found).strip()
        return text, found if timestamps != "none" else ()

    async def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        timestamps: str = "none",
        priority: int = 0,
    ) -> Transcription:
        duration = len(audio) / INPUT_SAMPLE_RATE
        if duration < MIN_AUDIO_S:
            return Transcription(text="", duration_s=duration, language=language)
        text, segments = await self._executor.run(
            priority, self._transcribe, audio, language, prompt, temperature, timestamps
        )
        return Transcription(
            text=text, duration_s=duration, language=language or "en", segments=segments
        )

    def close(self) -> None:
        self._executor.shutdown()
