"""The unified backbone on one GPU: first audio, decode speed and voices per GPU, ASR speed.

    python bench/gpu_capacity.py                          # Step-Audio-2-mini sizes, random weights
    python bench/gpu_capacity.py --model DIR              # a checkpoint on disk (real weights too)
    python bench/gpu_capacity.py --tiny --levels 1,2      # the tiny checkpoint: same path, on a CPU
    python bench/gpu_capacity.py --json gpu.json --plot gpu.png --budget-s 600

One command, in this order, each step timed:
1. The checkpoint: `--model DIR`, or one made in a temp dir (`make-tiny-model --size mini`,
   weights generated on the GPU; `--tiny`: the tiny one).
2. The vocoder alone (`vocoder_rtf.py`'s run on the checkpoint's token2wav, before the server
   holds the GPU): streamed real-time factor and first chunk of one stream. 1 / RTF is how many
   voices one vocoder thread keeps in real time stepping them one at a time; the batched
   vocoder's figures are `vocoder_rtf.py --batch`'s.
3. `voxgate serve --backbone stepaudio2 --model DIR` (n-gram speculation, the default), then
   for each N in `--levels`, N realtime sessions at once speaking recorded questions at real
   time (`load.py`'s sessions and its "kept real time" test). Per N: first audio after the end
   of the turn (the server's `turn_latency` less its `end_of_turn_wait`), split into the
   server's stages (`streaming/timings.py`): ASR of the turn, `lm_first_token` (submit to first
   token: queueing, audio encoding and prefill), the first 25 + 3 speech codes
   (`lm_first_sentence` - `lm_first_token`: the stepaudio2 backbone marks `first_clause` when the
   vocoder has the codes its first chunk needs) and the vocoder's first chunk
   (`tts_first_chunk`); vLLM's mean queue and prefill times; tokens generated per second, over
   the level (the growth of `vllm:generation_tokens_total` in `/metrics` over its wall time) and
   per request while it decodes (over `vllm:request_decode_time_seconds`); and the sessions that
   kept real time.
4. REST ASR: every clip posted to `/v1/audio/transcriptions`, one at a time, on that server and
   on a second one started with `VOXGATE_STEPAUDIO2__SPECULATIVE=none`: real-time factor with
   and without n-gram speculation, acceptance (`vllm:spec_decode_*`), identical transcripts.

`--budget-s` bounds the whole run: a level that cannot finish in what is left is cut at it (its
unfinished sessions count as failed), later levels and the second server are skipped, and the
report says so. With random weights the LM never ends a turn by itself: answers run to
`--max-output-tokens` (about four speech codes in five tokens: `published_size.py`) and
transcripts to the ASR budget, so decoding work is an upper bound of what real weights do, and
n-gram acceptance is that of random text. Figures only: nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import load
import numpy as np
import torch
from common import POCKETSPHINX_DATA, Clip, default_piper_voice, load_speech, summary
from plots import capacity_figure, plot_path_problem
from rest_speech import AsrRecord, asr_record
from vocoder_rtf import run_once

DEFAULT_LEVELS = "1,8,32,64"
TINY_LEVELS = "1,2"
STAGES = ("after_end_of_turn", "asr", "lm_first_token", "first_codes", "vocoder_first_chunk")
"""The columns of the level table: first audio after the end of turn, then its parts."""
ENGINE_PHASES = {
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
}
"""vLLM's own split of a request's time to first token (a histogram each, over every request:
ASR and answers alike), read as a mean per level."""
READY_TIMEOUT_S = 900.0
SERVER_STOP_S = 60.0


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- the checkpoint and the vocoder ---------------------------------------------------------


def make_checkpoint(args: argparse.Namespace, scratch: Path) -> tuple[Path, dict[str, Any]]:
    if args.model:
        return Path(args.model), {"made": False}
    started = time.perf_counter()
    directory = scratch / "model"
    if args.tiny:
        from voxgate.model.stepaudio2.tiny import make_tiny_model

        make_tiny_model(directory)
        return directory, {"made": "tiny", "seconds": time.perf_counter() - started}
    from voxgate.model.stepaudio2.published_size import write_mini_model

    report = write_mini_model(
        directory, device=args.device, progress=lambda line: print(line, file=sys.stderr)
    )
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the engine starts only with 90 % of the GPU free
    return directory, {
        "made": "mini",
        "seconds": report.total_s,
        "bytes": report.total_bytes,
        "weights_gb_per_s": report.gb_per_s,
    }


def vocoder_alone(model: Path, device: str, runs: int) -> dict[str, float]:
    """`vocoder_rtf.py`'s figures for the checkpoint's token2wav, float32 as the server runs it:
    medians over `runs` runs after a warm-up, 10 s utterances streamed in bursts of 5 codes."""
    from voxgate.model.stepaudio2.token2wav import Token2Wav

    vocoder = Token2Wav.load(model, device=device)
    rng = np.random.default_rng(0)
    utterances = [rng.integers(0, 6561, 250).tolist() for _ in range(runs + 1)]
    run_once(vocoder, utterances[0], 5)
    measured = [run_once(vocoder, u, 5) for u in utterances[1:]]
    del vocoder
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        name: float(np.median([m[name] for m in measured]))
        for name in ("streamed RTF", "first chunk s", "whole RTF")
    }


# --- the server -----------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path
    start_s: float

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/realtime"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(args: argparse.Namespace, model: Path, speculative: str) -> dict[str, str]:
    text = json.loads((model / "config.json").read_text())["text_config"]
    context = min(8192, int(text["max_position_embeddings"]))
    return {
        **os.environ,
        "VOXGATE_BACKBONE": "stepaudio2",
        "VOXGATE_MODEL": str(model),
        "VOXGATE_STEPAUDIO2__SPECULATIVE": speculative,
        "VOXGATE_STEPAUDIO2__CONTEXT_TOKENS": str(context),
        "VOXGATE_STEPAUDIO2__VOCODER_DEVICE": args.device,
        "VOXGATE_STEPAUDIO2__THINK": "off",
        "VOXGATE_ENGINE__MAX_NUM_SEQS": str(args.max_num_seqs),
        "VOXGATE_ENGINE__KV_CACHE_GIB": str(args.kv_cache_gib),
        "VOXGATE_ENGINE__ENFORCE_EAGER": "false" if args.compile else "true",
        "VOXGATE_REALTIME__MAX_SESSIONS": str(max(args.levels) + 4),
        "VOXGATE_DRAIN_DEADLINE_S": "2",
    }


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path, timeout_s: float) -> Iterator[Server]:
    """`voxgate serve` in a process group of its own, until /ready answers 200; stopped (SIGTERM,
    then SIGKILL to its group) on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "voxgate.server.cli", "serve", "--port", str(port)]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"voxgate serve exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"voxgate serve not ready after {timeout_s:.0f} s:\n{tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(1.0)  # polling a child process: there is no event to wait on
        yield Server(process, base_url, log, time.monotonic() - started)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the engine's processes, should any be left
    process.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def engine_counters(base_url: str) -> dict[str, float]:
    """vLLM's counters in the server's /metrics, summed over their labels."""
    wanted = (
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:spec_decode_num_drafts_total",
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
        "vllm:request_decode_time_seconds_sum",
        *(f"{h}_{part}" for h in ENGINE_PHASES.values() for part in ("sum", "count")),
    )
    totals = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[-1])
    return totals


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


