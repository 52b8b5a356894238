"""Feedback in realtime sessions, through the real app over a fake backbone (in process, the
feedback store on SQLite in the test's folder): answers captured as the backbone saw them,
ratings and preferences over the socket, every bad field refused with its code, param and
event_id on a connection that stays usable, candidate pairs, nothing kept with capture off,
and a capture that never breaks the session (`test_feedback_capture.py` drives the capture's
writer on its own)."""

from __future__ import annotations

import base64
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fakes import FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import app_over, feedback_on, pcm, send_audio
from prometheus_client import REGISTRY
from realtime_wire import receive, receive_until, text_item
from starlette.testclient import WebSocketTestSession

from voxgate.server.feedback_schema import feedback, pairs, responses
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.feedback_store import FeedbackStore
from voxgate.streaming import audio

pytestmark = pytest.mark.timeout(30)

REPLIES = ("voxgate.feedback.created", "voxgate.preference.created", "error")
CANDIDATE_PRIORITY = 10
"""The REST priority by default: a second candidate is batch work."""


@pytest.fixture
def settings(tmp_path: Path) -> FeedbackSettings:
    return feedback_on(tmp_path, max_comment_chars=20, max_tags=2, max_tag_chars=8)


@pytest.fixture
def app(fake: FakeBackbone, settings: FeedbackSettings) -> FastAPI:
    return app_over(fake, feedback=settings)


# --- helpers ----------------------------------------------------------------------------------


def answer(ws: WebSocketTestSession, text: str = "What is the capital of France?") -> dict:
    """A text turn answered: its `response.done`."""
    ws.send_json(text_item(text))
    ws.send_json({"type": "response.create"})
    done = receive_until(ws, "response.done")[-1]
    assert done["response"]["status"] == "completed", done
    return done


def reply(ws: WebSocketTestSession, event: dict[str, Any]) -> dict[str, Any]:
    """Send a feedback event; its reply (created, or an `error`)."""
    ws.send_json(event)
    for _ in range(1000):
        if (got := receive(ws))["type"] in REPLIES:
            return got
    raise AssertionError(f"no reply to {event}")


def rate(ws: WebSocketTestSession, response_id: str, rating: int = 1, **fields: Any) -> dict:
    """Rate an answer; the `voxgate.feedback.created`. Everything captured before is stored
    once it comes (the rating waits for it)."""
    event = {"type": "voxgate.feedback.create", "response_id": response_id, "rating": rating}
    got = reply(ws, event | fields)
    assert got["type"] == "voxgate.feedback.created", got
    return got


def ask_pair(ws: WebSocketTestSession, text: str = "Tell me a joke.") -> list[dict]:
    """A text turn answered by two candidates: every event up to the second `response.done`."""
    ws.send_json(text_item(text))
    ws.send_json({"type": "response.create", "response": {"x_voxgate": {"candidates": 2}}})
    return receive_until(ws, "response.done") + receive_until(ws, "response.done")


