"""A chat LM on the engine: bounded prompts from a conversation, streamed text out.

The context is bounded in tokens: the persona (system prompt) and the newest turns are kept,
the oldest turns are dropped until the prompt plus the answer's token budget fit. A single
user turn too long to fit is cut from its start (its end is what the user just said).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voxgate.model.engine import EngineHost
from voxgate.model.types import ResponseEnd, Turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1


class ChatLM:
    def __init__(self, engine: EngineHost, model_dir: Path, context_tokens: int) -> None:
        from transformers import AutoTokenizer

        self._engine = engine
        self._tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_dir)
        self.context_tokens = context_tokens

    def _render(self, instructions: str, turns: Sequence[Turn]) -> list[int]:
        messages = [{"role": "system", "content": instructions}]
        messages += [{"role": t.role.value, "content": t.text} for t in turns]
        ids = self._tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        return list(ids)

    def build_prompt(
        self, instructions: str, conversation: Sequence[Turn], max_output_tokens: int
    ) -> list[int]:
        """Token ids of the newest part of `conversation` that fits the context budget."""
        budget = self.context_tokens - max_output_tokens
        if budget <= 0:
            raise ValueError("max_output_tokens leaves no room for the prompt")
        turns = list(conversation)
        if len(prompt := self._render(instructions, turns)) <= budget:
            return prompt
        # Fewer turns never make the prompt longer: binary-search the oldest turn to keep.
        lo, hi = 1, len(turns)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._render(instructions, turns[mid:])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(turns):
            return self._render(instructions, turns[lo:])
        return self._fit_last_turn(instructions, turns[-1], budget)

    def _fit_last_turn(self, instructions: str, turn: Turn, budget: int) -> list[int]:
        overhead = len(self._render(instructions, [Turn(turn.role, "")]))
        room = budget - overhead
        if room <= 0:
            raise ValueError("the instructions alone exceed the context budget")
        text_ids = self._tokenizer.encode(turn.text, add_special_tokens=False)
        tail = self._tokenizer.decode(text_ids[-room:])
        prompt = self._render(instructions, [Turn(turn.role, tail)])
        # Re-tokenising a cut string can grow it by a token or two.
        while len(prompt) > budget and tail:
            tail = tail[len(tail) // 10 + 1 :]
            prompt = self._render(instructions, [Turn(turn.role, tail)])
        return prompt

    async def stream(
        self,
        prompt: list[int],
        *,
        request_id: str,
        max_output_tokens: int,
        sampling: SamplingConfig,
        priority: int = 0,
    ) -> AsyncIterator[str | ResponseEnd]:
        """Yield text deltas, then one ResponseEnd."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_output_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
        )
        output_tokens = 0
        finish_reason = "stop"
        async for output in self._engine.stream(prompt, params, request_id, priority):
            completion = output.outputs[0]
            output_tokens += len(completion.token_ids)
            if completion.text:
                yield completion.text
            if completion.finish_reason is not None:
                finish_reason = "length" if completion.finish_reason == "length" else "stop"
        yield ResponseEnd(finish_reason, input_tokens=len(prompt), output_tokens=output_tokens)
