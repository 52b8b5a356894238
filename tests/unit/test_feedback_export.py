"""`voxgate feedback export`, from SQLite and from a real PostgreSQL: each format loaded back
with Hugging Face `datasets` (from the folder, typed by its dataset card, and from the JSON
Lines file alone) and checked column by column; and the `voxgate feedback` commands."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import datasets
import pytest
from datasets import Features, List, Value
from feedback_data import START, captured

from voxgate.server.cli import main
from voxgate.server.feedback_export import (
    CARD_FILE,
    DATA_FILE,
    ExportFolderInUse,
    ExportFormat,
    NothingToExport,
    export,
    kto_label,
)
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.feedback_types import Outcome, Regime, Scale

pytest_plugins = ["postgres", "feedback_fixtures"]

T0 = int(START.timestamp())
PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
TIMINGS = [{"stage": "asr", "seconds": 0.12}, {"stage": "turn_latency", "seconds": 0.61}]
MESSAGES = List({"role": Value("string"), "content": Value("string")})
ANSWER_FEATURES = {
    "response_id": Value("string"),
    "created_at": Value("int64"),
    "regime": Value("string"),
    "model": Value("string"),
    "voice": Value("string"),
    "outcome": Value("string"),
    "audio_ms": Value("int64"),
    "heard_ms": Value("int64"),
    "truncated": Value("bool"),
    "audio": Value("string"),
    "timings": List({"stage": Value("string"), "seconds": Value("float64")}),
}
RATING_FEATURES = {
    "feedback_id": Value("string"),
    "session_id": Value("string"),
    "rating": Value("int64"),
    "scale": Value("string"),
    "tags": List(Value("string")),
    "comment": Value("string"),
    "rated_at": Value("int64"),
    "prompt": MESSAGES,
    "completion": MESSAGES,
}


async def fill(store: FeedbackStore) -> None:
    """Four answers of session a: resp_1 (cut at 80 ms, thumbs up) and resp_2 (interrupted)
    are a pair, resp_2 preferred; resp_3 (a text answer) has 3 stars, resp_4 2 stars. Session b:
    a pair with no choice yet."""
    await store.record_response(captured("resp_1"))
    await store.record_truncation("resp_1", 80)
    await store.record_response(captured("resp_2", outcome=Outcome.INTERRUPTED, timings={}))
    await store.record_pair("pair_1", "sess_a", "resp_1", "resp_2")
    await store.choose("pair_1", "resp_2")
    await store.record_response(
        captured("resp_3", regime=Regime.SPEECH, voice=None, audio_ms=None, audio=None)
    )
    await store.record_response(captured("resp_4"))
    await store.add_feedback("resp_1", 1, tags=["clear", "short"], comment="good")
    await store.add_feedback("resp_3", 3, Scale.STARS)
    await store.add_feedback("resp_4", 2, Scale.STARS, tags=["wrong"])
    await store.record_response(captured("resp_5", "sess_b"))
    await store.record_response(captured("resp_6", "sess_b"))
    await store.record_pair("pair_2", "sess_b", "resp_5", "resp_6")


def answer(store: FeedbackStore, response_id: str, **columns: Any) -> dict[str, Any]:
    """The answer columns of one of `fill`'s answers."""
    assert store.database is not None
    audio = store.database.audio_dir.resolve() / "sess_a" / f"{response_id}.wav"
    return {
        "response_id": response_id,
        "created_at": T0,
        "regime": "realtime",
        "model": "voxgate-cascade",
        "voice": "joe",
        "outcome": "completed",
        "audio_ms": 200,
        "heard_ms": None,
        "truncated": False,
        "audio": str(audio),
        "timings": TIMINGS,
    } | columns


