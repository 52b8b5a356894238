"""Split Step-Audio-2's output stream: text tokens to text, speech codes to the vocoder.

The answer interleaves text tokens (what is being said) with speech codes (how it sounds), by
token id range only (the reference does the same). Padding (`<tts_pad>`, `<audio_6561>`) and
the control tokens are dropped. After `<tts_end>` the model may go on writing text that is not
spoken: tool calls (`<tool_call>function\\nNAME\\n{args}</tool_call>`). That is kept apart as
`after_speech`. Text is decoded incrementally: a delta is held back while it ends in an
incomplete UTF-8 sequence.
"""

from __future__ import annotations

import json
import re
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
        self._after_ids: list[int] = []
        self._said = ""
        """The text handed out so far: `_text_ids[:_decoded]`, decoded."""
        self._decoded = 0
        self.speech_ended = False
        """`<tts_end>` was written: what follows is not spoken."""
        self.ids: list[int] = []
        """Every id the model wrote, as written (the answer as the model sees it in history)."""

    @property
    def text(self) -> str:
        """What the model said (the spoken part when it spoke)."""
        return self._said + self._decode(self._text_ids[self._decoded :])

    @property
    def after_speech(self) -> str:
        """Text written after `<tts_end>` (tool calls)."""
        return self._decode(self._after_ids)

    def _decode(self, ids: list[int]) -> str:
        # Qwen's <tool_call> tags are added tokens: keep them; the control ids are filtered out.
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, token_ids: Sequence[int]) -> list[Piece]:
        """The spoken or written pieces completed by `token_ids`, in output order."""
        pieces: list[Piece] = []
        codes: list[int] = []
        self.ids += token_ids
        for token in token_ids:
            if token == self._tokens.tts_end:
                self.speech_ended = True
                continue
            if self.speech_ended:
                if self._tokens.is_text(token):
                    self._after_ids.append(token)
                continue
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
        # Only the ids not yet handed out are decoded (a byte-level vocabulary decodes piece
        # by piece exactly): one answer costs O(n) on the event loop, not O(n^2).
        delta = self._decode(self._text_ids[self._decoded :])
        if not final and delta.endswith("\ufffd"):
            return ""  # half a multi-byte character: wait for the rest
        self._said += delta
        self._decoded = len(self._text_ids)
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


# --- native tool calls ---------------------------------------------------------------------

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_KIND = "function"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.S)


@dataclass(frozen=True, slots=True)
class NativeCall:
    """One `<tool_call>` block as the model wrote it (not yet checked against the tools)."""

    name: str
    arguments: str
    complete: bool
    """The block was closed and its arguments parse as a JSON object."""


def split_calls(text: str) -> tuple[str, list[NativeCall]]:
    """The words before the first `<tool_call>`, and each call block after it.

    The published format is `<tool_call>function\\nNAME\\n{json}</tool_call>` (calls back to
    back); a block cut by the token budget or malformed is returned with `complete=False`.
    """
    start = text.find(CALL_OPEN)
    if start < 0:
        return text, []
    calls = []
    for match in _CALL.finditer(text, start):
        body = match.group(1)
        closed = match.group(0).endswith(CALL_CLOSE)
        kind, _, rest = body.partition("\n")
        name, _, arguments = rest.partition("\n")
        complete = closed and kind.strip() == CALL_KIND and _is_json_object(arguments)
        calls.append(NativeCall(name.strip(), arguments.strip(), complete))
    return text[:start], calls


def render_call(name: str, arguments: str) -> tuple[str, str, str]:
    """A call as the reference template writes one into history, in its three pieces (each
    tokenized on its own): the opening with the name, the arguments re-dumped
    (`json.dumps(..., ensure_ascii=False)`, default separators), the close."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = arguments
    return f"{CALL_OPEN}{CALL_KIND}\n{name}\n", args, CALL_CLOSE


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
