"""JSON from clients, parsed with bounds: one place that turns any bad JSON into `InvalidJson`.

`json.loads` raises `RecursionError` on deeply nested input (`[[[[...`), and structures nested
just short of that break later code that walks them recursively (schema checks, pydantic,
`json.dumps` of an echo). Nothing a client sends needs more than `MAX_DEPTH` levels, so deeper
input is refused at the edge, before anything walks it.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted (a tool's JSON Schema needs a handful)."""


class InvalidJson(ValueError):
    """The client's JSON cannot be used; the message says why (safe to show the client)."""


def loads(data: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `data`; raise `InvalidJson` for malformed, non-UTF-8 or too deeply nested JSON."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidJson(f"not valid JSON: {e}") from e
    except RecursionError as e:
        raise InvalidJson(f"JSON nested deeper than {max_depth} levels") from e
    if depth(value, max_depth) > max_depth:
        raise InvalidJson(f"JSON nested deeper than {max_depth} levels")
    return value


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted without recursion; stops
    counting once past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
