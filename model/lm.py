"""A chat LM on the engine: bounded prompts from a conversation, streamed text out.

The context is bounded in tokens: the persona (system prompt) and the newest turns are kept,
the oldest turns are dropped until the prompt plus the answer's token budget fit. A single
user turn too long to fit is cut from its start (its end is what the user just said).

Dropping is done in steps, not one turn at a time: when a conversation outgrows its budget,
its window is cut to `low_water` of the budget and then stays put while it grows back. Every
prompt of the conversation then starts with the same tokens, which vLLM's prefix cache has
already computed, instead of a new start each turn and a full prefill (seconds on a CPU).
Where a window starts is the conversation's own state (`ContextWindow`, kept by its session
and gone with it): the builder itself keeps nothing per conversation.

Rendering and tokenising are CPU work: callers on the event loop run them in a thread. The
tokenizer is used under a lock (a fast tokenizer shared by threads can fail with "Already
borrowed"), and no prompt that needs many tokens gets this far: the session caps instructions
and items in characters, and `check_instructions` refuses instructions that do not fit.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxgate.model.engine import EngineHost
from voxgate.model.types import ContextBudgetExceeded, ContextWindow, ResponseEnd, Turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


MIN_TURN_TOKENS = 64
"""Room instructions must leave for the conversation (beside the answer's budget)."""


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1


class PromptBuilder:
    """Chat-template prompts bounded by a token budget, with stable windows per conversation."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, context_tokens: int, low_water: float = 0.6
    ) -> None:
        self._tokenizer = tokenizer
        self.context_tokens = context_tokens
        self.low_water = low_water
        self.lock = threading.RLock()
        """Held while the tokenizer works (subclasses that tokenize take it too)."""

    def render(self, instructions: str, turns: Sequence[Turn]) -> Any:
        """The prompt for `turns` (token ids here; subclasses may return richer prompts)."""
        messages = [{"role": "system", "content": instructions}]
        # A text LM reads what was said; a turn known only as audio has nothing for it.
        messages += [{"role": t.role.value, "content": t.text} for t in turns if t.text]
        with self.lock:
            ids = self._tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=False
            )
        return list(ids)

    def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        """Raise `ContextBudgetExceeded` unless `instructions` leave room for a turn beside
        an answer of `max_output_tokens` (checked when a client sets them, not at the first
        answer)."""
        used = self.size(self.render(instructions, [])) + max_output_tokens
        if used + MIN_TURN_TOKENS > self.context_tokens:
            raise ContextBudgetExceeded(
                f"the instructions take {used - max_output_tokens} tokens; beside an answer of "
                f"{max_output_tokens} tokens and room for the conversation ({MIN_TURN_TOKENS}), "
                f"that passes this model's context of {self.context_tokens} tokens: shorten "
                "them or lower max_output_tokens"
            )

    def build(
        self,
        instructions: str,
        conversation: Sequence[Turn],
        max_output_tokens: int,
        window: ContextWindow | None = None,
    ) -> Any:
        """The prompt of the newest part of `conversation` that fits the context budget."""
        return self.build_window(instructions, conversation, max_output_tokens, window)[0]

    def build_window(
        self,
        instructions: str,
        conversation: Sequence[Turn],
        max_output_tokens: int,
        window: ContextWindow | None = None,
    ) -> tuple[Any, int]:
        """The prompt, and the index of the first turn it holds (earlier ones did not fit).

        `window`, when given, is where this conversation's prompts start: read, and moved
        when the conversation outgrows its budget."""
        budget = self.context_tokens - max_output_tokens
        if budget <= 0:
            raise ContextBudgetExceeded("max_output_tokens leaves no room for the prompt")
        turns = list(conversation)
        start = window.start_in(turns) if window is not None else 0
        prompt = self.render(instructions, turns[start:])
        if self.size(prompt) > budget:
            start = self._first_fitting(instructions, turns, start, int(budget * self.low_water))
            if start == len(turns):
                if window is not None:
                    window.forget()
                return self.fit_last_turn(instructions, turns[-1], budget), len(turns) - 1
            prompt = self.render(instructions, turns[start:])
        if window is not None and start < len(turns):
            window.starts_at(turns[start])
        return prompt, start

    def _first_fitting(self, instructions: str, turns: list[Turn], lo: int, target: int) -> int:
        """Smallest start >= lo whose prompt fits `target` (len(turns) if none does)."""
        hi = len(turns)
        # Fewer turns never make the prompt longer: binary search.
        while lo < hi:
            mid = (lo + hi) // 2
            if self.size(self.render(instructions, turns[mid:])) <= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def size(self, prompt: Any) -> int:
        """Tokens the engine will hold for a rendered prompt."""
        return len(prompt)

    def fit_last_turn(self, instructions: str, turn: Turn, budget: int) -> Any:
        """The prompt with only `turn`, cut from its start to fit `budget`."""
        overhead = len(self.render(instructions, [Turn(turn.role, "")]))
        room = budget - overhead
        if room <= 0:
            raise ContextBudgetExceeded("the instructions alone exceed the context budget")
        with self.lock:
            text_ids = self._tokenizer.encode(turn.text, add_special_tokens=False)
            tail = self._tokenizer.decode(text_ids[-room:])
        prompt = self.render(instructions, [Turn(turn.role, tail)])
        # Re-tokenising a cut string can grow it by a token or two.
        while len(prompt) > budget and tail:
            tail = tail[len(tail) // 10 + 1 :]
            prompt = self.render(instructions, [Turn(turn.role, tail)])
        return prompt


class ChatLM:
    def __init__(self, engine: EngineHost, model_dir: Path, context_tokens: int) -> None:
        from transformers import AutoTokenizer

        self._engine = engine
        self.prompts = PromptBuilder(AutoTokenizer.from_pretrained(model_dir), context_tokens)

    async def stream(
        self,
        prompt: list[int],
        *,
        request_id: str,
        max_output_tokens: int,
        sampling: SamplingConfig,
        priority: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ResponseEnd]:
        """Yield text deltas, then one ResponseEnd; with `schema`, the text is JSON valid for
        it (vLLM's structured outputs constrain the decoding)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            max_tokens=max_output_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            structured_outputs=None if schema is None else StructuredOutputsParams(json=schema),
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
