"""OpenAI's REST speech API: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`,
`POST /v1/audio/speech` and `GET /v1/audio/voices`, and voxgate's own
`POST /v1/audio/descriptions` (audio in, a description in words out), on the same backbone as
`/v1/realtime`.

Every request passes one gate first (`_serve`): the API key, the engine's health, its body
read whole under a deadline and a size cap (holding one of `rest.max_pending_bodies`, and one
of its client's `rest.max_pending_bodies_per_client`, never a worker's slot) and validated,
then a slot of `rest.max_concurrent_requests` (429 with `Retry-After` when none is free; a
streamed answer holds its slot to its last byte). Nothing malformed reaches the engine; work
reaches the backbone at the REST priority (`rest.priority`), behind live realtime turns.
Every failure is OpenAI's error body (`RestError`), also inside an SSE stream (an `error`
event), whatever raised it: a backbone's `BackboneError` keeps its own code and status
(`engine_unavailable` 503, `context_length_exceeded` 400, ...), anything else is a 500
`server_error`.

Decoding, VAD and encoding are CPU work and run in worker threads. Long audio is cut at
silences (`Segmenter`) and transcribed (or translated) piece by piece, in order; a description
hears the whole clip at once, so its length is capped (`MAX_DESCRIBED_SECONDS`). Speech is
synthesised sentence by sentence and each piece is encoded and sent as soon as it exists, so the
first audio leaves before the whole text is spoken.

The `model` field takes this server's own model id (`voxgate-<backbone>`, see /v1/models) or
one of OpenAI's model names, all served by the one backbone: `whisper-1`, `gpt-4o-transcribe`,
`gpt-4o-mini-transcribe` (...) for transcriptions, translations and descriptions, `tts-1`,
`tts-1-hd`, `gpt-4o-mini-tts` (...) for speech. Anything else is 404 `model_not_found`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Receive, Scope, Send

from voxgate.model.backbone import Backbone
from voxgate.model.clauses import ClauseSplitter
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    BackboneError,
    Segment,
    Transcription,
    UnknownVoiceError,
)
from voxgate.server import metrics
from voxgate.server.audio_files import (
    AudioFileError,
    AudioTooLong,
    EmptyAudio,
    SpeechEncoder,
    SpeechFormat,
    decode_upload,
)
from voxgate.server.engine_watch import MESSAGE as ENGINE_DEAD
from voxgate.server.errors import RestError, parse_json_body, rest_validation_error
from voxgate.server.routes import require_key
from voxgate.server.transcripts import (
    TimedSegment,
    Transcript,
    TranscriptFormat,
    delta_event,
    done_event,
    json_body,
    srt_body,
    text_body,
    verbose_json_body,
    vtt_body,
)
from voxgate.streaming.config import MAX_TRANSCRIPTION_PROMPT_CHARS
from voxgate.streaming.segmenter import Piece, Segmenter, SegmenterParams, to_file_time

if TYPE_CHECKING:
    from voxgate.server.app import Services

log = logging.getLogger(__name__)
router = APIRouter()

TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-transcribe",
)
"""OpenAI's transcription model names (translations and descriptions take them too); each is
served by this server's backbone."""
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
"""OpenAI's speech model names; each is served by this server's backbone."""

FORM_FIELDS_BYTES = 64 << 10
"""Room for the multipart fields and boundaries beside the file, within the body cap."""
MAX_FORM_FIELDS = 32
SPEECH_MIN_CLAUSE_WORDS = 12
"""Speech input is cut at sentence ends, and at clause marks only in long sentences: a piece
is one `synthesize` call, and prosody needs whole phrases more than REST needs a fast first
byte. On a backbone whose TTS runs on the engine each piece is one engine request, so a long
text holds the engine a sentence at a time: a live turn (higher priority) gets in at the next
sentence boundary instead of after the whole text, and concurrent REST requests take turns."""
MAX_DESCRIBED_SECONDS = 200.0
"""Longest audio a description hears. It is described whole, in one prompt, and Step-Audio-2
takes at most 8 pieces of 25 s in one (`audio_pieces_per_prompt`): longer audio is refused
(400 `audio_too_long`) rather than described in part."""
SILENT_PEAK = 10 ** (-60 / 20)
"""A clip whose loudest sample is below -60 dBFS holds nothing to describe and is not sent to
the backbone (a model asked about silence invents events). Sound, not speech, is what counts:
a caption describes a dog's bark as well as a voice."""


