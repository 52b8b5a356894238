"""`voxgate feedback export`: the feedback database as a dataset that Hugging Face `datasets`
loads as it is, in one of three formats.

- `dpo`: one row per pair of candidates whose preferred one is known, in TRL's conversational
  preference format: `prompt` (the context, a list of `{role, content}` messages), `chosen` and
  `rejected` (each a list of one assistant message);
- `kto`: one row per rated answer with a clear sign, in TRL's unpaired preference format:
  `prompt`, `completion` (one assistant message) and `label` (thumbs up or 4-5 stars: true;
  thumbs down or 1-2 stars: false; 3 stars says neither and is left out);
- `ratings`: one row per rated answer, every rating, with the same `prompt` and `completion`.

Every row also carries what happened to each answer (`outcome`, `audio_ms`, `heard_ms`,
`truncated`), how it was served (`regime`, `model`, `voice`, `timings`) and `audio`, the
absolute path of its WAV file when audio was kept (the file stays where the store keeps it).
In `dpo` these columns are there for each answer, as `chosen_*` and `rejected_*`.

The layout: an export is a folder of its own, `OUT/train.jsonl` (JSON Lines, one row a line)
and `OUT/README.md`, a dataset card whose YAML header names the file and the type of every
column. So `datasets.load_dataset(OUT)` loads the `train` split with those exact types, and
`datasets.load_dataset("json", data_files=OUT/train.jsonl)` loads the same rows, typed by
inference. A folder holding other files is refused: `load_dataset(OUT)` would read them too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from voxgate.server.feedback_schema import FeedbackDatabase, feedback, pairs, responses
from voxgate.server.feedback_types import Scale


class ExportFormat(StrEnum):
    DPO = "dpo"
    KTO = "kto"
    RATINGS = "ratings"


DATA_FILE = "train.jsonl"
CARD_FILE = "README.md"
BATCH_ROWS = 256
"""Rows read from the database at a time: an export of any size runs in bounded memory."""


@dataclass(frozen=True)
class Column:
    name: str
    feature: Mapping[str, Any]
    """Its type as a dataset card's YAML says it (`datasets.Features._to_yaml_list`)."""
    about: str


_STRING = {"dtype": "string"}
_INT = {"dtype": "int64"}
_BOOL = {"dtype": "bool"}
_MESSAGES = {"list": [{"name": "role", "dtype": "string"}, {"name": "content", "dtype": "string"}]}
_TIMINGS = {"list": [{"name": "stage", "dtype": "string"}, {"name": "seconds", "dtype": "float64"}]}

_ANSWER = (
    Column("response_id", _STRING, "the answer's id (the realtime response id)"),
    Column("created_at", _INT, "when it was answered, Unix seconds"),
    Column("regime", _STRING, "realtime or speech"),
    Column("model", _STRING, "the backbone that answered"),
    Column("voice", _STRING, "the voice it spoke with (null: a text answer)"),
    Column("outcome", _STRING, "completed, interrupted (barge-in), cancelled, incomplete, ..."),
    Column("audio_ms", _INT, "how much audio the answer had (null: none)"),
    Column("heard_ms", _INT, "how much of it was played before it was cut (null: not cut)"),
    Column("truncated", _BOOL, "the client cut the answer's audio (heard_ms is set)"),
    Column("audio", _STRING, "absolute path of the answer's WAV file (null: not kept)"),
    Column("timings", _TIMINGS, "seconds per stage of the turn"),
)
"""What every row says of an answer (in `dpo`, of each: `chosen_*` and `rejected_*`)."""

_RATING = (
    Column("feedback_id", _STRING, "the rating's id"),
    Column("session_id", _STRING, "the session the answer was given in"),
    Column("rating", _INT, "-1 or +1 (thumbs), 1 to 5 (stars)"),
    Column("scale", _STRING, "thumbs or stars"),
    Column("tags", {"list": "string"}, "the rater's tags"),
    Column("comment", _STRING, "the rater's comment (null: none)"),
    Column("rated_at", _INT, "when it was rated, Unix seconds"),
    Column("prompt", _MESSAGES, "the conversation the backbone answered"),
    Column("completion", _MESSAGES, "the answer, one assistant message"),
)

