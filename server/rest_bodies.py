"""A REST request's body read into its request model and checked, before any work is done:
the multipart upload or the speech JSON, each under its size cap (413 as soon as it passes).

What only one endpoint refuses (a streamed translation, a prompt the backbone cannot take, a
text over `rest.max_text_chars`, an unknown voice, speech candidates while feedback is off or
with SSE) is refused here too, so nothing malformed reaches the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from voxgate.model.backbone import Backbone
from voxgate.model.types import UnknownVoiceError
from voxgate.server.errors import RestError, parse_json_body, rest_validation_error
from voxgate.server.rest_requests import (
    SPEECH_MODELS,
    TRANSCRIPTION_MODELS,
    DescriptionForm,
    SpeechRequest,
    TranscriptionForm,
    TranslationForm,
    UploadForm,
)
from voxgate.server.services import Services

FORM_FIELDS_BYTES = 64 << 10
"""Room for the multipart fields and boundaries beside the file, within the body cap."""
MAX_FORM_FIELDS = 32
CANDIDATES_PARAM = "x_voxgate.candidates"
_LIST_FIELDS = frozenset({"timestamp_granularities[]", "timestamp_granularities"})
"""Form fields that may come more than once, each time one item of a list."""

FormT = TypeVar("FormT", bound=UploadForm)


class Body(Protocol):
    """A request's body, read and checked; `close()` frees what it holds (an upload's file)."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class UploadBody(Generic[FormT]):
    form: FormT
    upload: UploadFile

    async def close(self) -> None:
        await self.upload.close()


@dataclass(slots=True)
class SpeechBody:
    speech: SpeechRequest

    async def close(self) -> None:
        pass


async def read_transcription(request: Request, services: Services) -> UploadBody[TranscriptionForm]:
    return await _read_upload(request, services, TranscriptionForm, _check_transcription)


async def read_translation(request: Request, services: Services) -> UploadBody[TranslationForm]:
    return await _read_upload(request, services, TranslationForm, _check_translation)


async def read_description(request: Request, services: Services) -> UploadBody[DescriptionForm]:
    # `kind` and `response_format` are checked by the form itself.
    return await _read_upload(request, services, DescriptionForm, lambda form, backbone: None)


async def read_speech(request: Request, services: Services) -> SpeechBody:
    settings = services.settings.rest
    # Worst case JSON: every character of input and instructions escaped as \uXXXX.
    limit = 12 * settings.max_text_chars + FORM_FIELDS_BYTES
    body = b"".join([chunk async for chunk in _capped(request, limit, "request body")])
    speech = await asyncio.to_thread(parse_json_body, body, SpeechRequest)
    _check_model(speech.model, SPEECH_MODELS, services)
    for param, text in (("input", speech.input), ("instructions", speech.instructions or "")):
        if len(text) > settings.max_text_chars:
            raise RestError(
                400,
                "input_too_long",
                f"`{param}` has {len(text)} characters; this server's limit is "
                f"{settings.max_text_chars}",
                param,
            )
    if not speech.input.strip():
        raise RestError(400, "invalid_value", "`input` holds nothing to say", "input")
    _check_candidates(speech, services)
    try:
        voice = services.voices.resolve(speech.voice)  # an alias speaks as its voice
    except UnknownVoiceError as e:
        raise RestError(400, "unknown_voice", str(e), "voice") from e
    return SpeechBody(speech.model_copy(update={"voice": voice}))


def _check_candidates(speech: SpeechRequest, services: Services) -> None:
    """Candidates are feedback: only where it is captured, and answered whole (not SSE)."""
    if speech.candidates == 1:
        return
    if not services.feedback.enabled:
        raise RestError(
            400,
            "invalid_value",
            "candidates are compared through the feedback store, which is off on this server "
            "(VOXGATE_FEEDBACK__ENABLED); leave `x_voxgate.candidates` out or set it to 1",
            CANDIDATES_PARAM,
        )
    if speech.stream_format == "sse":
        raise RestError(
            400,
            "invalid_value",
            "candidates are answered whole, as one JSON object: they cannot be streamed with "
            '`stream_format: "sse"` (leave `stream_format` out)',
            CANDIDATES_PARAM,
        )


def _check_transcription(form: TranscriptionForm, backbone: Backbone) -> None:
    if form.stream and form.response_format not in ("json", "text"):
        raise RestError(
            400,
            "invalid_value",
            "stream=true sends transcript.text.* events; use response_format json or text",
            "stream",
        )
    if form.prompt and not backbone.takes_transcription_prompt:
        raise RestError(
            400,
            "unsupported_parameter",
            "`prompt` is not available here: this backbone's ASR prompt is the published "
            "fixed instruction; a hint would change it (leave `prompt` out)",
            "prompt",
        )


def _check_translation(form: TranslationForm, backbone: Backbone) -> None:
    if form.stream:
        raise RestError(
            400,
            "unsupported_parameter",
            "translations are not streamed (OpenAI's are not either); leave `stream` out",
            "stream",
        )
    if form.prompt:
        raise RestError(
            400,
            "unsupported_parameter",
            "`prompt` is not available for translations here: no backbone of this server "
            "uses one to translate (leave `prompt` out)",
            "prompt",
        )


def _check_model(model: str, aliases: Sequence[str], services: Services) -> None:
    if model != services.model_name and model not in aliases:
        raise RestError(
            404,
            "model_not_found",
            f"the model {model!r} is not served here; use {services.model_name!r} or one of "
            f"{', '.join(aliases)}",
            "model",
        )


async def _read_upload(
    request: Request,
    services: Services,
    form_type: type[FormT],
    check: Callable[[FormT, Backbone], None],
) -> UploadBody[FormT]:
    """The form of an upload endpoint, checked (`check`: what only that endpoint refuses)."""
    settings = services.settings.rest
    form, upload = await _read_form(request, settings.max_upload_bytes, form_type)
    try:
        _check_model(form.model, TRANSCRIPTION_MODELS, services)
        check(form, services.backbone)
        if upload.size is not None and upload.size > settings.max_upload_bytes:
            raise RestError(
                413,
                "file_too_large",
                f"the file is larger than this server's limit of {settings.max_upload_bytes} bytes",
                "file",
            )
    except BaseException:
        await upload.close()
        raise
    return UploadBody(form, upload)


async def _read_form(
    request: Request, max_upload_bytes: int, form_type: type[FormT]
) -> tuple[FormT, UploadFile]:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RestError(
            415,
            "unsupported_media_type",
            "send the file as multipart/form-data (field `file`), as OpenAI's clients do",
        )
    parser = MultiPartParser(
        request.headers,
        _capped(request, max_upload_bytes + FORM_FIELDS_BYTES, "upload"),
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=FORM_FIELDS_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise RestError(400, "invalid_multipart", f"the form could not be read: {e}") from e
    upload = None
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name == "file":
                upload = value
            else:
                await value.close()
        elif value != "":  # an empty field is an unset one (`curl -F language=`)
            fields.setdefault(name, []).append(value)
    if upload is None:
        if "file" in fields:
            raise RestError(400, "invalid_type", "`file` must be a file upload", "file")
        raise RestError(400, "missing_required_parameter", "`file` is required", "file")
    try:
        data = {k: v if k in _LIST_FIELDS else v[-1] for k, v in fields.items()}
        return form_type.model_validate(data), upload
    except ValidationError as e:
        await upload.close()
        raise rest_validation_error(e) from e


async def _capped(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; 413 as soon as it passes `limit` bytes."""
    too_large = RestError(
        413, "file_too_large", f"the {what} is larger than this server's limit of {limit} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large
        yield chunk
