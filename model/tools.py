"""Function calling for any backbone: the model's choice written under a JSON-schema grammar.

A small LM is not trained to call tools in any format, so the backbone asks it for one JSON
object whose schema (built here) allows exactly: `{"call": "none"}`, or `{"call": NAME,
"arguments": {...}}` for each tool, with that tool's own parameter schema. vLLM's structured
outputs constrain decoding to that schema, so what comes out parses and validates; it is
validated again here anyway, and anything invalid is never handed out as a call.

Schemas come from clients: only self-contained ones are accepted (`remote_ref`), and the
validator here has a registry that never retrieves anything (jsonschema's default would fetch
a remote `$ref` with `urlopen`, from the server, with no timeout).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from voxgate.model.types import ToolCall, ToolSpec

NO_CALL = "none"


def decision_schema(tools: Sequence[ToolSpec], choice: str) -> dict[str, Any]:
    """The JSON schema of the model's decision under `choice` (auto | required | a name)."""
    chosen = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    variants: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {
                "call": {"const": t.name},
                "arguments": t.parameters or {"type": "object"},
            },
            "required": ["call", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    if choice == "auto":
        variants.append(
            {
                "type": "object",
                "properties": {"call": {"const": NO_CALL}},
                "required": ["call"],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def instructions(tools: Sequence[ToolSpec], choice: str) -> str:
    """What the model is told about the tools (added to its system prompt)."""
    lines = ["You can call these functions:"]
    for tool in tools:
        schema = json.dumps(tool.parameters or {}, separators=(",", ":"))
        lines.append(f"- {tool.name}: {tool.description} Arguments (JSON Schema): {schema}")
    if choice == "auto":
        lines.append(
            'Reply with JSON only: {"call": "<function name>", "arguments": {...}} to call one, '
            f'or {{"call": "{NO_CALL}"}} to answer in words instead.'
        )
    else:
        lines.append('Reply with JSON only: {"call": "<function name>", "arguments": {...}}.')
    return "\n".join(lines)


REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def remote_ref(schema: Any) -> str | None:
    """The first reference in `schema` that points outside it (anything but `#...`), if any."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in REF_KEYWORDS and not (isinstance(value, str) and value.startswith("#")):
                    return str(value)
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _no_retrieval(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)


_LOCAL_ONLY = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """jsonschema validation that resolves only references inside `schema`."""
    validator = jsonschema.Draft202012Validator(schema, registry=_LOCAL_ONLY)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise error


def checked_call(tool: ToolSpec, arguments: str) -> ToolCall:
    """A call of `tool` with `arguments` (JSON text), valid for its schema, with a new id.
    Raises ValueError when the arguments are not a JSON object its schema accepts."""
    try:
        parsed = json.loads(arguments, strict=False)
    except json.JSONDecodeError as e:
        raise ValueError(f"arguments for {tool.name} are not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise ValueError(f"arguments for {tool.name} are not a JSON object")
    try:
        validate(parsed, tool.parameters or {"type": "object"})
    except (jsonschema.ValidationError, Unresolvable) as e:
        message = getattr(e, "message", str(e))
        raise ValueError(f"arguments for {tool.name} do not match its schema: {message}") from e
    return ToolCall(f"call_{uuid.uuid4().hex[:20]}", tool.name, json.dumps(parsed))


def parse_decision(text: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """The call the model chose, or None for "answer in words". Raises ValueError if the text
    is not a valid decision (which constrained decoding should make impossible)."""
    try:
        # strict=False: grammars may let raw control characters into strings; the arguments
        # are written out again below, properly escaped.
        decision = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise ValueError(f"the tool decision is not JSON: {e}") from e
    if not isinstance(decision, dict) or "call" not in decision:
        raise ValueError("the tool decision has no `call`")
    if decision["call"] == NO_CALL:
        return None
    by_name = {t.name: t for t in tools}
    tool = by_name.get(decision["call"])
    if tool is None:
        raise ValueError(f"the model called an unknown function {decision['call']!r}")
    return checked_call(tool, json.dumps(decision.get("arguments")))