COLUMNS: dict[ExportFormat, tuple[Column, ...]] = {
    ExportFormat.DPO: (
        Column("pair_id", _STRING, "the pair's id"),
        Column("session_id", _STRING, "the session the pair was given in"),
        Column("chosen_at", _INT, "when the preference was given, Unix seconds"),
        Column("prompt", _MESSAGES, "the conversation both candidates answered"),
        Column("chosen", _MESSAGES, "the preferred answer, one assistant message"),
        Column("rejected", _MESSAGES, "the other answer, one assistant message"),
        *(Column(f"chosen_{c.name}", c.feature, f"chosen: {c.about}") for c in _ANSWER),
        *(Column(f"rejected_{c.name}", c.feature, f"rejected: {c.about}") for c in _ANSWER),
    ),
    ExportFormat.KTO: (
        *_RATING,
        Column("label", _BOOL, "true: a good answer (thumbs up, 4-5 stars); false: a bad one"),
        *_ANSWER,
    ),
    ExportFormat.RATINGS: (*_RATING, *_ANSWER),
}
"""Each format's columns, in order: the rows' keys and the dataset card's features."""


@dataclass(frozen=True)
class Exported:
    rows: int
    data_file: Path


class ExportFolderInUse(ValueError):
    """The output folder holds files that are not an earlier export's."""


class NothingToExport(Exception):
    """The store has no row of the format yet: no files are written (`datasets` cannot load a
    split with no rows)."""


_EMPTY = {
    "dpo": "no pair has a preferred candidate yet",
    "kto": "no answer is rated up or down yet (3 stars are left out)",
    "ratings": "no answer is rated yet",
}


def export(database: FeedbackDatabase, format: ExportFormat, out: Path) -> Exported:
    """Write `format`'s rows of `database` to `out` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in out.iterdir() if p.name not in (DATA_FILE, CARD_FILE))
    if others:
        raise ExportFolderInUse(
            f"{out} holds other files ({', '.join(others[:3])}); export into an empty folder"
        )
    rows = 0
    partial = out / f".{DATA_FILE}.partial"
    with partial.open("w", encoding="utf-8") as data, database.engine.connect() as connection:
        for row in _ROWS[format](connection, database.audio_dir.resolve()):
            data.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows += 1
    if rows == 0:
        partial.unlink()
        raise NothingToExport(f"nothing to export as {format}: {_EMPTY[format]}")
    os.replace(partial, out / DATA_FILE)
    (out / CARD_FILE).write_text(dataset_card(format, rows), encoding="utf-8")
    return Exported(rows, out / DATA_FILE)


def dataset_card(format: ExportFormat, rows: int) -> str:
    """The README.md of an export: a YAML header (written as JSON, which YAML reads) with the
    data file and every column's type, then what the columns mean."""
    columns = COLUMNS[format]
    header = {
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}
        ],
        "dataset_info": {"features": [{"name": c.name, **c.feature} for c in columns]},
    }
    about = "\n".join(f"- `{c.name}`: {c.about}" for c in columns)
    return (
        f"---\n{json.dumps(header, indent=1)}\n---\n\n"
        f"# voxgate feedback: {format}\n\n"
        f"{rows} rows exported by `voxgate feedback export --format {format}`; load them with "
        "`datasets.load_dataset(THIS_FOLDER)`.\n\n"
        f"{about}\n"
    )


# --- rows -------------------------------------------------------------------------------------

_Rows = Iterator[dict[str, Any]]


