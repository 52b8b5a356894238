"""`POST /v1/feedback` and `POST /v1/feedback/preferences` in a small app of their own (the
routes, the REST error handlers, a feedback store on SQLite owned by the lifespan): answers,
every refusal as OpenAI's error body, the API key, and feedback off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from feedback_data import START, Clock, captured

from voxgate.server import feedback_routes, rest
from voxgate.server.admission import RestAdmission
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.settings import Settings

KEY = "k" * 32


def feedback_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with FeedbackStore.start(settings.feedback, settings.home, Clock()) as store:
            app.state.services = SimpleNamespace(
                settings=settings, feedback=store, rest=RestAdmission(settings.rest)
            )
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(feedback_routes.router)
    rest.install_error_handlers(app)
    return app


def client_of(settings: Settings) -> TestClient:
    return TestClient(feedback_app(settings), headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app with two answers and a pair of them kept."""
    feedback = FeedbackSettings(enabled=True, max_body_bytes=4096)
    with client_of(Settings(home=tmp_path, api_key=KEY, feedback=feedback)) as client:
        store = client.app.state.services.feedback
        for response_id in ("resp_1", "resp_2"):
            client.portal.call(store.record_response, captured(response_id))
        client.portal.call(store.record_pair, "pair_1", "sess_a", "resp_1", "resp_2")
        yield client


def error(response: Any, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert (body["code"], body["param"], body["type"]) == (code, param, "invalid_request_error")


def test_a_rating(client: TestClient) -> None:
    response = client.post(
        "/v1/feedback",
        json={"response_id": "resp_1", "rating": 4, "scale": "stars", "tags": ["ok"]},
    )
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "object": "feedback",
        "id": body["id"],
        "response_id": "resp_1",
        "rating": 4,
        "scale": "stars",
        "tags": ["ok"],
        "comment": None,
        "created_at": int(START.timestamp()),
    }
    thumbs = client.post("/v1/feedback", json={"response_id": "resp_1", "rating": -1})
    assert thumbs.json()["scale"] == "thumbs"


RATED = {"response_id": "resp_1", "rating": 1}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"response_id": "nope", "rating": 1}, 404, "response_not_found", "response_id"),
        (RATED | {"rating": 3}, 400, "rating_out_of_range", "rating"),
        (RATED | {"rating": 0, "scale": "stars"}, 400, "rating_out_of_range", "rating"),
        (RATED | {"comment": "x" * 2001}, 400, "string_above_max_length", "comment"),
        (RATED | {"tags": ["t"] * 9}, 400, "array_above_max_length", "tags"),
        (RATED | {"tags": ["t", ""]}, 400, "invalid_value", "tags[1]"),
        (RATED | {"rating": "1"}, 400, "invalid_type", "rating"),
        (RATED | {"scale": "likert"}, 400, "invalid_value", "scale"),
        (RATED | {"mood": "x"}, 400, "unknown_parameter", "mood"),
        ({"rating": 1}, 400, "missing_required_parameter", "response_id"),
        (RATED | {"comment": "x" * 5000}, 413, "request_too_large", None),
    ],
)
def test_refused_ratings(
    client: TestClient, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    error(client.post("/v1/feedback", json=body), status, code, param)


def test_a_body_that_is_not_json(client: TestClient) -> None:
    error(client.post("/v1/feedback", content=b"{not json"), 400, "invalid_json", None)


def test_the_preferred_candidate(client: TestClient) -> None:
    response = client.post(
        "/v1/feedback/preferences", json={"pair_id": "pair_1", "chosen_response_id": "resp_2"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "object": "feedback.pair",
        "id": "pair_1",
        "session_id": "sess_a",
        "response_ids": ["resp_1", "resp_2"],
        "chosen_response_id": "resp_2",
        "created_at": int(START.timestamp()),
        "chosen_at": int(START.timestamp()),
    }


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"pair_id": "nope", "chosen_response_id": "resp_2"}, 404, "pair_not_found", "pair_id"),
        (
            {"pair_id": "pair_1", "chosen_response_id": "resp_9"},
            400,
            "response_not_in_pair",
            "chosen_response_id",
        ),
        ({"pair_id": "pair_1"}, 400, "missing_required_parameter", "chosen_response_id"),
    ],
)
def test_refused_preferences(
    client: TestClient, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    error(client.post("/v1/feedback/preferences", json=body), status, code, param)


def test_the_api_key_is_required(client: TestClient) -> None:
    body = {"response_id": "resp_1", "rating": 1}
    response = client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_feedback_off_is_refused_before_the_body(tmp_path: Path) -> None:
    with client_of(Settings(home=tmp_path, api_key=KEY)) as client:
        for path in ("/v1/feedback", "/v1/feedback/preferences"):
            error(client.post(path, content=b"{not json"), 404, "feedback_disabled", None)
    assert list(tmp_path.iterdir()) == []
