"""Cut a stream of LM text into speakable pieces, so speech starts before the answer is done.

The LM produces a few tokens at a time; TTS wants whole phrases (prosody needs them). A piece
ends at a sentence end (. ! ? followed by a space), or at a clause mark (, ; :) once it holds
`min_clause_words` words, or at a word boundary once it reaches `max_words`. The first piece
of an answer is what the user waits for, so it may be cut at a clause mark sooner.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:]\s")
# Abbreviations whose period does not end a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "e.g.", "i.e.", "etc."})
# Markup an LM may emit that must be neither spoken nor shown as spoken text.
_MARKUP = re.compile(r"[*_#`~]+|\[\d+\]")


def clean_for_speech(text: str) -> str:
    return _MARKUP.sub("", text)


class ClauseSplitter:
    def __init__(self, min_clause_words: int = 4, max_words: int = 30) -> None:
        self._min_clause_words = min_clause_words
        self._max_words = max_words
        self._pending = ""

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the pieces that are now complete."""
        self._pending += text
        pieces: list[str] = []
        while (cut := self._find_cut()) is not None:
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            if piece := piece.strip():
                pieces.append(piece)
        return pieces

    def flush(self) -> list[str]:
        """End of the stream: whatever is left is the last piece."""
        piece, self._pending = self._pending.strip(), ""
        return [piece] if piece else []

    def _find_cut(self) -> int | None:
        text = self._pending
        for match in _SENTENCE_END.finditer(text):
            last_word = text[: match.start() + 1].rsplit(None, 1)[-1].lower()
            if last_word not in _ABBREVIATIONS:
                return match.end()
        for match in _CLAUSE_END.finditer(text):
            if len(text[: match.start()].split()) >= self._min_clause_words:
                return match.end()
        words = list(re.finditer(r"\S+\s", text))
        if len(words) >= self._max_words:
            return words[self._max_words - 1].end()
        return None