def _dpo_rows(connection: sa.Connection, audio_dir: Path) -> _Rows:
    chosen, rejected = responses.alias("chosen"), responses.alias("rejected")
    other = sa.case(
        (pairs.c.first_response_id == pairs.c.chosen_response_id, pairs.c.second_response_id),
        else_=pairs.c.first_response_id,
    )
    query = (
        sa.select(pairs, *_labelled(chosen, "chosen_"), *_labelled(rejected, "rejected_"))
        .join(chosen, chosen.c.id == pairs.c.chosen_response_id)
        .join(rejected, rejected.c.id == other)
        .order_by(pairs.c.chosen_at, pairs.c.id)
    )
    for row in _batched(connection, query):
        yield {
            "pair_id": row["id"],
            "session_id": row["session_id"],
            "chosen_at": _unix(row["chosen_at"]),
            "prompt": row["chosen_context"],
            "chosen": _said(row["chosen_text"]),
            "rejected": _said(row["rejected_text"]),
            **_answer(row, "chosen_", "chosen_", audio_dir),
            **_answer(row, "rejected_", "rejected_", audio_dir),
        }


def _rating_rows(connection: sa.Connection, audio_dir: Path) -> _Rows:
    query = (
        sa.select(feedback, *_labelled(responses, "answer_"))
        .join(responses, responses.c.id == feedback.c.response_id)
        .order_by(feedback.c.created_at, feedback.c.response_id)
    )
    for row in _batched(connection, query):
        yield {
            "feedback_id": row["id"],
            "session_id": row["answer_session_id"],
            "rating": row["rating"],
            "scale": row["scale"],
            "tags": row["tags"],
            "comment": row["comment"],
            "rated_at": _unix(row["created_at"]),
            "prompt": row["answer_context"],
            "completion": _said(row["answer_text"]),
            **_answer(row, "answer_", "", audio_dir),
        }


def _kto_rows(connection: sa.Connection, audio_dir: Path) -> _Rows:
    for row in _rating_rows(connection, audio_dir):
        label = kto_label(row["rating"], Scale(row["scale"]))
        if label is not None:
            yield {**row, "label": label}


def kto_label(rating: int, scale: Scale) -> bool | None:
    """A rating as KTO's label: good (True), bad (False), or neither (None: 3 stars)."""
    if scale is Scale.THUMBS:
        return rating > 0
    return True if rating >= 4 else False if rating <= 2 else None


_ROWS = {
    ExportFormat.DPO: _dpo_rows,
    ExportFormat.KTO: _kto_rows,
    ExportFormat.RATINGS: _rating_rows,
}


def _labelled(table: sa.FromClause, prefix: str) -> list[sa.Label[Any]]:
    return [column.label(f"{prefix}{column.name}") for column in table.c]


def _batched(connection: sa.Connection, query: sa.Select[Any]) -> Iterator[Mapping[str, Any]]:
    result = connection.execution_options(yield_per=BATCH_ROWS).execute(query)
    for row in result:
        yield row._mapping


def _answer(row: Mapping[str, Any], source: str, prefix: str, audio_dir: Path) -> dict[str, Any]:
    """The `_ANSWER` columns of the answer whose columns `row` holds as `{source}{name}`."""
    audio_path = row[f"{source}audio_path"]
    heard_ms = row[f"{source}heard_ms"]
    answer = {
        "response_id": row[f"{source}id"],
        "created_at": _unix(row[f"{source}created_at"]),
        "regime": row[f"{source}regime"],
        "model": row[f"{source}model"],
        "voice": row[f"{source}voice"],
        "outcome": row[f"{source}outcome"],
        "audio_ms": row[f"{source}audio_ms"],
        "heard_ms": heard_ms,
        "truncated": heard_ms is not None,
        "audio": str(audio_dir / audio_path) if audio_path else None,
        "timings": [
            {"stage": stage, "seconds": seconds}
            for stage, seconds in row[f"{source}timings"].items()
        ],
    }
    return {f"{prefix}{name}": value for name, value in answer.items()}


def _said(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _unix(at: dt.datetime | None) -> int | None:
    return None if at is None else int(at.timestamp())