# --- request models (parsed once, here) -------------------------------------------------------


class _UploadForm(BaseModel):
    """The form fields every upload endpoint has, besides `file`. Fields OpenAI has and
    voxgate does not use (`include[]`, `chunking_strategy`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    model: str = Field(examples=["whisper-1"])
    """This server's model id or an OpenAI transcription model name (an alias)."""


class _AudioForm(_UploadForm):
    """The form fields that transcriptions and translations share, besides `file`."""

    prompt: str | None = Field(None, max_length=MAX_TRANSCRIPTION_PROMPT_CHARS)
    """Text to guide the spelling and style; refused (400 `unsupported_parameter`) by
    backbones whose ASR prompt is fixed."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"


class TranscriptionForm(_AudioForm):
    """The form fields of `/v1/audio/transcriptions` besides `file`."""

    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$", examples=["en"])
    """ISO-639-1 code of the spoken language (`en`)."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=list,
        validation_alias=AliasChoices("timestamp_granularities[]", "timestamp_granularities"),
    )
    """With `verbose_json`: `segment` (the default), `word`, or both."""
    stream: bool = False
    """Stream `transcript.text.delta` events (Server-Sent Events), one per piece of audio, then
    `transcript.text.done`. Only with `json` or `text`."""


class TranslationForm(_AudioForm):
    """The form fields of `/v1/audio/translations` besides `file`: speech in, English text out."""

    stream: bool = False
    """Translations are not streamed (OpenAI's are not either): `true` is refused."""


class DescriptionForm(_UploadForm):
    """The form fields of `/v1/audio/descriptions` (voxgate's) besides `file`."""

    kind: Literal["caption", "paralinguistic"] = "caption"
    """`caption`: what happens in the clip; `paralinguistic`: the speakers' voices (gender,
    age, emotion), the background and the setting."""
    response_format: Literal["json", "text"] = "json"
    """`json`: `{"text": ...}`; `text`: the description alone."""


FormT = TypeVar("FormT", bound=_UploadForm)
T = TypeVar("T")

_LIST_FIELDS = frozenset({"timestamp_granularities[]", "timestamp_granularities"})


class SpeechRequest(BaseModel):
    """The JSON body of `/v1/audio/speech`, with OpenAI's field names."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = Field(examples=["tts-1"])
    """This server's model id or an OpenAI speech model name (an alias)."""
    input: str = Field(min_length=1, examples=["Hello there. How can I help?"])
    """The text to speak."""
    voice: str = Field(examples=["joe"])
    """One of `GET /v1/audio/voices` (`joe` is the CPU default's voice)."""
    instructions: str | None = None
    """How to say it; honoured by backbones that can (the response header
    `X-Voxgate-Instructions` says `followed` or `ignored`)."""
    response_format: SpeechFormat = SpeechFormat.MP3
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    """`audio`: the encoded audio as chunked bytes; `sse`: `speech.audio.delta` events with
    base64 pieces of it, then `speech.audio.done`."""


# --- routes (thin: the gate, then a handler) --------------------------------------------------


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
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


def _multipart_body(form: type[_UploadForm]) -> dict[str, Any]:
    """The OpenAPI request body of an upload: `file` and the fields of `form`."""
    schema = _inline_refs(form.model_json_schema())
    schema["properties"] = {
        "file": {"type": "string", "format": "binary", "description": "The audio file."},
        **schema["properties"],
    }
    schema["required"] = ["file", *schema.get("required", [])]
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
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


RouteHandler = Callable[[Request], Awaitable[Response]]


def _upload_route(
    path: str, form: type[_UploadForm], answer: str, media_types: Sequence[str]
) -> Callable[[RouteHandler], RouteHandler]:
    """A multipart upload endpoint, documented: `form`'s fields, `answer` (200) in JSON or
    `media_types`, and its errors."""
    return router.post(
        path,
        response_model=None,
        openapi_extra=_multipart_body(form),
        responses={
            200: {"description": answer, "content": {t: {} for t in media_types}},
            415: {"description": "Not multipart/form-data"},
            **_ERRORS,
        },
    )