# --- realtime levels ------------------------------------------------------------------------


def turn_stages(server_ms: dict[str, float]) -> dict[str, float]:
    """The level table's stages of one turn, from its `x_voxgate.timings_ms`."""
    stages = {}
    if "turn_latency" in server_ms and "end_of_turn_wait" in server_ms:
        stages["after_end_of_turn"] = server_ms["turn_latency"] - server_ms["end_of_turn_wait"]
    if "asr" in server_ms:
        stages["asr"] = server_ms["asr"]
    if "lm_first_token" in server_ms:
        stages["lm_first_token"] = server_ms["lm_first_token"]
        if "lm_first_sentence" in server_ms:
            stages["first_codes"] = server_ms["lm_first_sentence"] - server_ms["lm_first_token"]
    if "tts_first_chunk" in server_ms:
        stages["vocoder_first_chunk"] = server_ms["tts_first_chunk"]
    return stages


def level_figures(
    level: load.Level, tokens: dict[str, float], measure: argparse.Namespace
) -> dict[str, Any]:
    turns = [t for s in level.sessions for t in s.turns]
    answered = [t for t in turns if t.ok]
    per_turn = [turn_stages(t.server_ms) for t in answered]
    stages = {
        name: summary(values) if (values := [s[name] for s in per_turn if name in s]) else None
        for name in STAGES
    }
    return {
        "n": level.n,
        "turns": len(turns),
        "answered": len(answered),
        "kept_real_time": sum(
            s.kept_real_time(measure.jitter_ms, measure.turns) for s in level.sessions
        ),
        "wall_s": level.wall_s,
        "stages_ms": stages,
        "tokens_per_s": tokens["vllm:generation_tokens_total"] / level.wall_s,
        "stream_tokens_per_s": tokens["vllm:generation_tokens_total"] / decoding
        if (decoding := tokens["vllm:request_decode_time_seconds_sum"])
        else None,
        "engine_mean_ms": {
            phase: 1000 * tokens[f"{h}_sum"] / tokens[f"{h}_count"]
            if tokens[f"{h}_count"]
            else None
            for phase, h in ENGINE_PHASES.items()
        },
        "prompt_tokens": tokens["vllm:prompt_tokens_total"],
        "max_waiting": level.max_waiting,
        "max_running": level.max_running,
    }


