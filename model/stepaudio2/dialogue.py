"""What a realtime answer is written from: the bounded context window in Step-Audio-2's prompt
format and, in think mode, the reasoning the spoken answer continues after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from voxgate.model.lm import PromptBuilder
from voxgate.model.stepaudio2 import regimes
from voxgate.model.stepaudio2.decoding import Decoder
from voxgate.model.stepaudio2.regimes import Prompt, PromptWriter
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    ContextBudgetExceeded,
    ReasoningDelta,
    ResponseOptions,
    ToolSpec,
    Turn,
    TurnTrace,
)


class DialogueWindow(PromptBuilder):
    """The bounded realtime context, in Step-Audio-2's prompt format."""

    def __init__(
        self,
        writer: PromptWriter,
        tokenizer: Any,
        context_tokens: int,
        tools: Sequence[ToolSpec] = (),
    ) -> None:
        super().__init__(tokenizer, context_tokens)
        self._writer = writer
        self._tools = tools
        """Offered to the model in its `tool_json_schemas` turn (this window is per request)."""

    def render(self, instructions: str, turns: Sequence[Turn]) -> Prompt:
        return self._writer.dialogue(instructions, turns, tools=self._tools)

    def size(self, prompt: Prompt) -> int:
        return prompt.length

    def fit_last_turn(self, instructions: str, turn: Turn, budget: int) -> Prompt:
        if turn.audio is None:
            return super().fit_last_turn(instructions, turn, budget)
        room = budget - self.render(instructions, [Turn(turn.role, "")]).length - 4
        if room < 1:
            raise ContextBudgetExceeded("the instructions alone exceed the context budget")
        # Keep the end of what the user said: 12.5 tokens per second of audio.
        keep = int(room / 12.5 * INPUT_SAMPLE_RATE)
        return self.render(instructions, [Turn(turn.role, turn.text, turn.audio[-keep:])])


async def think(
    decoder: Decoder,
    writer: PromptWriter,
    request: Prompt,
    options: ResponseOptions,
    trace: TurnTrace,
) -> AsyncIterator[ReasoningDelta | Prompt]:
    """Think mode: reasoning first (streamed as text, never spoken), at most the budget;
    then yield the prompt the spoken answer continues from (reasoning closed)."""
    markers = decoder.tokens.think
    opening = writer.think_start()
    # The dialogue prompt ends `<|BOT|>assistant\n<tts_start>`: open the reasoning instead.
    base = Prompt(request.token_ids[:-1], request.audio, request.length - 1)
    prompt = base.extended(opening)
    params = decoder.params(
        regimes.REALTIME,
        max_tokens=options.reasoning_tokens,
        allowed=[*decoder.text_ids, *([markers.end_id] if markers.end_id is not None else [])],
    )
    if markers.end_id is not None:
        params.stop_token_ids = [markers.end_id]
    splitter = decoder.splitter()
    shown = 0
    thought = ""
    stream = decoder.stream(prompt, params, f"{options.request_id}-think", options.priority)
    async with aclosing(stream):
        async for output in stream:
            trace.mark("lm_first_token")
            splitter.push(output.outputs[0].token_ids)
            thought, ended = _before_marker(splitter.text, markers.end)
            # Hold back what could be the start of the end marker written as text.
            visible = len(thought) if ended else _safe_length(thought, markers.end)
            if visible > shown:
                yield ReasoningDelta(thought[shown:visible])
                shown = visible
            if ended:
                break  # closing the stream aborts the request: reasoning is over
    if len(thought) > shown:
        yield ReasoningDelta(thought[shown:])
    # Reasoning over (or cut at its budget): close it and open the spoken answer.
    yield base.extended(writer.thought(thought))


def _before_marker(text: str, marker: str) -> tuple[str, bool]:
    """`text` up to `marker` (the end of reasoning written as text), and whether it came."""
    at = text.find(marker)
    return (text, False) if at < 0 else (text[:at], True)


def _safe_length(text: str, marker: str) -> int:
    """How much of `text` can be shown: all but a tail that may be the start of `marker`."""
    for keep in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)
