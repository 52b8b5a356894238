"""Token budgets of the unified backbone, set in seconds of speech.

Step-Audio-2 speaks in TA4 groups: after `<tts_start>` it writes one text token (or
`<tts_pad>` while the text is ahead of the voice) and then four speech codes (or the padding
code `<audio_6561>`), over and over. Speech codes run at 25 per second, so one second of speech
costs 25 codes + 25/4 text slots = 31.25 tokens. A budget written in tokens for text (128, 512)
is a few seconds of speech: budgets here are seconds, converted with that rate.

TTS sizes its budget from the text: how long a careful speaker takes to read it, per script
(CJK characters are read ~3 a second, alphabetic text ~10-14 characters a second, digits are
read as words), with room to spare; the operator's `max_tts_s` caps it.
"""

from __future__ import annotations

import math
import unicodedata

from pydantic import BaseModel, Field

CODES_PER_SECOND = 25
"""CosyVoice2 speech tokens: 40 ms each."""
TA4_GROUP = 4
"""Speech codes per text slot in the interleaved output."""
TOKENS_PER_SECOND = CODES_PER_SECOND * (TA4_GROUP + 1) / TA4_GROUP
"""31.25 output tokens per second of speech."""
END_TOKENS = 8
"""`<tts_end>`, `<|EOT|>` and a tail of text the voice has not caught up with."""


def speech_tokens(seconds: float) -> int:
    """Output tokens that hold `seconds` of TA4 speech (and its closing tokens)."""
    return math.ceil(seconds * TOKENS_PER_SECOND) + END_TOKENS


def speech_seconds(tokens: int) -> float:
    """Seconds of speech `tokens` TA4 output tokens can hold (the inverse of speech_tokens)."""
    return max(0.0, (tokens - END_TOKENS) / TOKENS_PER_SECOND)


class ReadingPace(BaseModel):
    """Seconds a slow, careful reading takes per character, by script (TTS budgets)."""

    cjk_s: float = Field(0.4, gt=0)
    """Han, kana, hangul: ~3 characters a second when read slowly (4-5 is normal speech)."""
    digit_s: float = Field(0.3, gt=0)
    """A digit is read as a word ("2026" is four or more words)."""
    other_s: float = Field(0.11, gt=0)
    """Letters, spaces and punctuation of alphabetic scripts: ~9 characters a second."""
    lead_s: float = Field(2.0, ge=0)
    """Silence and breath at the start and end."""

    def seconds(self, text: str, speed: float = 1.0) -> float:
        """How long reading `text` may take at `speed` (0.5: half as fast, twice as long)."""
        total = self.lead_s
        for char in text:
            if _is_cjk(char):
                total += self.cjk_s
            elif char.isdigit():
                total += self.digit_s
            else:
                total += self.other_s
        return total / max(speed, 0.25)


def _is_cjk(char: str) -> bool:
    if char.isascii():
        return False
    name = unicodedata.name(char, "")
    return name.startswith(("CJK ", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC", "BOPOMOFO"))
