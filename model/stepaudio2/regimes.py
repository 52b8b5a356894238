"""The three regimes of the one backbone, as data: prompt, decoding, stop rule and priority.

With one audio-language model, ASR, TTS and realtime dialogue differ only here (the StepAudio 2.5
idea). Prompts follow the reference format: `<|BOT|>{role}\\n{content}<|EOT|>` with the user
role named "human", audio as `<audio_start><audio_patch><audio_end>` per 25 s piece, and speech
output switched on by prefilling the assistant turn with `<tts_start>`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from voxgate.model.stepaudio2 import audio
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import Role, Turn

ASR_SYSTEM = "请记录下你所听到的语音内容。"
"""The reference's ASR instruction ("write down the speech you hear"); the model was trained
on it, for every language."""
TTS_SYSTEM = "请逐字朗读用户提供的文本，不要改写或补充。"
"""Read the user's text aloud word for word, without rewriting or adding anything."""

REALTIME_PRIORITY = 0
REST_PRIORITY = 10
"""vLLM serves lower numbers first: a live turn goes ahead of queued REST work."""


class RegimeName(StrEnum):
    ASR = "asr"
    TTS = "tts"
    REALTIME = "realtime"


@dataclass(frozen=True, slots=True)
class Regime:
    name: RegimeName
    speech_output: bool
    """Prefill `<tts_start>`: the answer interleaves text and speech codes."""
    temperature: float
    top_p: float
    repetition_penalty: float
    text_only: bool = False
    """Only text tokens (and the end token) may be sampled: ASR writes no speech codes."""
    speculative: bool = False
    """Greedy, so the engine's speculative decoding is exactly verifiable (lossless)."""


ASR = Regime(RegimeName.ASR, False, 0.0, 1.0, 1.0, text_only=True, speculative=True)
TTS = Regime(RegimeName.TTS, True, 0.7, 0.9, 1.05)
REALTIME = Regime(RegimeName.REALTIME, True, 0.7, 0.9, 1.05)


@dataclass
class Prompt:
    """Token ids with one `<audio_patch>` per audio piece, and those pieces in order."""

    token_ids: list[int] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    """Length once vLLM expands each patch to its 12.5 Hz frames (what the context holds)."""

    def multi_modal_data(self) -> dict[str, Any] | None:
        if not self.audio:
            return None
        return {"audio": [(piece, audio.SAMPLE_RATE) for piece in self.audio]}


class PromptWriter:
    """Writes prompts in Step-Audio-2's chat format, counting expanded length as it goes."""

    def __init__(self, tokenizer: Any, tokens: TokenMap) -> None:
        self._tokenizer = tokenizer
        self.tokens = tokens
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        # Prompts are written in worker threads; the tokenizer is used by one at a time.
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _message(
        self,
        prompt: Prompt,
        role: str,
        text: str = "",
        sound: np.ndarray | None = None,
        end: bool = True,
    ) -> None:
        t = self.tokens
        ids = [t.bot, *self.encode(f"{role}\n")]
        length = len(ids)
        if sound is not None:
            for piece in audio.split_pieces(sound):
                if audio.num_audio_tokens(len(piece)) < 1:
                    continue  # a sliver at the end of a long turn carries nothing
                ids += [t.audio_start, t.audio_patch, t.audio_end]
                length += 2 + audio.num_audio_tokens(len(piece))
                prompt.audio.append(piece)
        if text:
            text_ids = self.encode(text)
            ids += text_ids
            length += len(text_ids)
        if end:
            ids.append(t.eot)
            length += 1
        prompt.token_ids += ids
        prompt.length += length

    def asr(self, sound: np.ndarray, hint: str | None = None) -> Prompt:
        prompt = Prompt()
        system = ASR_SYSTEM if not hint else f"{ASR_SYSTEM}\n{hint}"
        self._message(prompt, "system", system)
        self._message(prompt, "human", sound=sound)
        self._message(prompt, "assistant", end=False)
        return prompt

    def tts(self, text: str, instructions: str | None = None) -> Prompt:
        prompt = Prompt()
        system = TTS_SYSTEM if not instructions else f"{TTS_SYSTEM}\n{instructions}"
        self._message(prompt, "system", system)
        self._message(prompt, "human", text)
        self._speech_prefill(prompt)
        return prompt

    def dialogue(self, instructions: str, turns: Sequence[Turn], answer: str = "speech") -> Prompt:
        """The realtime prompt: persona, the conversation, then the assistant's opening:
        "speech" (`<tts_start>`), "text" (plain), or "think" (`<think>`, think mode)."""
        prompt = Prompt()
        self._message(prompt, "system", instructions)
        for turn in turns:
            match turn.role:
                case Role.USER:
                    # The user's own voice when we still have it: the model hears how it was
                    # said, not only the words.
                    if turn.audio is not None:
                        self._message(prompt, "human", sound=turn.audio)
                    else:
                        self._message(prompt, "human", turn.text)
                case Role.ASSISTANT:
                    self._message(prompt, "assistant", turn.text)
                case Role.SYSTEM:
                    self._message(prompt, "system", turn.text)
                case Role.TOOL:
                    self._message(prompt, "input", turn.text)  # the reference's tool-result role
        match answer:
            case "speech":
                self._speech_prefill(prompt)
            case "think":
                if self.tokens.think is None:
                    raise ValueError("this model has no <think> token: it cannot reason")
                self._message(prompt, "assistant", end=False)
                prompt.token_ids += [self.tokens.think, *self.encode("\n")]
                prompt.length += 2
            case _:
                self._message(prompt, "assistant", end=False)
        return prompt

    def text_request(self, system: str, text: str) -> Prompt:
        """A one-shot text task (a summary): system, the request, a plain assistant turn."""
        prompt = Prompt()
        self._message(prompt, "system", system)
        self._message(prompt, "human", text)
        self._message(prompt, "assistant", end=False)
        return prompt

    def _speech_prefill(self, prompt: Prompt) -> None:
        self._message(prompt, "assistant", end=False)
        prompt.token_ids.append(self.tokens.tts_start)
        prompt.length += 1
