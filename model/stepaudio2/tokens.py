"""The special tokens of Step-Audio-2's vocabulary, resolved by name through the tokenizer.

Ids differ between the published vocabulary (audio codes from 151696) and the tiny test
vocabulary, so nothing hard-codes them: `TokenMap.from_tokenizer` looks every name up.
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
    think: int | None = None
    """<think> and </think>: present in the Think variant only (think mode)."""
    think_end: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenMap:
        def id_of(token: str) -> int:
            found = tokenizer.convert_tokens_to_ids(token)
            if found is None or found == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token!r}: not a Step-Audio-2 vocabulary")
            return int(found)

        ids = [id_of(t) for t in SPECIAL_TOKENS]
        audio_0 = id_of("<audio_0>")
        if id_of(f"<audio_{AUDIO_CODES}>") != audio_0 + AUDIO_CODES:
            raise ValueError("the audio code tokens are not contiguous")
        vocabulary = tokenizer.get_vocab()
        return cls(
            *ids,
            audio_0=audio_0,
            vocab_size=len(tokenizer),
            think=vocabulary.get("<think>"),
            think_end=vocabulary.get("</think>"),
        )

    def is_audio(self, token: int) -> bool:
        """A speech code the vocoder can speak (not the padding code)."""
        return self.audio_0 <= token < self.audio_0 + AUDIO_CODES

    @property
    def first_special(self) -> int:
        """Every id below this is plain text (the vocabularies put all specials after text)."""
        return min(
            self.endoftext, self.bot, self.eot, self.audio_start, self.tts_start, self.audio_0
        )

    def is_text(self, token: int) -> bool:
        return token < self.first_special

    def text_ids(self) -> list[int]:
        """Every plain text token (for regimes that may only write text)."""
        return list(range(self.first_special))

    def audio_ids(self) -> list[int]:
        return list(range(self.audio_0, self.audio_0 + AUDIO_CODES))