@_upload_route(
    "/v1/audio/transcriptions",
    TranscriptionForm,
    "The transcript in `response_format`, or SSE with `stream=true`",
    ("text/plain", "text/vtt", "text/event-stream"),
)
async def create_transcription(request: Request) -> Response:
    """Transcribe an audio file (OpenAI's `audio.transcriptions.create`)."""
    return await _serve(request, _read_transcription, _transcription)


@_upload_route(
    "/v1/audio/translations",
    TranslationForm,
    "The English text in `response_format`",
    ("text/plain", "text/vtt"),
)
async def create_translation(request: Request) -> Response:
    """Translate speech in an audio file into English text (OpenAI's
    `audio.translations.create`); 400 `unsupported_feature` on a backbone that cannot."""
    return await _serve(request, _read_translation, _translation)


@_upload_route(
    "/v1/audio/descriptions",
    DescriptionForm,
    "The description in `response_format`",
    ("text/plain",),
)
async def create_description(request: Request) -> Response:
    """Describe an audio file in words: what happens in it (`kind=caption`), or the speakers'
    voices, emotion, background and setting (`kind=paralinguistic`). voxgate's extension, not
    part of OpenAI's API; 400 `unsupported_feature` on a backbone that cannot (the cascade)."""
    return await _serve(request, _read_description, _description)


@router.post(
    "/v1/audio/speech",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_refs(SpeechRequest.model_json_schema())}
            },
        }
    },
    responses={
        200: {
            "description": "Audio in `response_format`, streamed; or SSE with `stream_format=sse`",
            "content": {f.media_type: {} for f in SpeechFormat} | {"text/event-stream": {}},
        },
        **_ERRORS,
    },
)
async def create_speech(request: Request) -> Response:
    """Speak a text (OpenAI's `audio.speech.create`)."""
    return await _serve(request, _read_speech, _speech)


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict[str, Any]:
    """The voices `/v1/audio/speech` takes, each with its aliases (other names it answers to,
    OpenAI's voice names by default); the first is the realtime default."""
    services = _authorised(request)
    return {
        "object": "list",
        "data": [
            {
                "id": v.name,
                "object": "voice",
                "name": v.name,
                "language": v.language,
                "sample_rate": v.sample_rate,
                "aliases": services.voices.aliases_of(v.name),
            }
            for v in services.backbone.voices
        ],
    }


def install_error_handlers(app: FastAPI) -> None:
    """Errors of REST routes as OpenAI's bodies."""

    async def rest_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RestError)
        metrics.rest_error(request.scope, exc.code)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def backbone_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BackboneError)
        if exc.status >= 500:
            log.warning("backbone failed a REST request: %s", exc)
        return await rest_error(request, backbone_rest_error(exc, request.app))

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this handler; the client gets OpenAI's shape.
        metrics.rest_error(request.scope, "server_error")
        return JSONResponse(SERVER_ERROR.body(), status_code=500)

    app.add_exception_handler(RestError, rest_error)
    app.add_exception_handler(BackboneError, backbone_error)
    app.add_exception_handler(Exception, server_error)


SERVER_ERROR = RestError(
    500, "server_error", "the server failed to handle this request", type="server_error"
)


def backbone_rest_error(e: BackboneError, app: FastAPI) -> RestError:
    """A backbone's failure as a REST error: its own code and status (`model.types`)."""
    headers = {}
    if e.status == 503:
        headers["Retry-After"] = str(app.state.services.settings.rest.retry_after_s)
    return RestError(
        e.status,
        e.code,
        str(e),
        "voice" if isinstance(e, UnknownVoiceError) else None,
        type="server_error" if e.status >= 500 else "invalid_request_error",
        headers=headers,
    )


# --- the gate ---------------------------------------------------------------------------------


class _ReleasingStream(StreamingResponse):
    """A streamed response that, however it ends (done, client gone, error), closes its body
    and calls `on_close` once: the request's concurrency slot is held to the last byte.

    On a normal end the slot is freed as soon as the last chunk has been sent, before the
    closing (empty) message: a client that reads the end and sends its next request at once
    must find the slot free, not still held by its own previous request (it got 429s)."""

    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        released = False

        def release() -> None:
            nonlocal released
            if not released and self.on_close is not None:
                released = True
                self.on_close()

        async def releasing() -> AsyncIterator[Any]:
            async for chunk in body:
                yield chunk
            release()  # every byte is sent; only the closing message is left

        self.body_iterator = releasing()
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await body.aclose()  # type: ignore[union-attr]
            finally:
                release()


