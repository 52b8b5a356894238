"""What the OpenAPI document says of the routes that read their own bodies: the request bodies
(pydantic schemas with their `$defs` inlined) and the error responses they share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in (
        (400, "Bad input (`{error: {message, type, param, code}}`)"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (429, "Too many concurrent REST requests (see Retry-After)"),
        (503, "The backbone cannot serve (see Retry-After)"),
    )
}
"""The failures every REST speech endpoint documents."""


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` inlined, to embed in the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            resolved = {k: resolve(v) for k, v in node.items() if k != "$ref"}
            if (ref := node.get("$ref", "")).startswith("#/$defs/"):
                # Keep what sits beside the reference (a field's default, its description).
                return resolve(defs[ref.removeprefix("#/$defs/")]) | resolved
            return resolved
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_request_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The OpenAPI request body (`openapi_extra`) of a route that reads `model` as JSON."""
    schema = inline_refs(model.model_json_schema())
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}
    }


def multipart_request_body(form: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body (`openapi_extra`) of an upload: `file` and the fields of `form`."""
    schema = inline_refs(form.model_json_schema())
    schema["properties"] = {
        "file": {"type": "string", "format": "binary", "description": "The audio file."},
        **schema["properties"],
    }
    schema["required"] = ["file", *schema.get("required", [])]
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
