"""The special tokens of Step-Audio-2's vocabulary, resolved by name through the tokenizer.

Ids differ between the published vocabulary (audio codes from 151696) and the tiny test
vocabulary, so nothing hard-codes them: `TokenMap.from_tokenizer` looks every name up. The
published ids are kept as a fixture (tests/fixtures/stepaudio2/special_tokens.json) and the
tests check the tiny vocabulary has the same order.

The reference splits output by id: below `<audio_start>` is text (this includes Qwen's
`<tool_call>` tokens, which the model writes after `<tts_end>`), from `<audio_0>` on are speech
codes, between are the control tokens. The end-of-turn tokens (`<|endoftext|>`, `<|EOT|>`,
`<|BOT|>`, Qwen's `<|im_start|>`/`<|im_end|>`) sit in the text range but are never text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUDIO_CODES = 6561
"""Speech codes of the CosyVoice2 tokenizer (25 Hz); <audio_6561> is padding."""
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|BOT|>",
    "<|EOT|>",
    "<audio_start>",
    "<audio_end>",
    "<audio_patch>",
    "<tts_start>",
    "<tts_end>",
    "<tts_pad>",
)
CONTROL_TEXT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|BOT|>", "<|EOT|>")
"""Tokens in the text range that end or open turns: never part of what the model says."""
THINK_TOKENS = (("<|THINK_START|>", "<|THINK_END|>"), ("<think>", "</think>"))
"""Think markers as single tokens, in order of preference (Step-Audio-R1.1 lists the first
pair). Vocabularies without them write the markers as text (Step-Audio-2-mini-Think)."""
THINK_TEXT = ("<think>", "</think>")


@dataclass(frozen=True, slots=True)
class ThinkMarkers:
    """How this vocabulary opens and closes reasoning: two special tokens, or two strings the
    tokenizer spells as several text tokens (then the end is found in decoded text)."""

    start: str
    end: str
    start_id: int | None = None
    end_id: int | None = None

    @property
    def are_tokens(self) -> bool:
        return self.start_id is not None and self.end_id is not None


@dataclass(frozen=True, slots=True)
class TokenMap:
    endoftext: int
    bot: int
    eot: int
    audio_start: int
    audio_end: int
    audio_patch: int
    tts_start: int
    tts_end: int
    tts_pad: int
    audio_0: int
    """Id of <audio_0>; <audio_k> is audio_0 + k (the codes are contiguous)."""
    vocab_size: int
    think: ThinkMarkers = ThinkMarkers(*THINK_TEXT)
    control: frozenset[int] = frozenset()
    """CONTROL_TEXT_TOKENS this vocabulary has."""
    tool_call: int | None = None
    """Qwen's `<tool_call>` (a text-range added token in the published vocabulary)."""

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenMap:
        vocabulary = tokenizer.get_vocab()

        def id_of(token: str) -> int:
            found = vocabulary.get(token)
            if found is None:
                raise ValueError(f"the tokenizer has no {token!r}: not a Step-Audio-2 vocabulary")
            return int(found)

        ids = [id_of(t) for t in SPECIAL_TOKENS]
        audio_0 = id_of("<audio_0>")
        if id_of(f"<audio_{AUDIO_CODES}>") != audio_0 + AUDIO_CODES:
            raise ValueError("the audio code tokens are not contiguous")
        think = ThinkMarkers(*THINK_TEXT)
        for start, end in THINK_TOKENS:
            if start in vocabulary and end in vocabulary:
                think = ThinkMarkers(start, end, vocabulary[start], vocabulary[end])
                break
        return cls(
            *ids,
            audio_0=audio_0,
            vocab_size=len(tokenizer),
            think=think,
            control=frozenset(vocabulary[t] for t in CONTROL_TEXT_TOKENS if t in vocabulary),
            tool_call=vocabulary.get("<tool_call>"),
        )

    def is_audio(self, token: int) -> bool:
        """A speech code the vocoder can speak (not the padding code)."""
        return self.audio_0 <= token < self.audio_0 + AUDIO_CODES

    @property
    def audio_pad(self) -> int:
        """<audio_6561>: the padding code of a TA4 group that has no speech to carry."""
        return self.audio_0 + AUDIO_CODES

    @property
    def first_special(self) -> int:
        """Every id below this is text or a turn token (the reference splits output here)."""
        return min(self.audio_start, self.audio_end, self.audio_patch, self.tts_start)

    def is_text(self, token: int) -> bool:
        """What the model says in words (Qwen's tool-call tags included), by the reference's
        id split, less the turn tokens."""
        return token < self.first_special and token not in self.control

    def text_ids(self) -> list[int]:
        """Every text token (for regimes that may only write text)."""
        return [t for t in range(self.first_special) if t not in self.control]

    def audio_ids(self) -> list[int]:
        return list(range(self.audio_0, self.audio_0 + AUDIO_CODES))
