"""The regimes of the one backbone, as data: prompt, decoding, stop rule and priority.

With one audio-language model, ASR, TTS, translation and realtime dialogue differ only here
(the StepAudio 2.5 idea). Prompts follow the published reference (the Step-Audio2 repository's
`stepaudio2.py`, `examples*.py`, and StepFun's vLLM template), point by point:

- a turn is `<|BOT|>{role}\\n{content}<|EOT|>`, nothing between turns, the user's role is
  "human"; every text segment is tokenized on its own and the ids concatenated;
- audio is one `<audio_start><audio_patch><audio_end>` block per 25 s piece (vLLM expands the
  patch to the piece's 12.5 Hz frames);
- speech output is switched on by prefilling the assistant turn with `<tts_start>`; a past
  spoken answer goes back as `<tts_start>` + the ids the model wrote (the HF reference);
- tools are a `tool_json_schemas` turn right after the system turn: `json.dumps` of the OpenAI
  tool list, `ensure_ascii=False`; a past call is `<tool_call>function\\nNAME\\n{args}
  </tool_call>` at the end of its assistant turn; a tool's result is an `input` turn;
- think mode prefills the think marker and continues with `{end}\\n\\n<tts_start>`.

The fixtures in tests/fixtures/stepaudio2/ hold the reference's renderings of each regime.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from voxgate.model.stepaudio2 import audio
from voxgate.model.stepaudio2.parsing import CALL_KIND, CALL_OPEN, render_call
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import Role, ToolSpec, Turn

ASR_SYSTEM = "请记录下你所听到的语音内容。"
"""The reference's ASR instruction ("write down the speech you hear"), for every language."""
TTS_INSTRUCTION = "以自然的语速读出下面的文字。\n"
"""The published TTS prompt ("read the text below at a natural pace"), followed by the text.
It is the Base model's; on the chat models it is the user's turn."""
TRANSLATE_SYSTEM = {
    "Chinese": "请仔细聆听这段语音，然后将其内容翻译成中文。",
    "English": "请仔细聆听这段语音，然后将其内容翻译成英文。",
}
"""Speech translation into text (the reference's S2TT prompt; it publishes the Chinese target,
the English one changes only the language word, as its T2ST prompt does: 翻译成英文)."""
DESCRIBE_SYSTEM = {
    "caption": "Please briefly explain the important events involved in this audio clip.",
    "paralinguistic": (
        "你是一位经验丰富的音频分析专家，擅长对各种语音音频进行深入细致的分析。你的任务不仅仅是"
        "将音频内容准确转写为文字，还要对说话人的声音特征（如性别、年龄、情绪状态）、背景声音、"
        "环境信息以及可能涉及的事件进行全面描述。请以专业、客观的视角，详细、准确地完成每一次"
        "分析和转写。"
    ),
}
"""Audio understanding: the reference's audio caption and universal audio caption prompts."""
THINK_CONTINUATION = "\n\n"
"""Between the end of reasoning and `<tts_start>` (the mini-Think examples)."""

REALTIME_PRIORITY = 0
REST_PRIORITY = 10
"""vLLM serves lower numbers first: a live turn goes ahead of queued REST work."""


class RegimeName(StrEnum):
    ASR = "asr"
    TTS = "tts"
    REALTIME = "realtime"
    UNDERSTAND = "understand"


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


# The reference's decoding per task: ASR greedy; dialogue and speech 0.7 / 0.9 / 1.05;
# translation and captions 0.1 (examples-vllm.py).
ASR = Regime(RegimeName.ASR, False, 0.0, 1.0, 1.0, text_only=True, speculative=True)
TTS = Regime(RegimeName.TTS, True, 0.7, 0.9, 1.05)
REALTIME = Regime(RegimeName.REALTIME, True, 0.7, 0.9, 1.05)
UNDERSTAND = Regime(RegimeName.UNDERSTAND, False, 0.1, 1.0, 1.0, text_only=True)


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

    def extended(self, ids: Sequence[int]) -> Prompt:
        """This prompt with `ids` appended (the answer continues after them)."""
        return Prompt([*self.token_ids, *ids], self.audio, self.length + len(ids))


