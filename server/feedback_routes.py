"""`POST /v1/feedback` and `POST /v1/feedback/preferences`: a person's rating of an answer, and
the candidate of a pair they preferred, into the feedback store (`server/feedback_store.py`).

Behind the API key, or a client secret (a browser page rates what it heard). The body is read
under REST admission (`server/admission.py`: a body slot, `rest.body_timeout_s`) and at most
`feedback.max_body_bytes`; the store's refusals become OpenAI's error bodies here, and a server
with feedback off answers 404 `feedback_disabled` before reading anything.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from voxgate.server.admission import read_small_body
from voxgate.server.auth import API_KEY
from voxgate.server.errors import RestError, parse_json_body
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.feedback_types import (
    FeedbackDisabled,
    FeedbackError,
    FeedbackRecord,
    FeedbackRequest,
    PairRecord,
    PreferenceRequest,
    UnknownPair,
    UnknownResponse,
)
from voxgate.server.openapi_schemas import json_request_body
from voxgate.server.services import Services

router = APIRouter(dependencies=[Depends(API_KEY)])

_ERRORS = {
    400: {"description": "Bad input (`{error: {message, type, param, code}}`)"},
    401: {"description": "Missing or wrong API key"},
    404: {"description": "Unknown response or pair, or feedback is off (`feedback_disabled`)"},
    408: {"description": "The body did not arrive in time"},
    413: {"description": "Request body too large"},
    429: {"description": "Too many request bodies being received (see Retry-After)"},
}
_NOT_FOUND = (FeedbackDisabled, UnknownResponse, UnknownPair)


@router.post("/v1/feedback", openapi_extra=json_request_body(FeedbackRequest), responses=_ERRORS)
async def create_feedback(request: Request) -> FeedbackRecord:
    """Rate an answer (a later rating of the same answer replaces this one)."""
    store, body = await _read(request, FeedbackRequest)
    try:
        return await store.add_feedback(
            body.response_id, body.rating, body.scale, body.tags, body.comment
        )
    except FeedbackError as e:
        raise feedback_rest_error(e) from e


@router.post(
    "/v1/feedback/preferences",
    openapi_extra=json_request_body(PreferenceRequest),
    responses=_ERRORS,
)
async def create_preference(request: Request) -> PairRecord:
    """Say which candidate of a pair is preferred (a later choice replaces this one)."""
    store, body = await _read(request, PreferenceRequest)
    try:
        return await store.choose(body.pair_id, body.chosen_response_id)
    except FeedbackError as e:
        raise feedback_rest_error(e) from e


def feedback_rest_error(e: FeedbackError) -> RestError:
    """A refusal of the store as a REST error: 404 for what is not there (or not on)."""
    return RestError(404 if isinstance(e, _NOT_FOUND) else 400, e.code, str(e), e.param)


RequestT = TypeVar("RequestT", bound=BaseModel)


async def _read(request: Request, model: type[RequestT]) -> tuple[FeedbackStore, RequestT]:
    services: Services = request.app.state.services
    store: FeedbackStore = services.feedback
    if not store.enabled:
        raise feedback_rest_error(FeedbackDisabled())
    limit = services.settings.feedback.max_body_bytes
    async with services.rest.receiving(request.client.host if request.client else ""):
        body = await read_small_body(request, limit)
    return store, await asyncio.to_thread(parse_json_body, body, model)