def _authorised(request: Request) -> Services:
    require_key(request)
    return request.app.state.services


async def _serve(
    request: Request,
    read: Callable[[Request, Services], Awaitable[BodyT]],
    handler: Callable[[Request, Services, BodyT], Awaitable[Response]],
) -> Response:
    """The gate: checks, then the body (`read`) under a deadline, then a slot for `handler`.

    The body is read before a slot of `max_concurrent_requests` is taken, so a client that
    uploads slowly holds only a slot of `max_pending_bodies`, and never for longer than
    `body_timeout_s`; and one client address holds at most `max_pending_bodies_per_client`
    of those: a few slow uploaders cannot lock the endpoints for the others.
    """
    services = _authorised(request)
    settings = services.settings.rest
    retry = {"Retry-After": str(settings.retry_after_s)}
    if services.drain.draining:
        raise RestError(
            503,
            "server_shutting_down",
            "this server is shutting down; retry to reach another one",
            type="server_error",
            headers=retry,
        )
    if services.engine_watch.dead or not services.backbone.is_healthy:
        raise RestError(503, "engine_unavailable", ENGINE_DEAD, type="server_error", headers=retry)
    busy = RestError(
        429,
        "rate_limited",
        f"this server is serving its limit of {settings.max_concurrent_requests} REST "
        "requests; try again later",
        type="rate_limit_error",
        headers=retry,
    )
    client = _client_address(request)
    senders = _bodies_by_client(request)
    per_client = settings.max_pending_bodies_per_client
    if not senders.try_acquire(client, per_client):
        raise RestError(
            429,
            "rate_limited",
            f"this client is already sending {per_client} request bodies to this server; "
            "try again when one has arrived",
            type="rate_limit_error",
            headers=retry,
        )
    try:
        if not services.rest_bodies.try_acquire():
            raise busy
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                body = await read(request, services)
        except TimeoutError as e:
            raise RestError(
                408,
                "request_timeout",
                f"the request body did not arrive within {settings.body_timeout_s:g} s",
            ) from e
        finally:
            services.rest_bodies.release()
    finally:
        senders.release(client)
    try:
        if not services.rest_requests.try_acquire():
            raise busy
        try:
            response = await handler(request, services, body)
        except BaseException:
            services.rest_requests.release()
            raise
    finally:
        await body.close()
    if isinstance(response, _ReleasingStream):
        response.on_close = services.rest_requests.release
    else:
        services.rest_requests.release()
    return response


