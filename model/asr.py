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
WHISPER_MAX_TOKENS = 224
"""Whisper's own limit on a window's transcript (half its 448-token context)."""


class WhisperASR:
    def __init__(
        self,
        model_dir: Path,
        threads: int = 2,
        beam_size: int = 1,
        window_s: float | None = None,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        # One request at a time: CTranslate2 already spreads one request over `threads` cores.
        self._executor = PriorityExecutor("asr")
        self._beam_size = beam_size
        self._window_s = window_s
        """None: every input padded to Whisper's 30 s window. A number: a turn shorter than
        that is padded to it only, and the encoder does that much less work (see
        `_short_turn`)."""

    def _short_turn(self, audio: np.ndarray, temperature: float) -> str:
        """One short turn through CTranslate2 directly, the encoder on `window_s` of input.

        faster-whisper pads every input to 30 s; CTranslate2 takes shorter ones. Whisper tiny
        was trained on 30 s windows and falls apart below ~8 s (the decoder loops), but at
        10-20 s the transcripts of the recorded clips were as good as at 30 s and the encoder
        ~3x faster (bench/asr_window.py). Same decoding as `transcribe` with no timestamps:
        the start-of-transcript sequence, no-timestamps, greedy, the same token suppression."""
        import ctranslate2

        assert self._window_s is not None
        features = self._model.feature_extractor(audio)
        frames = max(features.shape[-1], int(self._window_s * 100))
        padded = np.zeros((features.shape[0], frames), dtype=np.float32)
        padded[:, : features.shape[-1]] = features
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(padded[None]), to_cpu=False
        )
        tokenizer = self._tokenizer
        result = self._model.model.generate(
            encoded,
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]],
            beam_size=self._beam_size,
            sampling_temperature=max(temperature, 1e-5) if temperature > 0 else 1.0,
            sampling_topk=0 if temperature > 0 else 1,
            max_length=WHISPER_MAX_TOKENS,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        ids = [t for t in result[0].sequences_ids[0] if t < tokenizer.eot]
        return tokenizer.decode(ids).strip()

    def _transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        prompt: str | None,
        temperature: float,
        timestamps: str,
    ) -> tuple[str, tuple[Segment, ...]]:
        short = self._window_s is not None and len(audio) / INPUT_SAMPLE_RATE <= self._window_s
        if short and timestamps == "none" and not prompt and (language or "en") == "en":
            return self._short_turn(audio, temperature), ()
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
