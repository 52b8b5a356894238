"""Figures of benchmark results: the dicts the benchmarks write with `--json`, drawn with `--plot`.

Each function takes a benchmark's results, already computed (JSON-shaped: plain dicts, lists and
numbers, as dumped or as loaded back), and writes one PNG or SVG (by the path's suffix).
matplotlib (the `bench` extra) is imported only when a figure is drawn, and only its Agg
renderer is used: no display, no pyplot state. Plots show what was measured; they judge nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxgate.streaming.timings import TURN_PARTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SUFFIXES = (".png", ".svg")
DPI = 100
"""Small files: a README figure, not a print."""
WIDTH_IN = 8.0
OK_COLOUR = "tab:green"
LATE_COLOUR = "tab:red"


def plot_path_problem(path: str) -> str | None:
    """Why a figure cannot be written to `path`, or None: checked before a benchmark runs, so a
    long run does not end in a missing package or folder."""
    target = Path(path)
    if target.suffix.lower() not in SUFFIXES:
        return f"--plot {path}: the file must end in {' or '.join(SUFFIXES)}"
    if not target.parent.is_dir():
        return f"--plot {path}: no folder {target.parent}"
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install -e '.[bench]'"
    return None


def _figure(height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    # No date in an SVG: the same results give the same file.
    metadata = {"Date": None} if Path(path).suffix.lower() == ".svg" else None
    figure.savefig(path, dpi=DPI, metadata=metadata)


def _no_data(axes: Axes, what: str) -> None:
    axes.text(0.5, 0.5, what, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


# --- turn_latency.py ------------------------------------------------------------------------


def turn_latency_rows(results: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """(label, milliseconds of the answered turns) per stage, in the order a turn goes through
    them, then the server's and the client's whole turn; stages nobody reported are left out."""
    ok = [t for t in results["turns"] if t["ok"]]
    rows = [
        (
            f"server {stage}",
            [t["server_timings_ms"][stage] for t in ok if stage in t["server_timings_ms"]],
        )
        for stage in (*TURN_PARTS, "turn_latency")
    ]
    rows.append(
        (
            "client turn_latency",
            [t["client_turn_latency_ms"] for t in ok if t["client_turn_latency_ms"] is not None],
        )
    )
    return [(label, values) for label, values in rows if values]


def turn_latency_figure(results: dict[str, Any], path: str | Path) -> None:
    """Per stage, a box (quartiles, whiskers to 1.5 IQR) with every turn as a dot over it."""
    rows = turn_latency_rows(results)
    figure = _figure(1.2 + 0.45 * max(len(rows), 2))
    axes = figure.add_subplot()
    ok = sum(t["ok"] for t in results["turns"])
    axes.set_title(
        f"Turn latency by stage: {ok} answered of {len(results['turns'])} turns", fontsize=11
    )
    if not rows:
        _no_data(axes, "no answered turns")
        _save(figure, path)
        return
    labels = [label for label, _ in rows]
    positions = np.arange(len(rows))[::-1]  # the first stage at the top
    axes.boxplot(
        [values for _, values in rows],
        positions=positions,
        orientation="horizontal",
        tick_labels=labels,
        widths=0.55,
        showfliers=False,  # every turn is drawn as a dot already
        medianprops={"color": "black"},
    )
    jitter = np.random.default_rng(0)  # the same results give the same figure
    for y, (_, values) in zip(positions, rows, strict=True):
        axes.scatter(
            values,
            y + jitter.uniform(-0.15, 0.15, len(values)),
            s=12,
            alpha=0.6,
            color="tab:blue",
            zorder=3,
        )
    axes.set_xlabel("milliseconds")
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path)


# --- load.py --------------------------------------------------------------------------------


def capacity_figure(results: dict[str, Any], path: str | Path) -> None:
    """Client turn latency p50 and p95 against the number of conversations at once; a green dot
    where every session kept real time, a red cross where one did not (with how many did); the
    server's mean CPU on a second axis when the results have it."""
    figure = _figure(4.2)
    axes = figure.add_subplot()
    levels = [lv for lv in results["levels"] if lv["client_turn_latency_ms"] is not None]
    axes.set_title(f"Capacity: {results['turns_per_session']} turns per conversation", fontsize=11)
    if not levels:
        _no_data(axes, "no answered turns")
        _save(figure, path)
        return
    ns = [lv["n"] for lv in levels]
    p50 = [lv["client_turn_latency_ms"]["p50"] for lv in levels]
    p95 = [lv["client_turn_latency_ms"]["p95"] for lv in levels]
    axes.plot(ns, p50, "-", color="tab:blue", label="turn latency p50")
    axes.plot(ns, p95, "--", color="tab:blue", label="turn latency p95")
    kept = [lv["kept_real_time"] == lv["n"] for lv in levels]
    for mark, colour, label, want in (
        ("o", OK_COLOUR, "all kept real time", True),
        ("X", LATE_COLOUR, "some fell behind (k/N kept up)", False),
    ):
        xs = [n for n, k in zip(ns, kept, strict=True) if k == want]
        ys = [y for y, k in zip(p95, kept, strict=True) if k == want]
        if xs:
            axes.scatter(xs, ys, marker=mark, s=60, color=colour, zorder=3, label=label)
    for lv, y in zip(levels, p95, strict=True):
        axes.annotate(
            f"{lv['kept_real_time']}/{lv['n']}",
            (lv["n"], y),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    axes.set_xlabel("conversations at once (N)")
    axes.set_ylabel("client turn latency, ms")
    axes.set_xticks(ns)
    axes.set_ylim(bottom=0, top=max(p95) * 1.2)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    cpu = [(lv["n"], np.mean(lv["cpu_percent"])) for lv in levels if lv.get("cpu_percent")]
    if cpu:
        right = axes.twinx()
        right.plot(
            *zip(*cpu, strict=True), ":", marker=".", color="tab:gray", label="server CPU % (mean)"
        )
        ceiling = 100 * results["cpus"] if results.get("cpus") else max(c for _, c in cpu)
        right.set_ylim(0, ceiling * 1.05)
        right.set_ylabel("server CPU %, all cores")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    # Below the axes: inside, it would hide one of the two axes' lines.
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    _save(figure, path)


# --- rest_speech.py -------------------------------------------------------------------------


def rtf_figure(results: dict[str, Any], path: str | Path) -> None:
    """Real-time factor (request time / audio time) per ASR clip, the long joined file last;
    and per TTS text when TTS was measured (a bar at the median, a dot per request)."""
    asr = [*results["asr"], *([results["asr_long_file"]] if results.get("asr_long_file") else [])]
    asr_rows = [(f"{r['clip']} ({r['audio_s']:.1f} s)", [_rtf(r)]) for r in asr]
    labels: dict[str, str] = {}
    tts: dict[str, list[float]] = {}
    for r in results["tts"]:  # labelled by a text's first request (its audio varies a little)
        labels.setdefault(r["name"], f"{r['name']} ({r['audio_s']:.1f} s of audio)")
        tts.setdefault(r["name"], []).append(_rtf(r))
    tts_rows = [(labels[name], rtfs) for name, rtfs in tts.items()]
    panels = [(rows, what) for rows, what in ((asr_rows, "ASR"), (tts_rows, "TTS")) if rows]
    heights = [max(len(rows), 2) for rows, _ in panels] or [2]
    figure = _figure(1.3 + 0.3 * sum(heights))
    grid = figure.add_gridspec(len(heights), 1, height_ratios=heights)
    for i, (rows, what) in enumerate(panels):
        _rtf_bars(figure.add_subplot(grid[i]), rows, what)
    if not panels:
        _no_data(figure.add_subplot(grid[0]), "nothing measured")
    figure.suptitle(f"Real-time factor per request ({results['model']})", fontsize=11)
    _save(figure, path)


def _rtf(record: dict[str, Any]) -> float:
    return float(record["seconds"] / record["audio_s"])


def _rtf_bars(axes: Axes, rows: list[tuple[str, list[float]]], what: str) -> None:
    positions = np.arange(len(rows))[::-1]  # the first row at the top
    axes.barh(positions, [np.median(v) for _, v in rows], color="tab:blue", alpha=0.7, height=0.7)
    for y, (_, values) in zip(positions, rows, strict=True):
        if len(values) > 1:
            axes.scatter(values, [y] * len(values), s=12, color="black", zorder=3)
    axes.set_yticks(positions, [label for label, _ in rows], fontsize=7)
    axes.set_xlabel(f"{what}: seconds per second of audio (below 1: faster than real time)")
    axes.grid(axis="x", alpha=0.3)