def rows(client: TestClient, table: sa.Table = responses) -> dict[str, dict[str, Any]]:
    """The store's rows of `table`, by id."""
    store: FeedbackStore = client.app.state.services.feedback
    assert store.database is not None
    with store.database.engine.connect() as connection:
        found = connection.execute(sa.select(table)).mappings().all()
    return {row["id"]: dict(row) for row in found}


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def refused(got: dict[str, Any], code: str, param: str | None, event_id: str | None) -> None:
    assert got["type"] == "error", got
    error = got["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, event_id), error


# --- capture and ratings ----------------------------------------------------------------------


def test_the_session_says_answers_are_captured(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        created = receive(ws)["session"]
        ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
        updated = receive_until(ws, "session.updated")[-1]["session"]
    for session in (created, updated):
        assert session["x_voxgate"]["feedback"] == {"enabled": True, "audio": False}


def test_a_rating_round_trip(client: TestClient, ws: WebSocketTestSession) -> None:
    response_id = answer(ws)["response"]["id"]
    up = counted("voxgate_feedback_total", regime="realtime", rating="up")
    four = counted("voxgate_feedback_total", regime="realtime", rating="4")
    got = rate(ws, response_id, 1, event_id="evt_1", tags=["clear"], comment="Spot on.")
    record = got["feedback"]
    assert got["event_id"].startswith("event_")  # the server's own, as for every event
    assert record == {
        "object": "feedback",
        "id": record["id"],
        "response_id": response_id,
        "rating": 1,
        "scale": "thumbs",
        "tags": ["clear"],
        "comment": "Spot on.",
        "created_at": record["created_at"],
    }
    again = rate(ws, response_id, 4, scale="stars")["feedback"]
    (kept,) = rows(client, feedback).values()
    assert (kept["id"], kept["rating"], kept["scale"]) == (again["id"], 4, "stars")
    assert counted("voxgate_feedback_total", regime="realtime", rating="up") == up + 1
    assert counted("voxgate_feedback_total", regime="realtime", rating="4") == four + 1


def test_the_captured_answer_is_what_the_backbone_saw(fake: FakeBackbone, tmp_path: Path) -> None:
    app = app_over(fake, feedback=feedback_on(tmp_path, audio=True))
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        session_id = receive(ws)["session"]["id"]
        ws.send_json(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Be kind."}}
        )
        receive_until(ws, "session.updated")
        first = answer(ws, "Hello?")
        ws.send_json(text_item("What is the capital of France?"))
        ws.send_json({"type": "response.create"})
        events = receive_until(ws, "response.done")
        rate(ws, events[-1]["response"]["id"])
        kept = rows(client)
    done = events[-1]
    row = kept[done["response"]["id"]]
    call = fake.respond_calls[-1]
    said = [{"role": t.role.value, "content": t.text} for t in call.conversation]
    assert row["context"] == [{"role": "system", "content": call.options.instructions}, *said]
    assert row["context"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": fake.reply_text},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert first["response"]["id"] in kept
    sent = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert row["text"] == fake.reply_text
    assert (row["session_id"], row["regime"], row["model"]) == (
        session_id,
        "realtime",
        "voxgate-fake",
    )
    assert row["voice"] == done["response"]["audio"]["output"]["voice"]
    assert (row["outcome"], row["heard_ms"]) == ("completed", None)
    assert row["audio_ms"] == audio.samples_to_ms(len(sent) // 2, 24_000)
    timings_ms = {stage: round(seconds * 1000, 1) for stage, seconds in row["timings"].items()}
    assert timings_ms == done["x_voxgate"]["timings_ms"]
    # Completed when response.done was sent: the first audio's send is the writer's mark.
    assert {"lm_first_token", "lm_to_first_audio"} <= timings_ms.keys()
    with wave.open(str(tmp_path / "audio" / row["audio_path"])) as kept_audio:
        assert kept_audio.getframerate() == 24_000
        assert kept_audio.readframes(kept_audio.getnframes()) == sent  # what the client heard


def test_a_barge_in_is_captured_as_interrupted_with_what_was_heard(
    client: TestClient, fake: FakeBackbone, speak
) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    speech = speak("Hello there, how are you today?")
    turn = pcm(np.concatenate([speech, np.zeros(16000, np.float32)]))
    with client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        send_audio(ws, turn)
        started = receive_until(ws, "response.output_audio.delta")[-1]
        fake.reply = ["Okay."]  # the answer to the interruption
        send_audio(ws, turn)
        interrupted = receive_until(ws, "response.done")[-1]["response"]
        assert interrupted["status_details"]["reason"] == "turn_detected"
        after = receive_until(ws, "response.done")[-1]["response"]["id"]
        ws.send_json(
            {
                "type": "conversation.item.truncate",
                "item_id": started["item_id"],
                "content_index": 0,
                "audio_end_ms": 40,
            }
        )
        receive_until(ws, "conversation.item.truncated")
        rate(ws, after)  # waits for the truncation, captured before it
        row = rows(client)[interrupted["id"]]
    assert (row["outcome"], row["heard_ms"]) == ("interrupted", 40)
    assert row["text"].startswith("word")  # what it had said when it was cut
    assert rows(client)[after]["outcome"] == "completed"


def test_a_cancelled_answer_is_captured_as_cancelled(
    client: TestClient, ws: WebSocketTestSession, fake: FakeBackbone
) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    ws.send_json(text_item("hi"))
    ws.send_json({"type": "response.create"})
    created = receive_until(ws, "response.created")[-1]["response"]
    ws.send_json({"type": "response.cancel", "response_id": created["id"]})
    done = receive_until(ws, "response.done")[-1]["response"]
    assert done["status_details"]["reason"] == "client_cancelled"
    rate(ws, created["id"], -1)
    assert rows(client)[created["id"]]["outcome"] == "cancelled"


def test_a_candidate_pair(client: TestClient, ws: WebSocketTestSession, fake: FakeBackbone) -> None:
    events = ask_pair(ws)
    dones = [e for e in events if e["type"] == "response.done"]
    first, second = (done["response"] for done in dones)
    pair_id = dones[0]["x_voxgate"]["pair"]["id"]
    assert [done["x_voxgate"]["pair"] for done in dones] == [
        {"id": pair_id, "candidate": 0},
        {"id": pair_id, "candidate": 1},
    ]
    kinds = [(e["type"], e.get("response", {}).get("id")) for e in events]
    # Candidate 1 starts once candidate 0 is over, out of the conversation.
    assert kinds.index(("response.created", second["id"])) > kinds.index(
        ("response.done", first["id"])
    )
    assert (first["conversation_id"], second["conversation_id"]) == ("auto", None)
    assert [item["status"] for r in (first, second) for item in r["output"]] == ["completed"] * 2
    added = {e["item"]["id"] for e in events if e["type"] == "conversation.item.added"}
    assert first["output"][0]["id"] in added and second["output"][0]["id"] not in added
    ws.send_json({"type": "conversation.item.retrieve", "item_id": second["output"][0]["id"]})
    assert receive_until(ws, "error")[-1]["error"]["code"] == "item_retrieve_invalid_item_id"
    zero, one = fake.respond_calls
    assert zero.conversation == one.conversation
    assert zero.options.instructions == one.options.instructions
    assert (zero.options.priority, one.options.priority) == (0, CANDIDATE_PRIORITY)

    preferred = counted("voxgate_feedback_preferences_total", regime="realtime")
    got = reply(
        ws,
        {
            "type": "voxgate.preference.create",
            "event_id": "evt_pick",
            "pair_id": pair_id,
            "chosen_response_id": second["id"],
        },
    )
    assert got["type"] == "voxgate.preference.created", got
    assert got["pair"]["response_ids"] == [first["id"], second["id"]]
    assert got["pair"]["chosen_response_id"] == second["id"]
    assert counted("voxgate_feedback_preferences_total", regime="realtime") == preferred + 1
    kept = rows(client)
    assert kept[first["id"]]["context"] == kept[second["id"]]["context"]
    assert rows(client, pairs)[pair_id]["chosen_response_id"] == second["id"]


# --- refusals ---------------------------------------------------------------------------------

BAD_RATINGS = [
    ({"response_id": "resp_unknown"}, "response_not_found", "response_id"),
    ({"rating": 0}, "rating_out_of_range", "rating"),
    ({"rating": 2}, "rating_out_of_range", "rating"),
    ({"rating": 6, "scale": "stars"}, "rating_out_of_range", "rating"),
    ({"rating": 0, "scale": "stars"}, "rating_out_of_range", "rating"),
    ({"rating": -1, "scale": "stars"}, "rating_out_of_range", "rating"),
    ({"rating": "1"}, "invalid_type", "rating"),
    ({"rating": True}, "invalid_type", "rating"),
    ({"rating": None}, "invalid_type", "rating"),
    ({"scale": "percent"}, "invalid_value", "scale"),
    ({"comment": "x" * 21}, "string_above_max_length", "comment"),
    ({"tags": ["a", "b", "c"]}, "array_above_max_length", "tags"),
    ({"tags": ["ok", "too long!"]}, "invalid_value", "tags[1]"),
    ({"tags": [""]}, "invalid_value", "tags[0]"),
    ({"tags": ["a\0"]}, "invalid_value", "tags[0]"),  # PostgreSQL keeps no NUL
    ({"comment": "a\0b"}, "invalid_value", "comment"),
    ({"response_id": "resp_\0"}, "response_not_found", "response_id"),
    ({"response_id": "r" * 65}, "string_above_max_length", "response_id"),
    ({"mood": "happy"}, "unknown_parameter", "mood"),
]


@pytest.mark.parametrize(("fields", "code", "param"), BAD_RATINGS)
def test_a_bad_rating_is_refused_and_the_session_carries_on(
    client: TestClient, ws: WebSocketTestSession, fields: dict, code: str, param: str
) -> None:
    event = {"type": "voxgate.feedback.create", "event_id": "evt_bad", "rating": 1}
    event["response_id"] = answer(ws)["response"]["id"]
    refused(reply(ws, event | fields), code, param, "evt_bad")
    answer(ws)
    assert not rows(client, feedback)


def test_a_rating_without_its_rating_is_refused(ws: WebSocketTestSession) -> None:
    event = {"type": "voxgate.feedback.create", "event_id": "e", "response_id": "resp_x"}
    refused(reply(ws, event), "missing_required_parameter", "rating", "e")


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"pair_id": "pair_unknown"}, "pair_not_found", "pair_id"),
        ({"pair_id": "pair_\0"}, "pair_not_found", "pair_id"),
        ({"chosen_response_id": "resp_other"}, "response_not_in_pair", "chosen_response_id"),
        ({"chosen_response_id": None}, "invalid_type", "chosen_response_id"),
        ({"pair_id": "p" * 65}, "string_above_max_length", "pair_id"),
    ],
)
def test_a_bad_preference_is_refused_and_the_session_carries_on(
    client: TestClient, ws: WebSocketTestSession, fields: dict, code: str, param: str
) -> None:
    dones = [e for e in ask_pair(ws) if e["type"] == "response.done"]
    event = {
        "type": "voxgate.preference.create",
        "event_id": "evt_bad",
        "pair_id": dones[0]["x_voxgate"]["pair"]["id"],
        "chosen_response_id": dones[0]["response"]["id"],
    }
    refused(reply(ws, event | fields), code, param, "evt_bad")
    answer(ws)
    assert all(row["chosen_response_id"] is None for row in rows(client, pairs).values())


