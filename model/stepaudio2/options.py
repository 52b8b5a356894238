"""The unified backbone's settings: `StepAudio2Options`, nested under `VOXGATE_STEPAUDIO2__*`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from voxgate.model.stepaudio2.budgets import ReadingPace


class StepAudio2Options(BaseModel):
    """Settings of the unified backbone (nested under `VOXGATE_STEPAUDIO2__*`)."""

    speculative: Literal["ngram", "none"] = "ngram"
    """Engine-wide speculative decoding. Lossless: drafts are verified by the backbone, so the
    greedy ASR regime's transcripts are identical with and without it."""
    num_speculative_tokens: int = Field(4, ge=1, le=8)
    prompt_lookup_max: int = Field(4, ge=1)
    prompt_lookup_min: int = Field(2, ge=1)
    context_tokens: int = Field(8192, ge=512)
    """Prompt + answer budget of a realtime turn (the engine's max_model_len unless that is
    set). Input audio counts 12.5 tokens a second, spoken output 31.25 (see `budgets`): the
    default holds a 60 s answer beside ~5 minutes of conversation audio."""
    answer_s: float = Field(60.0, gt=0)
    """A realtime answer's default length in seconds of speech (`max_output_tokens` a session
    starts with); a client may ask for less, or more up to `max_answer_s`."""
    max_answer_s: float = Field(180.0, gt=0)
    """The longest realtime answer any client may ask for ("inf"), in seconds of speech."""
    audio_pieces_per_prompt: int = Field(8, ge=1)
    """25 s pieces one prompt may carry (8 = 200 s)."""
    max_tts_s: float = Field(300.0, gt=0)
    """Cap on one synthesis, in seconds of speech; each request's own budget comes from its
    text (`reading_pace`)."""
    reading_pace: ReadingPace = ReadingPace()
    """How long a text may take to read, per script: sizes each synthesis' token budget."""
    voice: str | None = None
    """Default voice (the first in the model's voices/ folder if unset)."""
    think: Literal["auto", "on", "off"] = "auto"
    """Think mode. "auto": on when the vocabulary has think tokens (Step-Audio-R1.1) or the
    model folder's name says it reasons ("Think", "R1": Step-Audio-2-mini-Think writes its
    markers as text, so its vocabulary cannot tell)."""
    vocoder_device: str = "cpu"
    """torch device of the token2wav vocoder ("cuda" beside the engine on a GPU machine)."""
    vocoder_threads: int = Field(1, ge=1)
    """torch threads for the vocoder on CPU: one leaves the other core to the engine."""
    batched_vocoder: Literal["auto", "on", "off"] = "auto"
    """Run the live streams' vocoder chunks together: one thread steps every stream that has
    a chunk ready in one forward (`token2wav.VocoderScheduler`), replayed as CUDA graphs on
    CUDA. "auto": on when the vocoder runs on CUDA (one stream at a time is bound by kernel
    launches there); off on the CPU, where the static step costs ~20% more per stream than
    the per-stream path. Off: each stream's chunks run alone, on one thread in priority
    order. A stream's audio is the same either way, within float rounding."""
    vocoder_slots: int = Field(64, ge=1)
    """Streams the batched vocoder keeps on the device at once; a stream that finds every
    slot taken runs alone (the per-stream arithmetic, on the same thread). Preallocated at
    start, each slot holds a stream's caches for `answer_s` of speech (an answer that goes on
    longer continues alone): at the published size in float32 ~200 MB of DiT caches plus
    57 kB per token (voice prompt + 25 a second), ~300 MB per slot at the 60 s default,
    ~19 GB for 64 (half that in bfloat16)."""

    @property
    def vocoder_batched(self) -> bool:
        """Whether `batched_vocoder` is on for this `vocoder_device`."""
        if self.batched_vocoder == "auto":
            return self.vocoder_device.split(":")[0] == "cuda"
        return self.batched_vocoder == "on"

    def engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"limit_mm_per_prompt": {"audio": self.audio_pieces_per_prompt}}
        if self.speculative == "ngram":
            args["speculative_config"] = {
                "method": "ngram",
                "num_speculative_tokens": self.num_speculative_tokens,
                "prompt_lookup_max": self.prompt_lookup_max,
                "prompt_lookup_min": self.prompt_lookup_min,
            }
        return args