class _BodiesByClient:
    """How many request bodies each client is sending now (used on the event loop only). A
    client with none is forgotten, so this holds at most as many clients as there are bodies
    being received."""

    def __init__(self) -> None:
        self._sending: dict[str, int] = {}

    def try_acquire(self, client: str, limit: int | None) -> bool:
        """Count one more body of `client`, unless it already sends `limit` (None: no limit)."""
        held = self._sending.get(client, 0)
        if limit is not None and held >= limit:
            return False
        self._sending[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self._sending.pop(client) - 1
        if held:
            self._sending[client] = held


def _bodies_by_client(request: Request) -> _BodiesByClient:
    """The app's `_BodiesByClient`, made on first use (it depends on no setting)."""
    state = request.app.state
    try:
        return state.rest_bodies_by_client
    except AttributeError:
        state.rest_bodies_by_client = _BodiesByClient()
        return state.rest_bodies_by_client


def _client_address(request: Request) -> str:
    """Who sends a request, for per-client bounds: its address (what uvicorn says, after a
    trusted proxy's `X-Forwarded-For`); an IPv6 client's /64, which one host usually holds
    whole and could spread over."""
    host = request.client.host if request.client is not None else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Body(Protocol):
    """A request's body, read and checked; `close()` frees what it holds (an upload's file)."""

    async def close(self) -> None: ...


BodyT = TypeVar("BodyT", bound=_Body)


def _check_model(model: str, aliases: Sequence[str], services: Services) -> None:
    if model != services.model_name and model not in aliases:
        raise RestError(
            404,
            "model_not_found",
            f"the model {model!r} is not served here; use {services.model_name!r} or one of "
            f"{', '.join(aliases)}",
            "model",
        )


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


# --- transcriptions and translations ----------------------------------------------------------

Timestamps = Literal["none", "segment", "word"]


@dataclass(slots=True)
class _UploadBody(Generic[FormT]):
    form: FormT
    upload: UploadFile

    async def close(self) -> None:
        await self.upload.close()


async def _read_transcription(
    request: Request, services: Services
) -> _UploadBody[TranscriptionForm]:
    return await _read_upload(request, services, TranscriptionForm, _check_transcription)


async def _read_translation(request: Request, services: Services) -> _UploadBody[TranslationForm]:
    return await _read_upload(request, services, TranslationForm, _check_translation)


async def _read_description(request: Request, services: Services) -> _UploadBody[DescriptionForm]:
    # `kind` and `response_format` are checked by the form itself.
    return await _read_upload(request, services, DescriptionForm, lambda form, backbone: None)


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


async def _read_upload(
    request: Request,
    services: Services,
    form_type: type[FormT],
    check: Callable[[FormT, Backbone], None],
) -> _UploadBody[FormT]:
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
    return _UploadBody(form, upload)


async def _transcription(
    request: Request, services: Services, body: _UploadBody[TranscriptionForm]
) -> Response:
    form, backbone, priority = body.form, services.backbone, services.settings.rest.priority
    audio, pieces = await _speech_pieces(body.upload, services)

    async def transcribe(samples: np.ndarray, timestamps: Timestamps) -> Transcription:
        return await backbone.transcribe(
            samples,
            language=form.language,
            prompt=form.prompt,
            temperature=form.temperature,
            timestamps=timestamps,
            priority=priority,
        )

    job = _TranscriptionJob(
        audio,
        pieces,
        transcribe,
        TranscriptFormat(form.response_format),
        form.timestamp_granularities,
        Transcript(_seconds(audio), form.language or "", form.temperature),
    )
    if form.stream:
        return _ReleasingStream(
            _transcript_events(job, request.app), media_type="text/event-stream"
        )
    return await _completed(request, job)


async def _translation(
    request: Request, services: Services, body: _UploadBody[TranslationForm]
) -> Response:
    form, backbone, priority = body.form, services.backbone, services.settings.rest.priority
    audio, pieces = await _speech_pieces(body.upload, services)

    async def translate(samples: np.ndarray, timestamps: Timestamps) -> Transcription:
        # Translations are not timed: srt, vtt and verbose_json get one cue per piece.
        return await backbone.translate(samples, temperature=form.temperature, priority=priority)

    # OpenAI names the language of a translation in words, and it is always English.
    transcript = Transcript(_seconds(audio), "english", form.temperature, task="translate")
    job = _TranscriptionJob(
        audio, pieces, translate, TranscriptFormat(form.response_format), (), transcript
    )
    return await _completed(request, job)


async def _description(
    request: Request, services: Services, body: _UploadBody[DescriptionForm]
) -> Response:
    form, settings = body.form, services.settings.rest
    limit = min(settings.max_audio_seconds, MAX_DESCRIBED_SECONDS)
    too_long = (
        f"the audio is longer than {limit:g} s, the most a description hears at once; "
        "describe it in parts"
    )
    audio = await asyncio.to_thread(_decode, body.upload, limit, too_long)
    text = ""
    if np.abs(audio).max() >= SILENT_PEAK:
        described = services.backbone.describe(audio, form.kind, priority=settings.priority)
        if (done := await _unless_disconnected(request, described)) is None:
            log.info("a description abandoned by its client")
            return Response(status_code=499)
        text = done.result().strip()
    if form.response_format == "text":
        return PlainTextResponse(text + "\n", media_type=TranscriptFormat.TEXT.media_type)
    return JSONResponse({"text": text})


def _seconds(audio: np.ndarray) -> float:
    return len(audio) / INPUT_SAMPLE_RATE


async def _speech_pieces(upload: UploadFile, services: Services) -> tuple[np.ndarray, list[Piece]]:
    """The upload decoded and cut at silences into pieces the backbone takes (worker threads)."""
    settings = services.settings.rest
    audio = await asyncio.to_thread(_decode, upload, settings.max_audio_seconds)
    params = SegmenterParams(
        max_piece_s=settings.max_piece_seconds, min_piece_s=settings.max_piece_seconds / 3
    )
    pieces = await asyncio.to_thread(Segmenter(services.new_vad(), params).split, audio)
    return audio, pieces


async def _completed(request: Request, job: _TranscriptionJob) -> Response:
    """The whole file's answer, or 499 once its client has hung up."""
    if await _unless_disconnected(request, job.complete()) is None:
        # Nobody is waiting for the rest of a long file: the backbone stopped working on it.
        log.info("%s abandoned by its client after %d pieces", job.transcript.task, job.done)
        return Response(status_code=499)
    return _transcript_response(job)


async def _unless_disconnected(
    request: Request, work: Coroutine[Any, Any, T]
) -> asyncio.Task[T] | None:
    """Run `work` to its end (its task, done), or cancel it as soon as the client hangs up
    (None)."""

    async def disconnected() -> None:
        # The body has been read: what comes next is the end of the connection.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.create_task(work)
    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Whatever ended the wait (the work, the client, this request being cancelled),
        # neither task outlives it; cancelling a finished task does nothing.
        watcher.cancel()
        task.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)
    if task.cancelled():
        return None
    task.result()  # the work's own failure, if any
    return task


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