@pytest.mark.parametrize(
    ("extension", "code", "param"),
    [
        ({"candidates": 3}, "invalid_value", "response.x_voxgate.candidates"),
        ({"candidates": 0}, "invalid_value", "response.x_voxgate.candidates"),
        ({"candidates": 2.0}, "invalid_type", "response.x_voxgate.candidates"),
        ({"candidate": 2}, "unknown_parameter", "response.x_voxgate.candidate"),
    ],
)
def test_a_bad_candidates_request_is_refused(
    ws: WebSocketTestSession, fake: FakeBackbone, extension: dict, code: str, param: str
) -> None:
    ws.send_json(text_item("hi"))
    create = {"type": "response.create", "event_id": "evt_c", "response": {"x_voxgate": extension}}
    ws.send_json(create)
    refused(receive_until(ws, "error")[-1], code, param, "evt_c")
    assert not fake.respond_calls
    answer(ws)


# --- capture off ------------------------------------------------------------------------------


def test_nothing_is_kept_with_capture_off(fake: FakeBackbone, tmp_path: Path) -> None:
    off = feedback_on(tmp_path, enabled=False)  # where it would keep them, were it on
    with TestClient(app_over(fake, feedback=off)) as client:
        assert client.app.state.services.feedback.database is None
        with client.websocket_connect("/v1/realtime") as ws:
            assert "feedback" not in receive(ws)["session"].get("x_voxgate", {})
            response_id = answer(ws)["response"]["id"]
            rating = {"type": "voxgate.feedback.create", "event_id": "e1", "rating": 1}
            refused(
                reply(ws, rating | {"response_id": response_id}), "feedback_disabled", None, "e1"
            )
            preference = {"type": "voxgate.preference.create", "event_id": "e2"}
            preference |= {"pair_id": "pair_x", "chosen_response_id": response_id}
            refused(reply(ws, preference), "feedback_disabled", None, "e2")
            ws.send_json(text_item("hi"))
            pair = {"type": "response.create", "event_id": "e3"}
            ws.send_json(pair | {"response": {"x_voxgate": {"candidates": 2}}})
            refused(
                receive_until(ws, "error")[-1],
                "invalid_value",
                "response.x_voxgate.candidates",
                "e3",
            )
            answer(ws)
    assert list(tmp_path.iterdir()) == []


# --- a store that fails -----------------------------------------------------------------------


def test_a_failing_store_never_breaks_the_session(
    client: TestClient,
    ws: WebSocketTestSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def full_disk(*_: Any) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(client.app.state.services.feedback, "record_response", full_disk)
    failed = counted("voxgate_feedback_captures_dropped_total", reason="store_error")
    response_id = answer(ws)["response"]["id"]
    event = {"type": "voxgate.feedback.create", "event_id": "e", "response_id": response_id}
    refused(reply(ws, event | {"rating": 1}), "response_not_found", "response_id", "e")
    assert counted("voxgate_feedback_captures_dropped_total", reason="store_error") == failed + 1
    assert f"the store failed to keep answer {response_id}" in caplog.text
    assert "no space left on device" in caplog.text  # logged with the exception
    answer(ws)