async def run_levels(
    server: Server, args: argparse.Namespace, clips: list[Clip], budget: Budget
) -> tuple[list[load.Level], list[dict[str, Any]], list[str]]:
    measure = load.parse_args(
        [
            "--url",
            server.ws_url,
            "--turns",
            str(args.turns),
            "--max-output-tokens",
            str(args.max_output_tokens),
            "--timeout",
            str(args.answer_timeout),
        ]
    )
    pid = server.process.pid
    warm = argparse.Namespace(**{**vars(measure), "turns": 1})
    await load.run_session(warm, clips, 0, 0.0)
    levels, figures, skipped = [], [], []
    for n in args.levels:
        left = budget.left() - args.reserve_s
        if left < args.min_level_s:
            skipped.append(f"N={n}: skipped, {max(left, 0):.0f} s of the budget left")
            continue
        measure.time_limit = min(args.level_time_limit, left)
        before = engine_counters(server.base_url)
        level = await load.run_level(measure, clips, n, pid)
        after = engine_counters(server.base_url)
        levels.append(level)
        figures.append(level_figures(level, grown(before, after), measure))
        print(f"N={n}: {level.wall_s:.0f} s", file=sys.stderr)
    return levels, figures, skipped


# --- REST ASR -------------------------------------------------------------------------------


def asr_pass(server: Server, clips: list[Clip]) -> tuple[list[AsrRecord], dict[str, float]]:
    """Every clip transcribed once, one at a time, after one warm-up request."""
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        asr_record(http, clips[0])
        before = engine_counters(server.base_url)
        records = [asr_record(http, clip) for clip in clips]
        after = engine_counters(server.base_url)
    return records, grown(before, after)


def asr_figures(records: list[AsrRecord], counters: dict[str, float]) -> dict[str, Any]:
    drafted = counters["vllm:spec_decode_num_draft_tokens_total"]
    accepted = counters["vllm:spec_decode_num_accepted_tokens_total"]
    seconds = sum(r.seconds for r in records)
    return {
        "clips": len(records),
        "audio_s": sum(r.audio_s for r in records),
        "rtf": summary([r.rtf for r in records]),
        "rtf_overall": seconds / sum(r.audio_s for r in records),
        "tokens": counters["vllm:generation_tokens_total"],
        "tokens_per_s": counters["vllm:generation_tokens_total"] / seconds,
        "acceptance": accepted / drafted if drafted else None,
        "records": [asdict(r) for r in records],
    }


# --- the report -----------------------------------------------------------------------------


def ms_pair(stats: dict[str, float] | None) -> str:
    return f"{'-':>6}{'-':>6}" if stats is None else f"{stats['p50']:>6.0f}{stats['p95']:>6.0f}"