def _decode(upload: UploadFile, max_seconds: float, too_long: str | None = None) -> np.ndarray:
    """The upload as 16 kHz mono; `too_long`, when given, says why audio over `max_seconds`
    is refused."""
    try:
        if upload.size == 0:
            raise EmptyAudio("the file is empty")
        return decode_upload(upload.file, max_seconds)
    except AudioTooLong as e:
        raise RestError(400, e.code, too_long or e.message, "file") from e
    except AudioFileError as e:
        raise RestError(400, e.code, e.message, "file") from e


Recognise = Callable[[np.ndarray, Timestamps], Awaitable[Transcription]]
"""One piece of speech to text (the backbone's transcribe or translate), timed as asked."""


class _TranscriptionJob:
    """One file's pieces through the backbone (`recognise`), in order, into `transcript`."""

    def __init__(
        self,
        audio: np.ndarray,
        pieces: list[Piece],
        recognise: Recognise,
        fmt: TranscriptFormat,
        granularities: Collection[str],
        transcript: Transcript,
    ) -> None:
        self._audio = audio
        self._pieces = pieces
        self._recognise = recognise
        self.format = fmt
        granularities = set(granularities) or {"segment"}
        verbose = self.format is TranscriptFormat.VERBOSE_JSON
        self.with_segments = verbose and "segment" in granularities
        """What `verbose_json` lists (OpenAI: segments by default, words when asked)."""
        self.with_words = verbose and "word" in granularities
        self._timestamps: Timestamps = (
            "word"
            if self.with_words
            else "none"
            if self.format in (TranscriptFormat.JSON, TranscriptFormat.TEXT)
            else "segment"
        )
        self.transcript = transcript
        self.done = 0

    async def complete(self) -> None:
        async for _ in self.run():
            pass

    async def run(self) -> AsyncIterator[str]:
        """Piece by piece; yield each piece's text once it is in the transcript."""
        transcript = self.transcript
        for piece in self._pieces:
            if not piece.has_speech:
                continue
            result = await self._recognise(piece.samples(self._audio), self._timestamps)
            self.done += 1
            if result.language and not transcript.language:
                transcript.language = result.language
            if not (text := result.text.strip()):
                continue
            transcript.texts.append(text)
            if self._timestamps != "none":
                seek = round(piece.offset_s * 100)
                segments = to_file_time(result, piece).segments or (
                    Segment(piece.offset_s, piece.offset_s + piece.duration_s, text),
                )
                transcript.segments.extend(TimedSegment(s, seek) for s in segments)
            yield text


