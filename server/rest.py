"""OpenAI's REST speech API: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`,
`POST /v1/audio/speech` and `GET /v1/audio/voices`, and voxgate's own
`POST /v1/audio/descriptions` (audio in, a description in words out), on the same backbone as
`/v1/realtime`. This is the router: it parses a request, calls the serving layer
(`server/serving_transcription.py`, `server/serving_speech.py`) and shapes its answer.

Every request passes one gate first (`_serve`): the API key (a router dependency), then
admission (`server/admission.py`): the server open, its body read whole under a deadline and a
size cap and validated (`server/rest_bodies.py`), then a slot of `rest.max_concurrent_requests`
(a streamed answer holds its slot to its last byte). Every failure is OpenAI's error body
(`RestError`), also inside an SSE stream (an `error` event), whatever raised it
(`server/rest_errors.py`).

With feedback captured, a speech answer names its id in the feedback store
(`X-Voxgate-Response-Id`), and `x_voxgate.candidates: 2` answers two candidates in one JSON
object (`server/serving_speech.py`); both are rated through `server/feedback_routes.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from voxgate.model.types import BackboneError
from voxgate.server import metrics, serving_speech, serving_transcription
from voxgate.server.audio_files import SpeechFormat
from voxgate.server.auth import API_KEY
from voxgate.server.errors import RestError
from voxgate.server.openapi_schemas import (
    ERROR_RESPONSES,
    inline_refs,
    json_request_body,
    multipart_request_body,
)
from voxgate.server.rest_bodies import (
    Body,
    SpeechBody,
    UploadBody,
    read_description,
    read_speech,
    read_transcription,
    read_translation,
)
from voxgate.server.rest_errors import SERVER_ERROR, backbone_rest_error
from voxgate.server.rest_requests import (
    DescriptionForm,
    SpeechRequest,
    TranscriptionForm,
    TranslationForm,
    UploadForm,
)
from voxgate.server.services import Services
from voxgate.server.serving_speech import SpeechCandidates
from voxgate.server.serving_transcription import TranscriptionJob
from voxgate.server.transcripts import (
    TranscriptFormat,
    json_body,
    srt_body,
    text_body,
    verbose_json_body,
    vtt_body,
)

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(API_KEY)])

INSTRUCTIONS_HEADER = "X-Voxgate-Instructions"
"""Whether a speech answer followed the request's instructions (`followed` or `ignored`)."""
RESPONSE_ID_HEADER = "X-Voxgate-Response-Id"
"""A speech answer's id in the feedback store (only when the server captures feedback)."""

BodyT = TypeVar("BodyT", bound=Body)
T = TypeVar("T")
RouteHandler = Callable[[Request], Awaitable[Response]]


# --- routes (thin: the gate, then a handler) --------------------------------------------------