def tool_schemas(tools: Sequence[ToolSpec]) -> str:
    """The `tool_json_schemas` turn's content: the OpenAI tool list, as the reference dumps it."""
    listed = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]
    return json.dumps(listed, ensure_ascii=False)


class PromptWriter:
    """Writes prompts in Step-Audio-2's chat format, counting expanded length as it goes."""

    def __init__(self, tokenizer: Any, tokens: TokenMap, max_audio_pieces: int = 8) -> None:
        self._tokenizer = tokenizer
        self.tokens = tokens
        self.max_audio_pieces = max_audio_pieces
        """The engine's limit of audio pieces per prompt: older user audio turns beyond it are
        written as their transcripts."""
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        # Prompts are written in worker threads; the tokenizer is used by one at a time.
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _open(self, prompt: Prompt, role: str) -> None:
        self._add(prompt, [self.tokens.bot, *self.encode(f"{role}\n")])

    def _close(self, prompt: Prompt) -> None:
        self._add(prompt, [self.tokens.eot])

    @staticmethod
    def _add(prompt: Prompt, ids: Sequence[int], length: int | None = None) -> None:
        prompt.token_ids += ids
        prompt.length += len(ids) if length is None else length

    def _sound(self, prompt: Prompt, sound: np.ndarray) -> None:
        t = self.tokens
        for piece in audio.split_pieces(sound):
            if audio.num_audio_tokens(len(piece)) < 1:
                continue  # a sliver at the end of a long turn carries nothing
            self._add(
                prompt,
                [t.audio_start, t.audio_patch, t.audio_end],
                2 + audio.num_audio_tokens(len(piece)),
            )
            prompt.audio.append(piece)

    def _message(
        self,
        prompt: Prompt,
        role: str,
        text: str = "",
        sound: np.ndarray | None = None,
        end: bool = True,
    ) -> None:
        if sound is None:
            # The reference writes a text turn as one string: role and content tokenized
            # together (the turn tokens are special, so they split it anyway).
            self._add(prompt, [self.tokens.bot, *self.encode(f"{role}\n{text}")])
        else:
            self._open(prompt, role)
            self._sound(prompt, sound)
            if text:
                self._add(prompt, self.encode(text))
        if end:
            self._close(prompt)

    # --- the REST regimes -------------------------------------------------------------------

    def asr(self, sound: np.ndarray) -> Prompt:
        return self._listen(ASR_SYSTEM, sound)

    def translate(self, sound: np.ndarray, language: str = "English") -> Prompt:
        return self._listen(TRANSLATE_SYSTEM[language], sound)

    def describe(self, sound: np.ndarray, kind: str = "caption") -> Prompt:
        return self._listen(DESCRIBE_SYSTEM[kind], sound)

    def _listen(self, system: str, sound: np.ndarray) -> Prompt:
        prompt = Prompt()
        self._message(prompt, "system", system)
        self._message(prompt, "human", sound=sound)
        self._open(prompt, "assistant")
        return prompt

    def tts(self, text: str, style: str | None = None) -> Prompt:
        """The published TTS instruction and the text as the user's turn, then `<tts_start>`.
        A `style` (OpenAI's `instructions`, speed) is voxgate's extension: a system turn."""
        prompt = Prompt()
        if style:
            self._message(prompt, "system", style)
        self._message(prompt, "human", TTS_INSTRUCTION + text)
        self._speech_prefill(prompt)
        return prompt

    def text_request(self, system: str, text: str) -> Prompt:
        """A one-shot text task (a summary): system, the request, a plain assistant turn."""
        prompt = Prompt()
        self._message(prompt, "system", system)
        self._message(prompt, "human", text)
        self._open(prompt, "assistant")
        return prompt

    # --- dialogue -------------------------------------------------------------------------

    def dialogue(
        self,
        instructions: str,
        turns: Sequence[Turn],
        answer: str = "speech",
        tools: Sequence[ToolSpec] = (),
    ) -> Prompt:
        """The realtime prompt: persona, tools, the conversation, then the assistant's opening:
        "speech" (`<tts_start>`), "text" (plain), "think" (the think marker) or "call" (a
        forced function call: `<tool_call>function\\n`)."""
        prompt = Prompt()
        self._message(prompt, "system", instructions)
        if tools:
            self._message(prompt, "tool_json_schemas", tool_schemas(tools))
        heard = self._audio_turns(turns)
        index = 0
        while index < len(turns):
            turn = turns[index]
            match turn.role:
                case Role.USER if turn.audio is not None and id(turn) in heard:
                    # The user's own voice: the model hears how it was said, not only the words.
                    self._message(prompt, "human", sound=turn.audio)
                case Role.USER:
                    self._message(prompt, "human", turn.text)
                case Role.ASSISTANT:
                    # One assistant turn: the answer (if any) and the calls that followed it.
                    calls = []
                    answer_turn = None if turn.call is not None else turn
                    index += answer_turn is not None
                    while index < len(turns) and turns[index].call is not None:
                        calls.append(turns[index].call)
                        index += 1
                    self._assistant(prompt, answer_turn, calls)
                    continue
                case Role.SYSTEM:
                    self._message(prompt, "system", turn.text)
                case Role.TOOL:
                    self._message(prompt, "input", turn.text)  # the reference's result role
            index += 1
        match answer:
            case "speech":
                self._speech_prefill(prompt)
            case "think":
                self._open(prompt, "assistant")
                self._add(prompt, self.think_start())
            case "call":
                self._open(prompt, "assistant")
                self._add(prompt, self.encode(f"{CALL_OPEN}{CALL_KIND}\n"))
            case _:
                self._open(prompt, "assistant")
        return prompt

    def _assistant(self, prompt: Prompt, answer: Turn | None, calls: list[Any]) -> None:
        if answer is not None and answer.tokens is None and not calls:
            self._message(prompt, "assistant", answer.text)
            return
        self._open(prompt, "assistant")
        if answer is not None and answer.tokens is not None:
            # What the model wrote, verbatim (the HF reference keeps its output ids).
            self._add(prompt, [self.tokens.tts_start, *answer.tokens])
        elif answer is not None and answer.text:
            self._add(prompt, self.encode(answer.text))
        for call in calls:
            # As the reference's template: each piece of the call tokenized on its own.
            for piece in render_call(call.name, call.arguments):
                self._add(prompt, self.encode(piece))
        self._close(prompt)

    def _audio_turns(self, turns: Sequence[Turn]) -> set[int]:
        """The user audio turns written as audio: the newest, while their pieces fit the
        engine's limit per prompt (older ones are written as their transcripts)."""
        kept: set[int] = set()
        room = self.max_audio_pieces
        for turn in reversed(turns):
            if turn.role is Role.USER and turn.audio is not None:
                pieces = len(audio.split_pieces(turn.audio))
                if pieces > room:
                    break
                room -= pieces
                kept.add(id(turn))
        return kept

    def think_start(self) -> list[int]:
        """The assistant turn's opening in think mode (the reference prefills the marker)."""
        markers = self.tokens.think
        return [markers.start_id] if markers.start_id is not None else self.encode(markers.start)

    def thought(self, thought: str) -> list[int]:
        """The assistant turn's content once reasoning is over, replacing `think_start()`:
        `{start}{thought}{end}\\n\\n` then `<tts_start>` (the reference appends the end
        marker and the spoken answer's opening to the think text, as one string)."""
        markers = self.tokens.think
        if markers.start_id is not None and markers.end_id is not None:
            ids = [
                markers.start_id,
                *self.encode(thought),
                markers.end_id,
                *self.encode(THINK_CONTINUATION),
            ]
        else:
            ids = self.encode(markers.start + thought + markers.end + THINK_CONTINUATION)
        return [*ids, self.tokens.tts_start]

    def _speech_prefill(self, prompt: Prompt) -> None:
        self._open(prompt, "assistant")
        self._add(prompt, [self.tokens.tts_start])