def completion(response_id: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": f"Paris ({response_id})."}]


def loaded(out: Path, cache: Path) -> datasets.Dataset:
    """The export as `datasets` loads its folder (types from the dataset card)."""
    dataset = datasets.load_dataset(str(out), cache_dir=str(cache))
    assert list(dataset) == ["train"]
    return dataset["train"]


def loaded_as_json(out: Path, cache: Path) -> datasets.Dataset:
    """The export's JSON Lines file as `datasets` loads it alone (types inferred)."""
    return datasets.load_dataset("json", data_files=str(out / DATA_FILE), cache_dir=str(cache))[
        "train"
    ]


async def test_dpo(store: FeedbackStore, tmp_path: Path) -> None:
    await fill(store)
    assert store.database is not None
    out = tmp_path / "dpo"
    assert export(store.database, ExportFormat.DPO, out).rows == 1
    dataset = loaded(out, tmp_path / "cache")
    assert dataset.features == Features(
        {
            "pair_id": Value("string"),
            "session_id": Value("string"),
            "chosen_at": Value("int64"),
            "prompt": MESSAGES,
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            **{f"chosen_{name}": feature for name, feature in ANSWER_FEATURES.items()},
            **{f"rejected_{name}": feature for name, feature in ANSWER_FEATURES.items()},
        }
    )
    chosen = answer(store, "resp_2", outcome="interrupted", timings=[])
    rejected = answer(store, "resp_1", heard_ms=80, truncated=True)
    expected = {
        "pair_id": "pair_1",
        "session_id": "sess_a",
        "chosen_at": T0,
        "prompt": PROMPT,
        "chosen": completion("resp_2"),
        "rejected": completion("resp_1"),
        **{f"chosen_{name}": value for name, value in chosen.items()},
        **{f"rejected_{name}": value for name, value in rejected.items()},
    }
    assert dataset.to_list() == [expected]
    assert loaded_as_json(out, tmp_path / "cache").to_list() == [expected]


async def test_kto(store: FeedbackStore, tmp_path: Path) -> None:
    await fill(store)
    assert store.database is not None
    out = tmp_path / "kto"
    assert export(store.database, ExportFormat.KTO, out).rows == 2  # 3 stars is neither
    dataset = loaded(out, tmp_path / "cache")
    assert dataset.features == Features(
        {**RATING_FEATURES, "label": Value("bool"), **ANSWER_FEATURES}
    )
    rows = dataset.to_list()
    assert [(row["response_id"], row["rating"], row["label"]) for row in rows] == [
        ("resp_1", 1, True),
        ("resp_4", 2, False),
    ]
    first = {key: rows[0][key] for key in RATING_FEATURES if key != "feedback_id"}
    assert first == {
        "session_id": "sess_a",
        "rating": 1,
        "scale": "thumbs",
        "tags": ["clear", "short"],
        "comment": "good",
        "rated_at": T0,
        "prompt": PROMPT,
        "completion": completion("resp_1"),
    }
    assert {key: rows[0][key] for key in ANSWER_FEATURES} == answer(
        store, "resp_1", heard_ms=80, truncated=True
    )
    assert rows[0]["feedback_id"].startswith("fb_")
    as_json = loaded_as_json(out, tmp_path / "cache").to_list()
    assert [{key: row[key] for key in rows[0]} for row in as_json] == rows


async def test_ratings(store: FeedbackStore, tmp_path: Path) -> None:
    await fill(store)
    assert store.database is not None
    out = tmp_path / "ratings"
    assert export(store.database, ExportFormat.RATINGS, out).rows == 3
    dataset = loaded(out, tmp_path / "cache")
    assert dataset.features == Features({**RATING_FEATURES, **ANSWER_FEATURES})
    rows = dataset.to_list()
    assert [(row["response_id"], row["rating"], row["scale"]) for row in rows] == [
        ("resp_1", 1, "thumbs"),
        ("resp_3", 3, "stars"),
        ("resp_4", 2, "stars"),
    ]
    text_answer = rows[1]
    assert {key: text_answer[key] for key in ANSWER_FEATURES} == answer(
        store, "resp_3", regime="speech", voice=None, audio_ms=None, audio=None
    )
    assert (text_answer["tags"], text_answer["comment"]) == ([], None)
    assert Path(rows[0]["audio"]).is_file()
    as_json = loaded_as_json(out, tmp_path / "cache").to_list()
    assert [{key: row[key] for key in rows[0]} for row in as_json] == rows


async def test_an_empty_store_exports_no_files(store: FeedbackStore, tmp_path: Path) -> None:
    # An empty split is one `datasets.load_dataset` refuses ("corresponds to no data"): the
    # export says why there is nothing instead of writing files that do not load.
    assert store.database is not None
    for format in ExportFormat:
        with pytest.raises(NothingToExport, match=f"nothing to export as {format}"):
            export(store.database, format, tmp_path / format)
        assert list((tmp_path / format).iterdir()) == []


async def test_the_output_folder_is_the_exports_own(store: FeedbackStore, tmp_path: Path) -> None:
    await fill(store)
    assert store.database is not None
    out = tmp_path / "out"
    export(store.database, ExportFormat.RATINGS, out)
    assert export(store.database, ExportFormat.KTO, out).rows == 2  # replaces the last one
    assert sorted(p.name for p in out.iterdir()) == [CARD_FILE, DATA_FILE]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportFolderInUse, match=r"notes\.txt"):
        export(store.database, ExportFormat.DPO, out)