def _upload_route(
    path: str, form: type[UploadForm], answer: str, media_types: Sequence[str]
) -> Callable[[RouteHandler], RouteHandler]:
    """A multipart upload endpoint, documented: `form`'s fields, `answer` (200) in JSON or
    `media_types`, and its errors."""
    return router.post(
        path,
        response_model=None,
        openapi_extra=multipart_request_body(form),
        responses={
            200: {"description": answer, "content": {t: {} for t in media_types}},
            415: {"description": "Not multipart/form-data"},
            **ERROR_RESPONSES,
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
    return await _serve(request, read_transcription, _transcription)


@_upload_route(
    "/v1/audio/translations",
    TranslationForm,
    "The English text in `response_format`",
    ("text/plain", "text/vtt"),
)
async def create_translation(request: Request) -> Response:
    """Translate speech in an audio file into English text (OpenAI's
    `audio.translations.create`); 400 `unsupported_feature` on a backbone that cannot."""
    return await _serve(request, read_translation, _translation)


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
    return await _serve(request, read_description, _description)


@router.post(
    "/v1/audio/speech",
    response_model=None,
    openapi_extra=json_request_body(SpeechRequest),
    responses={
        200: {
            "description": (
                "Audio in `response_format`, streamed; or SSE with `stream_format=sse`; or, with "
                "`x_voxgate.candidates: 2`, both candidates in one JSON object"
            ),
            "headers": {
                RESPONSE_ID_HEADER: {
                    "description": (
                        "The answer's id in the feedback store, to rate it with "
                        "`POST /v1/feedback` (only when the server captures feedback)"
                    ),
                    "schema": {"type": "string"},
                }
            },
            "content": {f.media_type: {} for f in SpeechFormat}
            | {
                "text/event-stream": {},
                "application/json": {"schema": inline_refs(SpeechCandidates.model_json_schema())},
            },
        },
        **ERROR_RESPONSES,
    },
)
async def create_speech(request: Request) -> Response:
    """Speak a text (OpenAI's `audio.speech.create`). With feedback captured, the answer's id
    is in the `X-Voxgate-Response-Id` header (and SSE's `speech.audio.done` event); voxgate's
    `x_voxgate.candidates: 2` answers two candidates to compare instead."""
    return await _serve(request, read_speech, _speech)


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict[str, Any]:
    """The voices `/v1/audio/speech` takes, each with its aliases (other names it answers to,
    OpenAI's voice names by default); the first is the realtime default."""
    services: Services = request.app.state.services
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
        retry_after_s = request.app.state.services.settings.rest.retry_after_s
        return await rest_error(request, backbone_rest_error(exc, retry_after_s))

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this handler; the client gets OpenAI's shape.
        metrics.rest_error(request.scope, "server_error")
        return JSONResponse(SERVER_ERROR.body(), status_code=500)

    app.add_exception_handler(RestError, rest_error)
    app.add_exception_handler(BackboneError, backbone_error)
    app.add_exception_handler(Exception, server_error)


# --- the gate ---------------------------------------------------------------------------------


class ReleasingStream(StreamingResponse):
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


async def _serve(
    request: Request,
    read: Callable[[Request, Services], Awaitable[BodyT]],
    handler: Callable[[Request, Services, BodyT], Awaitable[Response]],
) -> Response:
    """The gate: admission, then the body (`read`) under a deadline, then a slot for
    `handler`. The body is read before a request slot is taken (`server/admission.py`)."""
    services: Services = request.app.state.services
    admission = services.rest
    admission.check_open(
        draining=services.drain.draining,
        engine_alive=not services.engine_watch.dead and services.backbone.is_healthy,
    )
    async with admission.receiving(request.client.host if request.client is not None else ""):
        body = await read(request, services)
    try:
        admission.take_request_slot()
        try:
            response = await handler(request, services, body)
        except BaseException:
            admission.requests.release()
            raise
    finally:
        await body.close()
    if isinstance(response, ReleasingStream):
        response.on_close = admission.requests.release
    else:
        admission.requests.release()
    return response


# --- handlers: the serving layer's answer as a response ---------------------------------------


async def _transcription(
    request: Request, services: Services, body: UploadBody[TranscriptionForm]
) -> Response:
    job = await serving_transcription.transcription(body.upload, body.form, services)
    if body.form.stream:
        events = job.events(services.settings.rest.retry_after_s)
        return ReleasingStream(events, media_type="text/event-stream")
    return await _completed(request, job)


async def _translation(
    request: Request, services: Services, body: UploadBody[TranslationForm]
) -> Response:
    job = await serving_transcription.translation(body.upload, body.form, services)
    return await _completed(request, job)


async def _description(
    request: Request, services: Services, body: UploadBody[DescriptionForm]
) -> Response:
    audio = await serving_transcription.described_audio(body.upload, services)
    text = ""
    if serving_transcription.holds_sound(audio):
        described = serving_transcription.describe(audio, body.form, services)
        if (done := await _unless_disconnected(request, described)) is None:
            log.info("a description abandoned by its client")
            return Response(status_code=499)
        text = done.result()
    if body.form.response_format == "text":
        return PlainTextResponse(text + "\n", media_type=TranscriptFormat.TEXT.media_type)
    return JSONResponse({"text": text})


async def _speech(request: Request, services: Services, body: SpeechBody) -> Response:
    speech = body.speech
    if speech.candidates > 1:
        return await _speech_candidates(request, services, speech)
    spoken = await serving_speech.speak(speech, services)
    headers = {}
    if spoken.instructions is not None:
        headers[INSTRUCTIONS_HEADER] = spoken.instructions
    if spoken.response_id is not None:
        headers[RESPONSE_ID_HEADER] = spoken.response_id
    if speech.stream_format == "sse":
        events = spoken.events(services.settings.rest.retry_after_s)
        return ReleasingStream(events, media_type="text/event-stream", headers=headers)
    media_type = speech.response_format.media_type
    return ReleasingStream(spoken.audio, media_type=media_type, headers=headers)


async def _speech_candidates(
    request: Request, services: Services, speech: SpeechRequest
) -> Response:
    """Both candidates in one JSON answer, or 499 once the client has hung up."""
    spoken = serving_speech.speak_candidates(speech, services)
    if (done := await _unless_disconnected(request, spoken)) is None:
        log.info("speech candidates abandoned by their client")
        return Response(status_code=499)
    # The audio is base64 in the JSON: megabytes to serialise, off the event loop.
    content = await asyncio.to_thread(done.result().model_dump_json)
    headers = {}
    if (instructions := serving_speech.instructions_outcome(speech, services.backbone)) is not None:
        headers[INSTRUCTIONS_HEADER] = instructions
    return Response(content, media_type="application/json", headers=headers)


async def _completed(request: Request, job: TranscriptionJob) -> Response:
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


def _transcript_response(job: TranscriptionJob) -> Response:
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
