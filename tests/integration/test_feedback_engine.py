"""Feedback end to end: a real `voxgate serve` (cascade backbone, real engine) with capture on,
once on SQLite and once on a real PostgreSQL (`tests/postgres.py`, over its Unix socket).

The official `openai` SDK's realtime client has text turns answered, rates one with
`voxgate.feedback.create` (its raw `send_raw`: the SDK does not know voxgate's events), asks for
a candidate pair and prefers one; an app backend rates another answer with `POST /v1/feedback`.
Then `voxgate feedback export` (a subprocess, with the server's environment) writes each format,
and `datasets.load_dataset` loads it, checked column by column. Last, the default server
(capture off) refuses feedback with `feedback_disabled` and writes nothing under its home.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import httpx
import pytest
from engine_server import RunningServer, launch
from realtime_helpers import ANSWER_TIMEOUT_S, sdk_client
from realtime_wire import check_server_event, text_item

from voxgate.model import artifacts
from voxgate.server.feedback_export import COLUMNS, ExportFormat

pytest_plugins = ["postgres"]
pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

ANSWER_TOKENS = 40
"""Short answers: this is about what happens to them, not their length."""


@pytest.fixture(params=["sqlite", "postgresql"])
def capture_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Capture on, audio kept, on SQLite in the test's folder or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")  # postgresql://user@/db?host=/socket
    else:
        url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    return {
        "VOXGATE_FEEDBACK__ENABLED": "true",
        "VOXGATE_FEEDBACK__DATABASE_URL": url,
        "VOXGATE_FEEDBACK__AUDIO": "true",
        "VOXGATE_FEEDBACK__AUDIO_DIR": str(tmp_path / "audio"),
    }


@pytest.fixture
def capturing_server(
    tmp_path_factory: pytest.TempPathFactory, capture_env: dict[str, str]
) -> Iterator[RunningServer]:
    """One server per database."""
    with launch(tmp_path_factory, "capture", capture_env) as running:
        yield running


# --- the wire ---------------------------------------------------------------------------------


async def until(conn: Any, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Events (raw, each checked) up to the `count`-th of type `kind`."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        seen = 0
        while seen < count:
            got.append(event := json.loads(await conn.recv_bytes()))
            check_server_event(event)
            seen += event["type"] == kind
            assert event["type"] != "error" or kind == "error", event

    await asyncio.wait_for(read(), ANSWER_TIMEOUT_S)
    return got


def said(done: dict[str, Any]) -> str:
    """What a response said (its transcript)."""
    (part,) = done["response"]["output"][0]["content"]
    return part["transcript"]


async def answered(conn: Any, question: str, **response: Any) -> list[dict[str, Any]]:
    """The `response.done` of each candidate answering `question`."""
    await conn.send(text_item(question))
    await conn.send_raw(json.dumps({"type": "response.create", "response": response}))
    count = response.get("x_voxgate", {}).get("candidates", 1)
    dones = [e for e in await until(conn, "response.done", count) if e["type"] == "response.done"]
    # Whole, or cut at ANSWER_TOKENS.
    assert all(d["response"]["status"] in ("completed", "incomplete") for d in dones), dones
    return dones


async def converse(server: RunningServer) -> dict[str, Any]:
    """One session: a rated answer, a pair with a preference, an answer left to rate by REST."""
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        created = (await until(conn, "session.created"))[-1]["session"]
        assert created["x_voxgate"]["feedback"] == {"enabled": True, "audio": True}
        await conn.session.update(session={"type": "realtime", "max_output_tokens": ANSWER_TOKENS})
        await until(conn, "session.updated")
        (rated,) = await answered(conn, "What is the capital of France?")
        pair = await answered(conn, "Name a colour of the sky.", x_voxgate={"candidates": 2})
        (left,) = await answered(conn, "Say something about cats.")
        rating = {"type": "voxgate.feedback.create", "event_id": "evt_rate"}
        rating |= {"response_id": rated["response"]["id"], "rating": 1, "tags": ["clear"]}
        await conn.send_raw(json.dumps(rating))
        created_feedback = (await until(conn, "voxgate.feedback.created"))[-1]
        assert created_feedback["feedback"]["rating"] == 1
        pair_id = pair[0]["x_voxgate"]["pair"]["id"]
        choice = {"type": "voxgate.preference.create", "pair_id": pair_id}
        await conn.send_raw(json.dumps(choice | {"chosen_response_id": pair[1]["response"]["id"]}))
        preference = (await until(conn, "voxgate.preference.created"))[-1]["pair"]
        assert preference["chosen_response_id"] == pair[1]["response"]["id"]
        return {"session": created["id"], "rated": rated, "pair": pair, "left": left}


def export(server_env: dict[str, str], fmt: ExportFormat, out: Path) -> datasets.Dataset:
    """`voxgate feedback export` as a shell runs it, loaded by `datasets`."""
    env = {**os.environ, "VOXGATE_HOME": str(artifacts.default_home()), **server_env}
    command = [sys.executable, "-m", "voxgate.server.cli", "feedback", "export"]
    done = subprocess.run(
        [*command, "--format", fmt.value, "--out", str(out / fmt.value)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    dataset = datasets.load_dataset(str(out / fmt.value), cache_dir=str(out / "cache"))["train"]
    assert dataset.column_names == [column.name for column in COLUMNS[fmt]]
    return dataset


def asked(prompt: list[dict[str, str]], question: str) -> None:
    """`prompt` is the context the backbone answered `question` in."""
    assert prompt[0]["role"] == "system"
    assert prompt[-1] == {"role": "user", "content": question}


# --- the tests --------------------------------------------------------------------------------


def test_feedback_through_the_real_engine(
    capturing_server: RunningServer, capture_env: dict[str, str], tmp_path: Path
) -> None:
    server = capturing_server
    talk = asyncio.run(converse(server))
    headers = {"Authorization": f"Bearer {server.api_key}"}
    left_id = talk["left"]["response"]["id"]
    bad = httpx.post(
        f"{server.base_url}/v1/feedback",
        json={"response_id": left_id, "rating": 7, "scale": "stars"},
        headers=headers,
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "rating_out_of_range")
    nul = httpx.post(  # PostgreSQL keeps no NUL: refused as bad input, on either database
        f"{server.base_url}/v1/feedback",
        json={"response_id": left_id, "rating": 1, "comment": "a\0b"},
        headers=headers,
    )
    assert (nul.status_code, nul.json()["error"]["param"]) == (400, "comment")
    rest = httpx.post(
        f"{server.base_url}/v1/feedback",
        json={"response_id": left_id, "rating": -1, "comment": "Off topic."},
        headers=headers,
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["response_id"] == left_id
    assert server.metric("voxgate_feedback_total", regime="realtime", rating="down") == 1
    assert server.metric("voxgate_feedback_preferences_total", regime="realtime") == 1

    first, second = talk["pair"]
    dpo = export(capture_env, ExportFormat.DPO, tmp_path / "exports")
    assert len(dpo) == 1
    row = dpo[0]
    assert row["pair_id"] == first["x_voxgate"]["pair"]["id"]
    assert row["session_id"] == talk["session"]
    asked(row["prompt"], "Name a colour of the sky.")
    assert row["chosen"] == [{"role": "assistant", "content": said(second)}]
    assert row["rejected"] == [{"role": "assistant", "content": said(first)}]
    assert (row["chosen_response_id"], row["rejected_response_id"]) == (
        second["response"]["id"],
        first["response"]["id"],
    )
    for side, done in (("chosen", second), ("rejected", first)):
        assert (row[f"{side}_regime"], row[f"{side}_model"]) == ("realtime", "voxgate-cascade")
        assert row[f"{side}_outcome"] == done["response"]["status"]
        assert row[f"{side}_audio_ms"] > 0 and Path(row[f"{side}_audio"]).is_file()

    rated, left = talk["rated"], talk["left"]
    kto = export(capture_env, ExportFormat.KTO, tmp_path / "exports")
    by_answer = {r["response_id"]: r for r in kto}
    assert set(by_answer) == {rated["response"]["id"], left_id}
    good, bad_answer = by_answer[rated["response"]["id"]], by_answer[left_id]
    assert (good["label"], good["rating"], good["tags"]) == (True, 1, ["clear"])
    assert (bad_answer["label"], bad_answer["comment"]) == (False, "Off topic.")
    asked(good["prompt"], "What is the capital of France?")
    asked(bad_answer["prompt"], "Say something about cats.")
    # The conversation holds candidate 0's answer, never candidate 1's.
    answers = [m["content"] for m in bad_answer["prompt"] if m["role"] == "assistant"]
    assert answers == [said(rated).strip(), said(first).strip()]
    assert good["completion"] == [{"role": "assistant", "content": said(rated)}]
    assert bad_answer["completion"] == [{"role": "assistant", "content": said(left)}]
    stages = {t["stage"]: t["seconds"] for t in good["timings"]}
    assert stages["lm_first_token"] > 0 and stages["lm_to_first_audio"] > 0

    ratings = export(capture_env, ExportFormat.RATINGS, tmp_path / "exports")
    assert sorted((r["response_id"], r["rating"], r["scale"]) for r in ratings) == sorted(
        [(rated["response"]["id"], 1, "thumbs"), (left_id, -1, "thumbs")]
    )


def snapshot(folder: Path) -> list[tuple[str, int]]:
    """What is in `folder` (nothing when it does not exist), with modification times."""
    if not folder.exists():
        return []
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_with_capture_off_feedback_is_refused_and_nothing_is_kept(server: RunningServer) -> None:
    kept = artifacts.default_home() / "feedback"  # where its store would be, were it on
    before = snapshot(kept)

    async def session() -> None:
        async with sdk_client(server).realtime.connect(model="voxgate") as conn:
            created = (await until(conn, "session.created"))[-1]["session"]
            assert "feedback" not in created.get("x_voxgate", {})
            refusals = [
                {"type": "voxgate.feedback.create", "response_id": "resp_x", "rating": 1},
                {"type": "voxgate.preference.create", "pair_id": "p", "chosen_response_id": "r"},
            ]
            for n, event in enumerate(refusals):
                await conn.send_raw(json.dumps(event | {"event_id": f"evt_{n}"}))
                error = (await until(conn, "error"))[-1]["error"]
                assert (error["code"], error["event_id"]) == ("feedback_disabled", f"evt_{n}")
            await conn.send(text_item("hi"))
            pair = {"type": "response.create", "response": {"x_voxgate": {"candidates": 2}}}
            await conn.send_raw(json.dumps(pair))
            error = (await until(conn, "error"))[-1]["error"]
            assert (error["code"], error["param"]) == (
                "invalid_value",
                "response.x_voxgate.candidates",
            )

    asyncio.run(session())
    rest = httpx.post(
        f"{server.base_url}/v1/feedback",
        json={"response_id": "resp_x", "rating": 1},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert (rest.status_code, rest.json()["error"]["code"]) == (404, "feedback_disabled")
    assert snapshot(kept) == before
