"""Whisper speech recognition (faster-whisper, CTranslate2) on worker threads.

One request at a time per lane (CTranslate2 spreads one over the cores), waiting requests in
priority order: a live turn (0) goes before queued REST transcriptions (10), as in the engine.
With a batch lane (`batch_nice`), REST transcriptions run on a second Whisper, built on a
thread of lower CPU priority, so a live turn neither waits for them nor shares the cores with
them evenly (model/priority.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxgate.model.priority import Lanes
from voxgate.model.types import INPUT_SAMPLE_RATE, Segment, Transcription, Word

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

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
        batch_nice: int | None = None,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        def load() -> WhisperModel:
            return WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
            )

        self._lanes = Lanes("asr", batch_nice)
        self._model = load()
        # Built on the batch thread: CTranslate2's workers inherit its nice value.
        self._batch_model = (
            self._lanes.batch.submit(0, load).result() if self._lanes.separate else self._model
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        self._beam_size = beam_size
        self._window_s = window_s
        """None: every input padded to Whisper's 30 s window. A number: a turn shorter than
        that is padded to it only, and the encoder does that much less work (see
        `_short_turn`)."""

    def _short_turn(self, model: WhisperModel, audio: np.ndarray, temperature: float) -> str:
        """One short turn through CTranslate2 directly, the encoder on `window_s` of input.

        faster-whisper pads every input to 30 s; CTranslate2 takes shorter ones. Whisper tiny
        was trained on 30 s windows and falls apart below ~8 s (the decoder loops), but at
        10-20 s the transcripts of the recorded clips were as good as at 30 s and the encoder
        ~3x faster (bench/asr_window.py). Same decoding as `transcribe` with no timestamps:
        the start-of-transcript sequence, no-timestamps, greedy, the same token suppression."""
        import ctranslate2

        assert self._window_s is not None
        features = model.feature_extractor(audio)
        frames = max(features.shape[-1], int(self._window_s * 100))
        padded = np.zeros((features.shape[0], frames), dtype=np.float32)
        padded[:, : features.shape[-1]] = features
        encoded = model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        tokenizer = self._tokenizer
        result = model.model.generate(
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
        model: WhisperModel,
        audio: np.ndarray,
        language: str | None,
        prompt: str | None,
        temperature: float,
        timestamps: str,
    ) -> tuple[str, tuple[Segment, ...]]:
        short = self._window_s is not None and len(audio) / INPUT_SAMPLE_RATE <= self._window_s
        if short and timestamps == "none" and not prompt and (language or "en") == "en":
            return self._short_turn(model, audio, temperature), ()
        segments, _info = model.transcribe(
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
        model = self._batch_model if priority > 0 else self._model
        text, segments = await self._lanes.lane(priority).run(
            priority, self._transcribe, model, audio, language, prompt, temperature, timestamps
        )
        return Transcription(
            text=text, duration_s=duration, language=language or "en", segments=segments
        )

    def close(self) -> None:
        if self._lanes.separate:
            # CTranslate2's workers end with the model that made them, on the thread that built
            # it; left to the interpreter's exit, their destructor aborts the process.
            self._lanes.batch.submit(-1, self._drop_batch_model).result()
        self._lanes.shutdown()

    def _drop_batch_model(self) -> None:
        model, self._batch_model = self._batch_model, None
        del model
