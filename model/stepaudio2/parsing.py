"""Split Step-Audio-2's output stream: text tokens to text, speech codes to the vocoder.

The answer interleaves text tokens (what is being said) with speech codes (how it sounds), by
token id range only (the reference does the same). Padding (`<tts_pad>`, `<audio_6561>`) and
every other special token are dropped. Text is decoded incrementally: a delta is held back while
it ends in an incomplete UTF-8 sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voxgate.model.stepaudio2.tokens import TokenMap


@dataclass(frozen=True, slots=True)
class TextPiece:
    text: str


@dataclass(frozen=True, slots=True)
class SpeechCodes:
    codes: list[int]
    """0..6560, ready for the vocoder."""


Piece = TextPiece | SpeechCodes


class OutputSplitter:
    def __init__(self, tokenizer: Any, tokens: TokenMap) -> None:
        self._tokenizer = tokenizer
        self._tokens = tokens
        self._text_ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already handed out

    @property
    def text(self) -> str:
        return self._tokenizer.decode(self._text_ids, skip_special_tokens=True)

    def push(self, token_ids: Sequence[int]) -> list[Piece]:
        """The pieces completed by `token_ids`, in output order."""
        pieces: list[Piece] = []
        codes: list[int] = []
        for token in token_ids:
            if self._tokens.is_audio(token):
                codes.append(token - self._tokens.audio_0)
                continue
            if not self._tokens.is_text(token):
                continue
            if codes:
                pieces.append(SpeechCodes(codes))
                codes = []
            self._text_ids.append(token)
            if delta := self._text_delta(final=False):
                pieces.append(TextPiece(delta))
        if codes:
            pieces.append(SpeechCodes(codes))
        return self._merge(pieces)

    def finish(self) -> str:
        """The text held back so far (the stream ended)."""
        return self._text_delta(final=True)

    def _text_delta(self, final: bool) -> str:
        text = self.text
        if not final and text.endswith("\ufffd"):
            return ""  # half a multi-byte character: wait for the rest
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

    @staticmethod
    def _merge(pieces: list[Piece]) -> list[Piece]:
        merged: list[Piece] = []
        for piece in pieces:
            last = merged[-1] if merged else None
            if isinstance(piece, TextPiece) and isinstance(last, TextPiece):
                merged[-1] = TextPiece(last.text + piece.text)
            else:
                merged.append(piece)
        return merged
