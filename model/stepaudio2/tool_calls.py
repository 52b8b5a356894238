"""Tool calls decoded under constraint: the model's own calls checked against the offered tools,
and a call it must make (or retry) written under the tool's JSON-schema grammar."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from voxgate.model import tools
from voxgate.model.stepaudio2 import parsing, regimes
from voxgate.model.stepaudio2.decoding import Decoder
from voxgate.model.stepaudio2.regimes import Prompt, PromptWriter
from voxgate.model.types import BackboneError, ResponseEnd, ResponseOptions, ToolCall, Turn

log = logging.getLogger(__name__)

TOOL_DECISION_TOKENS = 512
"""Longest arguments object a call may write."""
TOOL_NAME_TOKENS = 32


class ToolCalls:
    """Calls of the tools a response offers, decoded on the engine in the ASR regime."""

    def __init__(self, decoder: Decoder, writer: PromptWriter) -> None:
        self._decoder = decoder
        self._writer = writer

    async def checked(
        self, native: list[parsing.NativeCall], written: Prompt, options: ResponseOptions
    ) -> list[ToolCall]:
        """The model's own calls, each checked against the offered tools; a call with an
        unknown name or arguments its schema refuses gets one retry under the tool's grammar,
        continuing from what the model said before it (`written`)."""
        calls = []
        by_name = {t.name: t for t in options.tools}
        for attempt in native:
            tool = by_name.get(attempt.name)
            if tool is not None and attempt.complete:
                try:
                    calls.append(tools.checked_call(tool, attempt.arguments))
                    continue
                except ValueError as e:
                    log.info("the model's call of %s is invalid (%s): retrying", tool.name, e)
            opened = written.extended(
                self._writer.encode(parsing.CALL_OPEN + parsing.CALL_KIND + "\n")
            )
            call, _end = await self._constrained(
                opened, options, tool.name if tool is not None else None
            )
            calls.append(call)
        return calls

    async def forced(
        self, system: str, turns: Sequence[Turn], options: ResponseOptions
    ) -> tuple[ToolCall, ResponseEnd]:
        """tool_choice "required" or a name: the assistant turn opens with `<tool_call>`."""
        prompt = await asyncio.to_thread(
            self._writer.dialogue, system, turns, "call", options.tools
        )
        named = options.tool_choice if options.tool_choice != "required" else None
        return await self._constrained(prompt, options, named)

    async def _constrained(
        self, prompt: Prompt, options: ResponseOptions, name: str | None
    ) -> tuple[ToolCall, ResponseEnd]:
        """Finish a call opened by `prompt` (which ends `<tool_call>function\\n`): the name
        (one of the tools, when not given), then arguments under its JSON-schema grammar."""
        from vllm.sampling_params import StructuredOutputsParams

        names = [t.name for t in options.tools]
        used = 0
        if name is None:
            params = self._decoder.params(regimes.ASR, max_tokens=TOOL_NAME_TOKENS)
            params.structured_outputs = StructuredOutputsParams(choice=names)
            name, _codes, end = await self._decoder.generate(
                prompt, params, f"{options.request_id}-tool-name", options.priority
            )
            used += end.output_tokens
            name = name.strip()
        tool = next((t for t in options.tools if t.name == name), None)
        if tool is None:
            raise BackboneError(f"the model could not name one of the tools {names}")
        prompt = prompt.extended(self._writer.encode(f"{name}\n"))
        params = self._decoder.params(regimes.ASR, max_tokens=TOOL_DECISION_TOKENS)
        params.structured_outputs = StructuredOutputsParams(
            json=tool.parameters or {"type": "object"}
        )
        arguments, _codes, end = await self._decoder.generate(
            prompt, params, f"{options.request_id}-tool", options.priority
        )
        try:
            call = tools.checked_call(tool, arguments)
        except ValueError as e:
            raise BackboneError(f"the model could not produce a valid call: {e}") from e
        return call, replace(end, output_tokens=end.output_tokens + used)
