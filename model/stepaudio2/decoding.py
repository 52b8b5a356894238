"""Requests on the engine: each regime's sampling parameters, and a request run to its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from voxgate.model.engine import EngineHost
from voxgate.model.stepaudio2.parsing import OutputSplitter, SpeechCodes
from voxgate.model.stepaudio2.regimes import Prompt, Regime
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import ResponseEnd, TurnTrace


class Decoder:
    """The engine with the tokenizer that reads what it writes."""

    def __init__(self, engine: EngineHost, tokenizer: Any, tokens: TokenMap) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self.tokens = tokens
        self.text_ids = tokens.text_ids()
        """Every text token: what a regime that may only write text is allowed."""

    def splitter(self) -> OutputSplitter:
        """A fresh reader of one answer's ids (text, speech codes, what follows the speech)."""
        return OutputSplitter(self._tokenizer, self.tokens)

    def stream(
        self, request: Prompt, params: Any, request_id: str, priority: int
    ) -> AsyncIterator[Any]:
        """The engine's outputs for `request`; closing the stream aborts it."""
        return self._engine.stream(
            request.token_ids, params, request_id, priority, request.multi_modal_data()
        )

    def params(
        self,
        regime: Regime,
        *,
        max_tokens: int,
        temperature: float | None = None,
        allowed: list[int] | None = None,
        until_turn_end: bool = False,
    ) -> Any:
        """Sampling for `regime`. Speech stops at `<tts_end>` unless `until_turn_end`: with
        tools offered the model writes its calls after it, and stops at `<|EOT|>`."""
        from vllm import SamplingParams

        stops = [self.tokens.eot] if until_turn_end else [self.tokens.eot, self.tokens.tts_end]
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=regime.temperature if temperature is None else temperature,
            top_p=regime.top_p,
            repetition_penalty=regime.repetition_penalty,
            stop_token_ids=stops,
            allowed_token_ids=allowed,
            detokenize=False,  # we decode text ourselves; speech codes need no text at all
        )

    async def generate(
        self,
        request: Prompt,
        params: Any,
        request_id: str,
        priority: int,
        trace: TurnTrace | None = None,
    ) -> tuple[str, list[int], ResponseEnd]:
        """Run one request to the end; its text, speech codes and usage."""
        splitter = self.splitter()
        codes: list[int] = []
        generated, finish = 0, "stop"
        async for output in self.stream(request, params, request_id, priority):
            completion = output.outputs[0]
            if trace is not None and completion.token_ids:
                trace.mark("lm_first_token")
            generated += len(completion.token_ids)
            for piece in splitter.push(completion.token_ids):
                if isinstance(piece, SpeechCodes):
                    codes += piece.codes
            finish = "length" if completion.finish_reason == "length" else finish
        if trace is not None:
            trace.mark("lm_done")
        splitter.finish()
        end = ResponseEnd(finish, request.length, generated, output_audio_tokens=len(codes))
        return splitter.text, codes, end