def test_kto_labels() -> None:
    assert [kto_label(r, Scale.THUMBS) for r in (-1, 1)] == [False, True]
    assert [kto_label(r, Scale.STARS) for r in (1, 2, 3, 4, 5)] == [
        False,
        False,
        None,
        True,
        True,
    ]


# --- the commands -----------------------------------------------------------------------------


@pytest.fixture
def environment(
    feedback_settings: FeedbackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`voxgate feedback` reads the settings `voxgate serve` reads: the environment."""
    for name in list(os.environ):
        if name.startswith("VOXGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VOXGATE_HOME", str(tmp_path))
    if feedback_settings.database_url is not None:
        monkeypatch.setenv(
            "VOXGATE_FEEDBACK__DATABASE_URL", feedback_settings.database_url.get_secret_value()
        )


@pytest.mark.usefixtures("environment")
async def test_the_commands(
    store: FeedbackStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `store` is what a server wrote (its settings are the environment's, feedback on); the
    # commands work on it with feedback off in the environment. They run `asyncio.run`: in a
    # thread, as from a shell.

    async def voxgate(*argv: str) -> int:
        return await asyncio.to_thread(main, ["feedback", *argv])

    assert await voxgate("export", "--format", "dpo", "--out", str(tmp_path / "none")) == 1
    assert "no pair has a preferred candidate yet" in capsys.readouterr().err
    await fill(store)

    dpo = str(tmp_path / "dpo")
    assert await voxgate("export", "--format", "dpo", "--out", dpo) == 0
    assert capsys.readouterr().out == f"1 rows written to {tmp_path / 'dpo' / DATA_FILE}\n"
    assert loaded(tmp_path / "dpo", tmp_path / "cache")["pair_id"] == ["pair_1"]
    (tmp_path / "dpo" / "x").touch()
    assert await voxgate("export", "--format", "kto", "--out", dpo) == 2
    assert "export into an empty folder" in capsys.readouterr().err
    assert await voxgate("delete", "--session", "sess_b") == 0
    assert capsys.readouterr().out == "deleted 2 answers, 0 ratings, 1 pairs and 2 audio files\n"
    monkeypatch.setenv("VOXGATE_FEEDBACK__RETENTION_DAYS", "1")  # START is days ago
    assert await voxgate("purge") == 0
    assert capsys.readouterr().out == "deleted 4 answers, 3 ratings, 1 pairs and 3 audio files\n"
