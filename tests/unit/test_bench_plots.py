"""The benchmarks' figures (`bench/plots.py`): each drawn from results of the shape its benchmark
writes with `--json` (built with the benchmark's own record types and result function, then
passed through JSON), and `turn_latency.py --plot` end to end on one recorded clip against an
in-process server over the fake backbone."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

# The benchmarks are scripts run from their folder (they import `common` and `plots` by name).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import common
import load
import plots
import rest_speech
import turn_latency
from fakes import FakeBackbone
from in_process import app_over, serving

pytestmark = pytest.mark.timeout(60)

QUESTION = Path("/usr/share/pocketsphinx/test/data/cards/001.wav")
"""A person saying "ten of clubs" (pocketsphinx-testdata), 1.1 s at 16 kHz."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG (from its IHDR chunk) or an SVG (its root's attributes)."""
    data = path.read_bytes()
    if path.suffix == ".png":
        assert data.startswith(PNG_SIGNATURE)
        assert data[12:16] == b"IHDR"
        return struct.unpack(">II", data[16:24])
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return tuple(round(float(root.attrib[k].removesuffix("pt"))) for k in ("width", "height"))


def assert_image(path: Path) -> None:
    width, height = image_size(path)
    assert width > 0 and height > 0
    assert path.stat().st_size < 150_000  # README-sized


def through_json(results: dict[str, Any]) -> dict[str, Any]:
    """The results as `--json` writes them and a later plot would read them back."""
    return json.loads(json.dumps(results))


# --- turn_latency.py ------------------------------------------------------------------------


def turn_record(turn: int, scale: float, ok: bool = True) -> common.TurnRecord:
    timings = {"end_of_turn_wait": 510.0, "asr": 180.0 * scale, "lm_first_token": 240.0 * scale,
               "lm_first_sentence": 950.0 * scale, "tts_first_chunk": 260.0 * scale,
               "server_overhead": 6.0}  # fmt: skip
    timings["turn_latency"] = sum(v for k, v in timings.items() if k != "lm_first_token")
    if not ok:
        return common.TurnRecord(turn, 1, "cards/001.wav", None, ok=False, failure="raised")
    return common.TurnRecord(
        turn,
        1 + turn // 5,
        f"cards/00{turn % 5 + 1}.wav",
        "ten of clubs",
        ok=True,
        status="completed",
        responses=1,
        client_turn_latency_ms=timings["turn_latency"] + 90,
        server_timings_ms=timings,
    )


def turn_results(records: list[common.TurnRecord]) -> dict[str, Any]:
    args = argparse.Namespace(url="ws://127.0.0.1:8000/v1/realtime")
    return through_json(turn_latency.results(records, "recorded: 14 clips", args))


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_turn_latency_figure_draws_each_stage(tmp_path: Path, suffix: str) -> None:
    records = [turn_record(i, 1 + 0.1 * i) for i in range(8)] + [turn_record(8, 1, ok=False)]
    results = turn_results(records)
    labels = [label for label, _ in plots.turn_latency_rows(results)]
    assert labels == [
        "server end_of_turn_wait",
        "server asr",
        "server lm_first_sentence",
        "server tts_first_chunk",
        "server server_overhead",
        "server turn_latency",
        "client turn_latency",
    ]
    path = tmp_path / f"turns{suffix}"
    plots.turn_latency_figure(results, path)
    assert_image(path)


def test_turn_latency_figure_without_answers_still_writes_a_figure(tmp_path: Path) -> None:
    results = turn_results([turn_record(0, 1, ok=False)])
    assert plots.turn_latency_rows(results) == []
    plots.turn_latency_figure(results, tmp_path / "none.png")
    assert_image(tmp_path / "none.png")


def test_a_bad_plot_path_is_refused_before_the_benchmark_runs(tmp_path: Path) -> None:
    assert plots.plot_path_problem(str(tmp_path / "a.png")) is None
    assert "must end in .png or .svg" in (plots.plot_path_problem("a.jpg") or "")
    assert "no folder" in (plots.plot_path_problem(str(tmp_path / "nope" / "a.svg")) or "")
    with pytest.raises(SystemExit):
        turn_latency.parse_args(["--plot", str(tmp_path / "a.pdf")])