def whole(value: float | None, width: int) -> str:
    """A right-aligned whole number, or a dash for none."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.0f}"


def report(results: dict[str, Any]) -> str:
    lines = [f"== Unified backbone capacity: {results['model']} on {results['device_name']}"]
    made = results["checkpoint"]
    if made.get("made") == "mini":
        lines.append(
            f"checkpoint made: {made['bytes'] / 1e9:.1f} GB in {made['seconds']:.0f} s "
            f"(weights {made['weights_gb_per_s']:.2f} GB/s)"
        )
    elif made.get("made"):
        lines.append(f"checkpoint made ({made['made']}): {made['seconds']:.0f} s")
    lines.append(f"speech: {results['speech']}")
    vocoder = results.get("vocoder")
    if vocoder:
        rtf = vocoder["streamed RTF"]
        lines.append(
            f"vocoder alone ({results['device']}, float32, 10 s utterances): streamed RTF "
            f"{rtf:.3f}, first chunk {vocoder['first chunk s'] * 1000:.0f} ms -> about "
            f"{1 / rtf:.1f} voices per vocoder thread in real time, one stream at a time (the "
            "server batches its streams on CUDA unless VOXGATE_STEPAUDIO2__BATCHED_VOCODER=off)"
        )
    for name, seconds in results["server_start_s"].items():
        lines.append(f"server start + warm-up (speculative {name}): {seconds:.0f} s")
    lines += [
        "",
        f"Realtime sessions: {results['turns_per_session']} turns each, answers capped at "
        f"{results['max_output_tokens']} tokens; ms p50/p95, server-reported; first audio = end "
        "of turn -> first audio sent; 25+3 codes = first token -> the vocoder's first chunk "
        "has its codes; tok/s = tokens generated over the level's wall time, stream = per "
        "request while decoding (vLLM's decode time); queue, prefill = vLLM's mean ms; both over "
        "all requests (ASR and answers)",
        f"{'N':>3} {'turns ok':>9} {'kept RT':>8} {'first audio':>12}{'asr':>12}"
        f"{'1st token':>12}{'25+3 codes':>12}{'vocoder 1st':>12} {'tok/s':>6}{'stream':>7}"
        f" {'queue':>6}{'prefill':>8} {'wait':>5} {'wall s':>6}",
    ]
    for level in results["levels"]:
        stages = level["stages_ms"]
        lines.append(
            f"{level['n']:>3} {level['answered']:>4}/{level['turns']:<4} "
            f"{level['kept_real_time']:>3}/{level['n']:<4}"
            + "".join(ms_pair(stages[name]) for name in STAGES)
            + f" {level['tokens_per_s']:>6.0f}"
            + whole(level["stream_tokens_per_s"], 7)
            + "".join(
                whole(level["engine_mean_ms"][p], w) for p, w in (("queue", 7), ("prefill", 8))
            )
            + f" {level['max_waiting']:>5.0f}"
            f" {level['wall_s']:>6.0f}"
        )
    kept = [str(lv["n"]) for lv in results["levels"] if lv["kept_real_time"] == lv["n"]]
    lines.append(f"every session kept real time at N = {', '.join(kept) or 'none of the levels'}")
    lines += results["skipped"]
    asr = results["asr"]
    if asr:
        lines += [
            "",
            "REST ASR, one clip at a time (RTF = request time / audio):",
            f"{'speculative':<12}{'clips':>6}{'audio s':>8}{'RTF p50':>9}{'p95':>7}"
            f"{'overall':>9}{'tokens':>8}{'tok/s':>8}{'accept':>8}",
        ]
        for name, figures in asr.items():
            if figures is None:
                lines.append(f"{name:<12}skipped")
                continue
            accept = "-" if figures["acceptance"] is None else f"{figures['acceptance']:.2f}"
            lines.append(
                f"{name:<12}{figures['clips']:>6}{figures['audio_s']:>8.1f}"
                f"{figures['rtf']['p50']:>9.3f}{figures['rtf']['p95']:>7.3f}"
                f"{figures['rtf_overall']:>9.3f}{figures['tokens']:>8.0f}"
                f"{figures['tokens_per_s']:>8.0f}{accept:>8}"
            )
        if results.get("transcripts_identical") is not None:
            same, count = results["transcripts_identical"]
            lines.append(f"transcripts identical with and without speculation: {same}/{count}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Step-Audio-2 folder (default: make one, temp dir)")
    parser.add_argument("--tiny", action="store_true", help="make the tiny checkpoint instead")
    parser.add_argument("--device", default="cuda" if gpu else "cpu", choices=["cuda", "cpu"])
    parser.add_argument(
        "--levels", help=f"sessions at once (default {DEFAULT_LEVELS}; tiny {TINY_LEVELS})"
    )
    parser.add_argument("--turns", type=int, default=2, help="turns per session")
    parser.add_argument("--max-output-tokens", type=int, default=100, help="per answer")
    parser.add_argument("--answer-timeout", type=float, default=120.0, help="seconds per answer")
    parser.add_argument("--budget-s", type=float, default=1e9, help="the whole run's time bound")
    parser.add_argument("--level-time-limit", type=float, default=240.0, help="seconds per N")
    parser.add_argument(
        "--min-level-s",
        type=float,
        default=30.0,
        help="start a level only with this much budget left",
    )
    parser.add_argument(
        "--reserve-s",
        type=float,
        default=0.0,
        help="budget kept back from the levels for the ASR part",
    )
    parser.add_argument("--max-num-seqs", type=int, help="engine slots (default GPU 160, CPU 4)")
    parser.add_argument("--kv-cache-gib", type=float, help="default GPU 16, CPU 0.5")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=gpu,
        help="vLLM compiled mode and CUDA graphs (default on a GPU)",
    )
    parser.add_argument("--vocoder-runs", type=int, default=3)
    parser.add_argument("--speech", default=str(POCKETSPHINX_DATA))
    parser.add_argument("--source", choices=("auto", "recorded", "piper"), default="auto")
    parser.add_argument("--piper-voice", default=str(default_piper_voice()))
    parser.add_argument("--logs", help="folder for the servers' logs (default: temp dir)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also draw load.py's capacity figure")
    args = parser.parse_args(argv)
    if args.model and args.tiny:
        parser.error("--model and --tiny exclude each other")
    if args.device == "cuda" and not gpu:
        parser.error("--device cuda: torch sees no CUDA device")
    args.levels = [
        int(n) for n in (args.levels or (TINY_LEVELS if args.tiny else DEFAULT_LEVELS)).split(",")
    ]
    if min(args.levels) < 1 or args.turns < 1:
        parser.error("--levels and --turns must be positive")
    on_gpu = args.device == "cuda"
    args.max_num_seqs = args.max_num_seqs or (160 if on_gpu else 4)
    # 64 sessions hold ~2 GB of context; vLLM refuses to start with less than 90 % of the GPU
    # free, and the batched vocoder's slots take theirs after it: leave them room.
    args.kv_cache_gib = args.kv_cache_gib or (16.0 if on_gpu else 0.5)
    if args.plot and (problem := plot_path_problem(args.plot)):
        parser.error(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    clips, source = load_speech(args)
    questions = [c for c in clips if len(c.audio) / c.sample_rate <= load.MAX_CLIP_S]
    with tempfile.TemporaryDirectory(prefix="gpu-capacity-") as scratch:
        logs = Path(args.logs or scratch)
        logs.mkdir(parents=True, exist_ok=True)
        model, made = make_checkpoint(args, Path(scratch))
        results: dict[str, Any] = {
            "model": "tiny checkpoint" if args.tiny else (args.model or "mini-sized, random"),
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "checkpoint": made,
            "speech": f"{source}; {len(questions)} questions of at most {load.MAX_CLIP_S:g} s",
            "turns_per_session": args.turns,
            "max_output_tokens": args.max_output_tokens,
            "engine": {
                "max_num_seqs": args.max_num_seqs,
                "kv_cache_gib": args.kv_cache_gib,
                "compiled": args.compile,
            },
            "server_start_s": {},
            "levels": [],
            "skipped": [],
            "asr": {},
        }
        results["vocoder"] = vocoder_alone(model, args.device, args.vocoder_runs)
        levels: list[load.Level] = []
        with serving(
            server_env(args, model, "ngram"), logs / "serve-ngram.log", READY_TIMEOUT_S
        ) as server:
            results["server_start_s"]["ngram"] = server.start_s
            levels, results["levels"], results["skipped"] = asyncio.run(
                run_levels(server, args, questions, budget)
            )
            started = time.monotonic()
            with_ngram, counters = asr_pass(server, clips)
            asr_s = time.monotonic() - started
            results["asr"]["ngram"] = asr_figures(with_ngram, counters)
        if budget.left() > results["server_start_s"]["ngram"] + asr_s:
            with serving(
                server_env(args, model, "none"), logs / "serve-none.log", READY_TIMEOUT_S
            ) as server:
                results["server_start_s"]["none"] = server.start_s
                without, counters = asr_pass(server, clips)
                results["asr"]["none"] = asr_figures(without, counters)
            same = sum(a.text == b.text for a, b in zip(with_ngram, without, strict=True))
            results["transcripts_identical"] = (same, len(without))
        else:
            results["asr"]["none"] = None
            results["skipped"].append("ASR without speculation: skipped, budget spent")
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        measure = argparse.Namespace(
            url="", turns=args.turns, jitter_ms=100.0, max_output_tokens=args.max_output_tokens
        )
        capacity_figure(load.results(levels, source, measure), args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
