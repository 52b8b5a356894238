"""Errors at the edge: one place that turns what went wrong into the protocol's own error shape.

Realtime errors become `error` events (`{"type": "error", "error": {type, code, message, param,
event_id}}`); REST errors become OpenAI's `{"error": {message, type, param, code}}` bodies. The
codes are stable and listed in the README.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from voxgate.server import json_input
from voxgate.server.protocol import UNION_TAGS
from voxgate.streaming.events import ErrorReported

_PYDANTIC_CODES = {
    "extra_forbidden": "unknown_parameter",
    "missing": "missing_required_parameter",
    "union_tag_invalid": "invalid_value",
    "union_tag_not_found": "missing_required_parameter",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "greater_than": "invalid_value",
    "greater_than_equal": "invalid_value",
    "less_than": "invalid_value",
    "less_than_equal": "invalid_value",
    "string_too_long": "string_above_max_length",
    "too_long": "array_above_max_length",
    "recursion_loop": "invalid_json",
}


def _is_union_member(part: int | str) -> bool:
    """Unions add the member's tag or type name to an error's location: not a client's field."""
    if isinstance(part, int):
        return False
    return (
        part in UNION_TAGS
        or part in ("str", "int", "float", "bool")
        or part[:1].isupper()
        or (part.startswith(("literal[", "function-", "constrained-")))
    )


MAX_PARAM_PART_CHARS = 64
"""A field name in an error's `param` is the client's (a metadata key): one over this length is
cut, so a refused key of megabytes does not come back in the error twice over."""


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and len(part) > MAX_PARAM_PART_CHARS:
            part = part[:MAX_PARAM_PART_CHARS] + "..."
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(
    e: ValidationError, event_id: str | None, prefix: tuple[str, ...] = ()
) -> ErrorReported:
    """The first problem of a pydantic error, as an error event naming the offending field."""
    first = e.errors(include_url=False)[0]
    loc = tuple(p for p in first["loc"] if not _is_union_member(p))
    if first["type"] == "union_tag_not_found":
        # What is missing is the tag itself (`item.type`), not the object that lacks it.
        loc += (first["ctx"]["discriminator"].strip("'"),)
    param = _dotted(prefix + loc) or None
    code = _PYDANTIC_CODES.get(first["type"], "invalid_type")
    if first["type"] == "union_tag_invalid" and loc == ():
        code = "unknown_event_type"
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ErrorReported(code, message, param=param, event_id=event_id)


# --- REST -------------------------------------------------------------------------------------


class RestError(Exception):
    """A REST request refused (or failed): its HTTP status and OpenAI's error body.

    Raised anywhere below a REST route; `rest_error_response` (an exception handler of the app)
    turns it into `{"error": {"message", "type", "param", "code"}}` with `headers` added
    (`Retry-After` on 429 and 503).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        *,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


_REST_VALUE_ERRORS = frozenset(
    {"string_too_short", "string_pattern_mismatch", "finite_number", "too_short"}
)
"""Pydantic error types that are a wrong value of the right type (`invalid_value`)."""


def rest_validation_error(e: ValidationError, prefix: tuple[str, ...] = ()) -> RestError:
    """The first problem of a request body or form, as a 400 naming the offending field."""
    reported = validation_error(e, None, prefix)
    code = reported.code
    if e.errors(include_url=False)[0]["type"] in _REST_VALUE_ERRORS:
        code = "invalid_value"
    return RestError(400, code, reported.message, reported.param)


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_json_body(body: bytes, model: type[ModelT]) -> ModelT:
    """A REST request's JSON body as `model`: 400 `invalid_json` unless it is a JSON object
    (nested at most `json_input.MAX_DEPTH` deep), else its first validation problem."""
    try:
        raw = json_input.loads(body)
    except json_input.InvalidJson as e:
        raise RestError(400, "invalid_json", f"the body is {e}") from e
    if not isinstance(raw, dict):
        raise RestError(400, "invalid_json", "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise rest_validation_error(e) from e