async def test_turn_latency_plots_a_run_on_a_recorded_clip(
    tmp_path: Path, silero_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not QUESTION.is_file():
        pytest.fail("the recorded speech is missing: apt-get install -y pocketsphinx-testdata")
    speech = tmp_path / "speech"
    speech.mkdir()
    shutil.copy(QUESTION, speech / QUESTION.name)
    monkeypatch.delenv("VOXGATE_API_KEY", raising=False)
    plot, dump = tmp_path / "turns.png", tmp_path / "turns.json"
    async with serving(app_over(FakeBackbone())) as port:
        argv = [
            f"--url=ws://127.0.0.1:{port}/v1/realtime",
            "--turns=1",
            "--warmup=0",
            "--source=recorded",
            f"--speech={speech}",
            "--timeout=20",
            f"--json={dump}",
            f"--plot={plot}",
        ]
        # main runs its own event loop (asyncio.run), so it gets a thread of its own.
        assert await asyncio.to_thread(turn_latency.main, argv) == 0
    (turn,) = json.loads(dump.read_text())["turns"]
    assert turn["ok"], turn["failure"]
    assert "turn_latency" in turn["server_timings_ms"]
    assert_image(plot)


# --- load.py --------------------------------------------------------------------------------


def load_level(n: int, late: int, cpu: list[float]) -> load.Level:
    sessions = []
    for i in range(n):
        turns = [
            load.Turn(
                ok=True,
                client_ms=1900.0 * (1 + 0.3 * n) + 40 * t,
                server_ms={"turn_latency": 1800.0 * (1 + 0.3 * n), "asr": 180.0 * n},
                underrun_ms=400.0 if i < late else 0.0,
            )
            for t in range(3)
        ]
        sessions.append(load.Session(turns))
    return load.Level(n, sessions, 30.0 * n, cpu, [2_000_000_000] * len(cpu), 3.0, 0.0, n)


def load_results(levels: list[load.Level]) -> dict[str, Any]:
    args = argparse.Namespace(
        url="ws://127.0.0.1:8000/v1/realtime", turns=3, max_output_tokens=48, jitter_ms=100.0
    )
    return through_json(load.results(levels, "recorded: 14 clips", args))


def test_capacity_figure_draws_latency_real_time_and_cpu(tmp_path: Path) -> None:
    results = load_results(
        [
            load_level(1, 0, [150.0, 170.0]),
            load_level(2, 0, [175.0, 180.0]),
            load_level(4, 3, [185.0, 190.0]),
        ]
    )
    assert [lv["kept_real_time"] for lv in results["levels"]] == [1, 2, 1]
    assert results["levels"][0]["client_turn_latency_ms"]["p95"] > 0
    plots.capacity_figure(results, tmp_path / "capacity.png")
    assert_image(tmp_path / "capacity.png")


def test_capacity_figure_without_cpu_samples_or_answers(tmp_path: Path) -> None:
    failed = load.Level(2, [load.Session(failure="time limit")] * 2, 300.0, [], [], 0.0, 0.0, 0)
    results = load_results([load_level(1, 0, []), failed])
    assert results["levels"][1]["client_turn_latency_ms"] is None
    plots.capacity_figure(results, tmp_path / "capacity.svg")
    assert_image(tmp_path / "capacity.svg")
    plots.capacity_figure(load_results([failed]), tmp_path / "none.png")
    assert_image(tmp_path / "none.png")


# --- rest_speech.py -------------------------------------------------------------------------


def asr_record(name: str, audio_s: float, seconds: float) -> rest_speech.AsrRecord:
    return rest_speech.AsrRecord(name, audio_s, seconds, "ten of clubs", "ten of clubs", 0, 3)


def test_rtf_figure_draws_each_clip_and_each_tts_text(tmp_path: Path) -> None:
    asr = [asr_record(f"cards/00{i}.wav", 1.0 + i, 0.2 + 0.01 * i) for i in range(1, 6)]
    long_file = asr_record("all clips joined", 60.0, 3.0)
    tts = [
        rest_speech.TtsRecord(name, len(text), 0.3, 0.5 + r / 10, 2.0, text, 0, 3)
        for r in range(3)
        for name, text in rest_speech.TTS_TEXTS.items()
    ]
    results = through_json(
        rest_speech.results("http://127.0.0.1:8000", "voxgate-cascade", asr, long_file, tts)
    )
    assert results["asr_long_file"]["rtf"] == pytest.approx(0.05)
    plots.rtf_figure(results, tmp_path / "rtf.png")
    assert_image(tmp_path / "rtf.png")
    # ASR alone (--skip-tts), and nothing at all.
    asr_only = results | {"tts": []}
    plots.rtf_figure(asr_only, tmp_path / "asr.svg")
    assert_image(tmp_path / "asr.svg")
    plots.rtf_figure(asr_only | {"asr": [], "asr_long_file": None}, tmp_path / "none.png")
    assert_image(tmp_path / "none.png")