def _transcript_response(job: _TranscriptionJob) -> Response:
    fmt, transcript = job.format, job.transcript
    match fmt:
        case TranscriptFormat.JSON:
            return JSONResponse(json_body(transcript))
        case TranscriptFormat.VERBOSE_JSON:
            body = verbose_json_body(transcript, segments=job.with_segments, words=job.with_words)
            return JSONResponse(body)
        case TranscriptFormat.TEXT:
            return PlainTextResponse(text_body(transcript), media_type=fmt.media_type)
        case TranscriptFormat.SRT:
            return PlainTextResponse(srt_body(transcript), media_type=fmt.media_type)
        case TranscriptFormat.VTT:
            return PlainTextResponse(vtt_body(transcript), media_type=fmt.media_type)


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _error_event(e: Exception, endpoint: str, app: FastAPI) -> bytes:
    """A failure after the stream began, as its last event (the status line has left)."""
    if isinstance(e, BackboneError):
        log.warning("backbone failed a streamed REST request: %s", e)
        error = backbone_rest_error(e, app)
    else:
        log.error("a streamed REST request failed", exc_info=e)
        error = SERVER_ERROR
    metrics.REST_ERRORS.labels(endpoint=endpoint, code=error.code).inc()
    return _sse({"type": "error", **error.body()})


async def _transcript_events(job: _TranscriptionJob, app: FastAPI) -> AsyncIterator[bytes]:
    first = True
    try:
        async with aclosing(job.run()) as texts:
            async for text in texts:
                yield _sse(delta_event(text if first else " " + text))
                first = False
    except Exception as e:
        yield _error_event(e, "/v1/audio/transcriptions", app)
        return
    yield _sse(done_event(job.transcript))


# --- speech -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _SpeechBody:
    speech: SpeechRequest

    async def close(self) -> None:
        pass


async def _read_speech(request: Request, services: Services) -> _SpeechBody:
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
    try:
        voice = services.voices.resolve(speech.voice)  # an alias speaks as its voice
    except UnknownVoiceError as e:
        raise RestError(400, "unknown_voice", str(e), "voice") from e
    return _SpeechBody(speech.model_copy(update={"voice": voice}))


async def _speech(request: Request, services: Services, body: _SpeechBody) -> Response:
    settings, speech, backbone = services.settings.rest, body.speech, services.backbone
    headers, extension = {}, {}
    if speech.instructions:
        verdict = "followed" if backbone.follows_instructions else "ignored"
        headers["X-Voxgate-Instructions"] = extension["instructions"] = verdict
    encoder = SpeechEncoder(speech.response_format)
    chunks = _synthesize(backbone, speech, settings.priority)
    audio = await _primed(_encoded(chunks, encoder))
    if speech.stream_format == "sse":
        return _ReleasingStream(
            _speech_events(audio, encoder, extension, request.app),
            media_type="text/event-stream",
            headers=headers,
        )
    media_type = speech.response_format.media_type
    return _ReleasingStream(audio, media_type=media_type, headers=headers)


def _speakable_pieces(text: str) -> list[str]:
    """The text cut where a TTS call may end: sentences, and clauses of long sentences."""
    splitter = ClauseSplitter(min_clause_words=SPEECH_MIN_CLAUSE_WORDS, max_words=60)
    return splitter.push(text) + splitter.flush()


async def _synthesize(
    backbone: Backbone, speech: SpeechRequest, priority: int
) -> AsyncIterator[AudioChunk]:
    for piece in _speakable_pieces(speech.input):
        chunks = backbone.synthesize(
            piece,
            voice=speech.voice,
            speed=speech.speed,
            instructions=speech.instructions,
            priority=priority,
        )
        async with aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk


async def _encoded(
    chunks: AsyncIterator[AudioChunk], encoder: SpeechEncoder
) -> AsyncIterator[bytes]:
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if data := await asyncio.to_thread(encoder.encode, chunk):
                yield data
    if data := await asyncio.to_thread(encoder.finish):
        yield data


async def _primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Run `stream` to its first item now, so that a failure before any output is still an
    HTTP error (with its status), not a stream cut short after a 200."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def chained() -> AsyncIterator[bytes]:
        async with aclosing(stream):  # type: ignore[type-var]
            if first is not None:
                yield first
                async for item in stream:
                    yield item

    return chained()


async def _speech_events(
    audio: AsyncIterator[bytes], encoder: SpeechEncoder, extension: dict[str, Any], app: FastAPI
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(audio):  # type: ignore[type-var]
            async for data in audio:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except Exception as e:
        yield _error_event(e, "/v1/audio/speech", app)
        return
    # voxgate does not meter speech in tokens; OpenAI's `usage` is there, with zeros.
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    extension = extension | {"audio_seconds": round(encoder.seconds, 3)}
    yield _sse({"type": "speech.audio.done", "usage": usage, "x_voxgate": extension})
