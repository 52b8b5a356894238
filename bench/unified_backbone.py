"""The unified backbone on one engine: realtime first audio under REST load, ASR with and without
speculative decoding, streamed synthesis, and which speculative methods vLLM runs with it.

    python bench/unified_backbone.py                          # tiny random checkpoint (temp dir)
    python bench/unified_backbone.py --model DIR              # a real Step-Audio-2 folder
    python bench/unified_backbone.py --max-num-seqs 1 --turns 8 --skip-methods

No server: `StepAudio2Backbone` is started in this process (so the figures include the vocoder
and its priority executor), once per configuration, and shut down before the next.

1. First audio of a realtime turn (`respond` with a short spoken user turn, call -> first
   `AudioChunk`), alone and while a burst of REST work (`--burst` syntheses and as many
   transcriptions at `REST_PRIORITY`) is queued, under `scheduling_policy` "priority" and
   "fcfs", for each `--max-num-seqs`: two engine starts per value.
2. ASR with `speculative="ngram"` and `"none"` on the same clips (greedy): wall time per clip,
   decode tokens/s, acceptance rate and tokens per step (vLLM's `vllm:spec_decode_*`
   counters, read in-process), and whether the transcripts are identical.
3. Streamed synthesis with no other load: real-time factor of realtime turns and REST
   syntheses (wall time / seconds of audio, LM included). Vocoder alone: bench/vocoder_rtf.py.
4. Speculative methods beyond n-gram (MTP, EAGLE, EAGLE-3, a draft model), each in a child
   process so that an engine that fails to start reports its root cause: works or the error.

Each request's audio gets a distinct tiny gain, so the engine's prefix and multimodal caches
never hide the audio encoder. Figures only: nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import POCKETSPHINX_DATA, mono_16k, percentile, recorded_clips
from pydantic import Field

from voxgate.model.engine import EngineConfig
from voxgate.model.stepaudio2 import regimes
from voxgate.model.stepaudio2.backbone import StepAudio2Backbone, StepAudio2Options
from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    ResponseOptions,
    Role,
    Turn,
    TurnTrace,
)

TURN_MAX_SECONDS = 4.0
"""Clips up to this long are realtime user turns; longer ones are ASR material."""
INSTRUCTIONS = "You are a helpful voice assistant. Answer in one or two short sentences."
REST_TEXT = "The weather is nice and sunny today."
"""A REST synthesis: one sentence, 64 + 6 * 36 = 280 tokens at most (about 11 s of speech)."""
PROBE_MARK = "PROBE-RESULT "


# --- speech -----------------------------------------------------------------------------------


def load_clips(folder: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(short clips for realtime turns, longer clips for ASR, a description)."""
    recorded = recorded_clips(folder) if (folder and folder.is_dir()) else []
    # Audio files only: pocketsphinx's headerless `.raw` utterances are not read here.
    clips = [mono_16k(c) for c in recorded if not c.name.endswith(".raw")]
    if not clips:
        return synthetic_clips()
    short = [c for c in clips if len(c) <= TURN_MAX_SECONDS * INPUT_SAMPLE_RATE]
    long = [c for c in clips if len(c) > TURN_MAX_SECONDS * INPUT_SAMPLE_RATE]
    return short or clips, long or clips, f"{len(clips)} recorded clips from {folder}"


def synthetic_clips() -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Voiced-sounding harmonics under a syllable-rate envelope (no recorded speech found)."""
    rng = np.random.default_rng(0)

    def clip(seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * INPUT_SAMPLE_RATE)) / INPUT_SAMPLE_RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
        phase = 2 * np.pi * np.cumsum(f0) / INPUT_SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
        return (0.1 * voice * envelope + 0.005 * rng.standard_normal(len(t))).astype(np.float32)

    return [clip(s) for s in (1.5, 2.0, 2.5)], [clip(s) for s in (3.0, 5.0, 7.0)], "synthetic"


def variant(clip: np.ndarray, k: int) -> np.ndarray:
    """The clip at a gain of 1 - k/10^5: distinct bytes (no cache hit), the same sound."""
    return clip * np.float32(1 - k * 1e-5)


def seconds(clips: Sequence[np.ndarray]) -> float:
    return sum(len(c) for c in clips) / INPUT_SAMPLE_RATE


# --- vLLM's counters, read in-process ---------------------------------------------------------


@dataclass
class Counters:
    """Cumulative engine counters at one moment; subtract two for what happened in between."""

    generated: float = 0.0
    requests: float = 0.0
    decode_s: float = 0.0
    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    accepted_per_pos: dict[str, float] = field(default_factory=dict)

    @classmethod
    def now(cls) -> Counters:
        from prometheus_client import REGISTRY

        values: dict[str, float] = {}
        per_pos: dict[str, float] = {}
        for family in REGISTRY.collect():
            if not family.name.startswith("vllm:"):
                continue
            for s in family.samples:
                if s.name == "vllm:spec_decode_num_accepted_tokens_per_pos_total":
                    pos = s.labels.get("position", "?")
                    per_pos[pos] = per_pos.get(pos, 0.0) + s.value
                else:
                    values[s.name] = values.get(s.name, 0.0) + s.value
        return cls(
            generated=values.get("vllm:generation_tokens_total", 0.0),
            requests=values.get("vllm:request_decode_time_seconds_count", 0.0),
            decode_s=values.get("vllm:request_decode_time_seconds_sum", 0.0),
            drafts=values.get("vllm:spec_decode_num_drafts_total", 0.0),
            draft_tokens=values.get("vllm:spec_decode_num_draft_tokens_total", 0.0),
            accepted=values.get("vllm:spec_decode_num_accepted_tokens_total", 0.0),
            accepted_per_pos=per_pos,
        )

    def __sub__(self, before: Counters) -> Counters:
        return Counters(
            self.generated - before.generated,
            self.requests - before.requests,
            self.decode_s - before.decode_s,
            self.drafts - before.drafts,
            self.draft_tokens - before.draft_tokens,
            self.accepted - before.accepted,
            {
                p: v - before.accepted_per_pos.get(p, 0.0)
                for p, v in sorted(self.accepted_per_pos.items())
            },
        )

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first of each request, over the engine's decode time."""
        return (self.generated - self.requests) / self.decode_s if self.decode_s else float("nan")

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.draft_tokens if self.draft_tokens else None

    @property
    def tokens_per_step(self) -> float | None:
        return 1 + self.accepted / self.drafts if self.drafts else None

    @property
    def per_position(self) -> list[float]:
        return [v / self.drafts for v in self.accepted_per_pos.values()] if self.drafts else []


# --- 1 and 3: realtime turns, REST load, streamed synthesis -----------------------------------


@dataclass
class Stream:
    first_audio_s: float | None
    lm_first_token_s: float | None
    wall_s: float
    audio_s: float

    @property
    def rtf(self) -> float | None:
        return self.wall_s / self.audio_s if self.audio_s else None


async def realtime_turn(backbone: StepAudio2Backbone, clip: np.ndarray, max_tokens: int) -> Stream:
    options = ResponseOptions(
        request_id=f"bench-{uuid.uuid4().hex[:12]}",
        instructions=INSTRUCTIONS,
        voice=backbone.voices[0].name,
        max_output_tokens=max_tokens,
        priority=regimes.REALTIME_PRIORITY,
    )
    trace, first, audio = TurnTrace(), None, 0.0
    start = time.perf_counter()
    trace.mark("call")
    turn = backbone.respond([Turn(Role.USER, "", audio=clip)], options, trace)
    async with aclosing(turn):
        async for item in turn:
            if isinstance(item, AudioChunk):
                first = first if first is not None else time.perf_counter() - start
                audio += item.duration_s
    return Stream(first, trace.span("call", "lm_first_token"), time.perf_counter() - start, audio)


async def rest_synthesis(backbone: StepAudio2Backbone, started: asyncio.Event) -> Stream:
    first, audio = None, 0.0
    start = time.perf_counter()
    speech = backbone.synthesize(
        REST_TEXT, voice=backbone.voices[0].name, priority=regimes.REST_PRIORITY
    )
    async with aclosing(speech):
        async for chunk in speech:
            started.set()
            first = first if first is not None else time.perf_counter() - start
            audio += chunk.duration_s
    return Stream(first, None, time.perf_counter() - start, audio)


async def rest_burst(
    backbone: StepAudio2Backbone, n: int, asr_clips: Sequence[np.ndarray], started: asyncio.Event
) -> None:
    async def transcription(clip: np.ndarray) -> None:
        await backbone.transcribe(clip, priority=regimes.REST_PRIORITY)
        started.set()

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(n):
                group.create_task(rest_synthesis(backbone, started))
                group.create_task(transcription(asr_clips[i % len(asr_clips)]))
    finally:
        started.set()  # a failed burst must not leave the turn waiting for it


@dataclass
class LatencyRow:
    max_num_seqs: int
    policy: str
    load: str
    turns: list[Stream]


class Unique:
    """Hands out distinct audio variants (see `variant`)."""

    def __init__(self, start: int) -> None:
        self._k = start

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        self._k += 1
        return variant(clip, self._k)


async def latency_rows(
    backbone: StepAudio2Backbone,
    args: argparse.Namespace,
    turn_clips: Sequence[np.ndarray],
    asr_clips: Sequence[np.ndarray],
    max_num_seqs: int,
    policy: str,
) -> list[LatencyRow]:
    unique = Unique(100)
    alone, loaded = [], []
    for i in range(args.turns):
        clip = turn_clips[i % len(turn_clips)]
        alone.append(await realtime_turn(backbone, unique(clip), args.max_output_tokens))
    for i in range(args.turns):
        clip = turn_clips[i % len(turn_clips)]
        started = asyncio.Event()
        rest = [unique(c) for c in asr_clips]
        burst = asyncio.create_task(rest_burst(backbone, args.burst, rest, started))
        await started.wait()  # REST work holds the engine and more of it waits
        loaded.append(await realtime_turn(backbone, unique(clip), args.max_output_tokens))
        await burst
    load = f"+ {args.burst} TTS + {args.burst} ASR"
    return [
        LatencyRow(max_num_seqs, policy, "alone", alone),
        LatencyRow(max_num_seqs, policy, load, loaded),
    ]


async def rest_alone(backbone: StepAudio2Backbone, runs: int) -> list[Stream]:
    return [await rest_synthesis(backbone, asyncio.Event()) for _ in range(runs)]


# --- 2: ASR with and without speculative decoding ---------------------------------------------


@dataclass
class AsrRun:
    label: str
    walls: list[float]
    texts: list[str]
    counters: Counters


async def asr_runs(
    backbone: StepAudio2Backbone, label: str, clips: Sequence[np.ndarray], runs: int
) -> AsrRun:
    walls, texts = [], []
    before = Counters.now()
    for r in range(runs):
        for clip in clips:
            start = time.perf_counter()
            result = await backbone.transcribe(variant(clip, r))
            walls.append(time.perf_counter() - start)
            texts.append(result.text)
    return AsrRun(label, walls, texts, Counters.now() - before)


# --- 4: speculative methods, one child process each -------------------------------------------


class ProbeOptions(StepAudio2Options):
    """StepAudio2Options with any `speculative_config` and extra engine arguments."""

    speculative_config: dict[str, Any] | None = None
    engine_overrides: dict[str, Any] = Field(default_factory=dict)

    def engine_args(self) -> dict[str, Any]:
        args = super().engine_args()
        if self.speculative_config is not None:
            args["speculative_config"] = self.speculative_config
        return args | self.engine_overrides


@dataclass
class Probe:
    name: str
    speculative_config: dict[str, Any] | None
    patch_as_image_token: bool = False
    """hf_overrides={"image_token_index": <audio_patch> id}: vLLM's proposer reads that
    attribute from any multimodal target (see bench/README.md)."""
    skipped: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def text_config(model: Path) -> dict[str, Any]:
    return json.loads((model / "config.json").read_text())["text_config"]


def write_text_draft(source: Path, target: Path) -> Path:
    """The LM of a Step-Audio-2 folder alone, as a plain Qwen2ForCausalLM (no audio)."""
    import shutil

    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    config = {
        k: v
        for k, v in text_config(source).items()
        if k not in ("num_attention_groups", "max_seq_len")
    }
    config |= {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    config["tie_word_embeddings"] = False
    (target / "config.json").write_text(json.dumps(config, indent=2))
    tensors: dict[str, Any] = {}
    for shard in source.glob("*.safetensors"):
        tensors |= load_file(shard)
    lm = {k: v for k, v in tensors.items() if not k.startswith(("encoder.", "adapter."))}
    save_file(lm, target / "model.safetensors", metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, target / name)
    return target


def write_eagle_head(model: Path, target: Path, eagle3: bool) -> Path:
    """A random one-layer EAGLE (Llama layout) or EAGLE-3 head sized for `model`'s LM."""
    import torch
    from safetensors.torch import save_file

    text = text_config(model)
    hidden, vocab = text["hidden_size"], text["vocab_size"]
    heads = text["num_attention_heads"]
    kv = text.get("num_key_value_heads", heads) * (hidden // heads)
    mlp = text["intermediate_size"]
    generator = torch.Generator().manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    width = 2 * hidden if eagle3 else hidden  # EAGLE-3's layer reads [embedding, hidden]
    prefix = "midlayer." if eagle3 else "layers.0."
    tensors = {
        f"{prefix}self_attn.q_proj.weight": rand(hidden, width),
        f"{prefix}self_attn.k_proj.weight": rand(kv, width),
        f"{prefix}self_attn.v_proj.weight": rand(kv, width),
        f"{prefix}self_attn.o_proj.weight": rand(hidden, hidden),
        f"{prefix}mlp.gate_proj.weight": rand(mlp, hidden),
        f"{prefix}mlp.up_proj.weight": rand(mlp, hidden),
        f"{prefix}mlp.down_proj.weight": rand(hidden, mlp),
        f"{prefix}post_attention_layernorm.weight": torch.ones(hidden),
    }
    if eagle3:
        tensors |= {
            "midlayer.input_layernorm.weight": torch.ones(hidden),
            "midlayer.hidden_norm.weight": torch.ones(hidden),
            "fc.weight": rand(hidden, 3 * hidden),  # three of the target's hidden layers
            "norm.weight": torch.ones(hidden),
            "lm_head.weight": rand(vocab, hidden),
        }
    else:
        tensors["fc.weight"] = rand(hidden, 2 * hidden)  # [embedding, target hidden state]
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLMEagle3" if eagle3 else "LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_attention_heads": heads,
        "num_key_value_heads": text.get("num_key_value_heads", heads),
        "num_hidden_layers": 1,
        "vocab_size": vocab,
        "max_position_embeddings": text.get("max_position_embeddings", 4096),
        "rms_norm_eps": text.get("rms_norm_eps", 1e-6),
        "rope_theta": text.get("rope_theta", 10000.0),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def probes(model: Path, scratch: Path, tiny: bool, draft: Path | None) -> list[Probe]:
    from voxgate.model.stepaudio2.tiny import make_tiny_model

    k = 3
    eagle = write_eagle_head(model, scratch / "eagle", eagle3=False)
    eagle3 = write_eagle_head(model, scratch / "eagle3", eagle3=True)
    if draft is None and tiny:
        draft = make_tiny_model(scratch / "draft", seed=1)
    text_draft = write_text_draft(draft, scratch / "draft-text") if draft else None
    # The target's own LM as its draft: what a draft that cannot hear loses on ASR (tiny only;
    # a real model's LM would be no cheaper than the model).
    own_lm = write_text_draft(model, scratch / "own-lm") if tiny else None
    no_draft = "no draft model: pass --draft-model DIR"
    return [
        Probe("mtp", {"method": "mtp", "num_speculative_tokens": 1}),
        Probe(
            "eagle (random head)",
            {"method": "eagle", "model": str(eagle), "num_speculative_tokens": k},
        ),
        Probe(
            "eagle (random head)",
            {"method": "eagle", "model": str(eagle), "num_speculative_tokens": k},
            patch_as_image_token=True,
        ),
        Probe(
            "eagle3 (random head)",
            {"method": "eagle3", "model": str(eagle3), "num_speculative_tokens": k},
            patch_as_image_token=True,
        ),
        Probe(
            "draft model, same architecture",
            {"model": str(draft), "num_speculative_tokens": k} if draft else None,
            skipped=None if draft else no_draft,
        ),
        Probe(
            "draft model, same architecture",
            {"model": str(draft), "num_speculative_tokens": k} if draft else None,
            patch_as_image_token=True,
            skipped=None if draft else no_draft,
        ),
        Probe(
            "draft model, its LM only (Qwen2)",
            {"model": str(text_draft), "num_speculative_tokens": k} if text_draft else None,
            patch_as_image_token=True,
            skipped=None if text_draft else no_draft,
        ),
        Probe(
            "draft model, the target's own LM (Qwen2)",
            {"model": str(own_lm), "num_speculative_tokens": k} if own_lm else None,
            patch_as_image_token=True,
            skipped=None if own_lm else "tiny checkpoint only",
        ),
    ]


GENERIC = ("See root cause above", "See stack trace", "stack trace above")
ERROR_LINE = re.compile(r"(?:^|\] )((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): .+)$")


def root_cause(error: str, stderr: str) -> str:
    """The child's own exception, or, when that only points at the logs, the first error
    an engine process logged (vLLM logs the root cause in the process that raised it)."""
    if error and not any(g in error for g in GENERIC):
        return error
    for line in stderr.splitlines():
        match = ERROR_LINE.search(line.strip())
        if match and not any(g in match.group(1) for g in GENERIC):
            return match.group(1)
    if error:
        return error
    return stderr.strip().splitlines()[-1] if stderr.strip() else "no output"


def run_probe(probe: Probe, args: argparse.Namespace, model: Path) -> None:
    if probe.skipped:
        probe.result = {"ok": False, "error": f"skipped: {probe.skipped}"}
        return
    command = [
        sys.executable,
        __file__,
        "--model",
        str(model),
        "--dtype",
        args.dtype,
        "--kv-cache-gib",
        str(args.kv_cache_gib),
        "--max-model-len",
        str(args.max_model_len),
        "--probe",
        json.dumps({"spec": probe.speculative_config, "patch": probe.patch_as_image_token}),
    ]
    if args.speech:
        command += ["--speech", str(args.speech)]
    print(f"probe: {probe.name}, override={probe.patch_as_image_token}", file=sys.stderr)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.probe_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        probe.result = {"ok": False, "error": f"no answer within {args.probe_timeout} s"}
        return
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(PROBE_MARK)]
    result = json.loads(lines[-1].removeprefix(PROBE_MARK)) if lines else {"ok": False}
    if not result.get("ok"):
        result["error"] = root_cause(result.get("error", ""), done.stderr + done.stdout)
    probe.result = result


async def probe_child(
    args: argparse.Namespace, model: Path, asr_clips: Sequence[np.ndarray]
) -> None:
    """In the child: start the backbone with one speculative config, transcribe, report."""
    spec = json.loads(args.probe)
    overrides: dict[str, Any] = {}
    if spec["patch"]:
        from transformers import AutoTokenizer

        patch = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<audio_patch>")
        overrides["hf_overrides"] = {"image_token_index": int(patch)}
    options = ProbeOptions(
        speculative="none", speculative_config=spec["spec"], engine_overrides=overrides
    )
    try:
        async with StepAudio2Backbone.start(
            model, engine_config(args, 1, "priority"), options
        ) as b:
            run = await asr_runs(b, "probe", asr_clips, 1)
        result = {
            "ok": True,
            "texts": run.texts,
            "acceptance": run.counters.acceptance,
            "tokens_per_step": run.counters.tokens_per_step,
            "decode_tokens_per_s": run.counters.decode_tokens_per_s,
            "wall_s": sum(run.walls),
        }
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(PROBE_MARK + json.dumps(result), flush=True)


# --- the run ----------------------------------------------------------------------------------


def engine_config(args: argparse.Namespace, max_num_seqs: int, policy: str) -> EngineConfig:
    return EngineConfig(
        max_num_seqs=max_num_seqs,
        scheduling_policy=policy,
        kv_cache_gib=args.kv_cache_gib,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
    )


@dataclass
class Report:
    label: str
    speech: str
    turn_s: float
    asr_s: float
    asr_clips: int
    starts: list[tuple[str, float]] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    turns_alone: list[Stream] = field(default_factory=list)
    rest_alone: list[Stream] = field(default_factory=list)
    asr: list[AsrRun] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)


async def measure(
    args: argparse.Namespace,
    model: Path,
    report: Report,
    turn_clips: Sequence[np.ndarray],
    asr_clips: Sequence[np.ndarray],
) -> None:
    first = args.max_num_seqs[0]
    for max_num_seqs in args.max_num_seqs:
        for policy in ("priority", "fcfs"):
            config = engine_config(args, max_num_seqs, policy)
            options = StepAudio2Options(speculative="ngram")
            print(f"engine: max_num_seqs={max_num_seqs} {policy} ngram", file=sys.stderr)
            start = time.perf_counter()
            async with StepAudio2Backbone.start(model, config, options) as backbone:
                report.starts.append(
                    (f"{policy}, max_num_seqs {max_num_seqs}", time.perf_counter() - start)
                )
                rows = await latency_rows(
                    backbone, args, turn_clips, asr_clips, max_num_seqs, policy
                )
                report.latency += rows
                if (max_num_seqs, policy) == (first, "priority"):
                    report.turns_alone = rows[0].turns
                    report.rest_alone = await rest_alone(backbone, args.turns)
                    report.asr.append(await asr_runs(backbone, "ngram", asr_clips, args.asr_runs))
    print("engine: speculative none", file=sys.stderr)
    start = time.perf_counter()
    config = engine_config(args, first, "priority")
    async with StepAudio2Backbone.start(model, config, StepAudio2Options(speculative="none")) as b:
        report.starts.append(
            (f"priority, max_num_seqs {first}, no speculation", time.perf_counter() - start)
        )
        report.asr.insert(0, await asr_runs(b, "none", asr_clips, args.asr_runs))


# --- printing ---------------------------------------------------------------------------------


def ms(values: Sequence[float | None]) -> list[float]:
    return [1000 * v for v in values if v is not None]


def summary(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    return (
        f"{statistics.median(values):7.{digits}f} {percentile(values, 95):7.{digits}f} "
        f"{max(values):7.{digits}f}"
    )


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def print_report(report: Report, args: argparse.Namespace) -> None:
    print()
    print(f"== Unified backbone: {report.label}")
    print(
        f"speech: {report.speech}; user turns {report.turn_s:.1f} s of audio in total, "
        f"ASR {report.asr_clips} clips, {report.asr_s:.1f} s"
    )
    for name, spent in report.starts:
        print(f"engine start + warm-up ({name}): {spent:.1f} s")

    print()
    print(
        f"1. First audio of a realtime turn, ms (call -> first AudioChunk; LM = call -> first "
        f"token), {args.turns} turns per row, answers up to {args.max_output_tokens} tokens"
    )
    print(
        f"{'seqs':>4}  {'policy':<8}  {'load':<16} {'n':>2}  {'audio p50':>9} {'p95':>7} "
        f"{'max':>7}  {'LM p50':>7} {'p95':>7} {'max':>7}"
    )
    for row in report.latency:
        first = ms([t.first_audio_s for t in row.turns])
        lm = ms([t.lm_first_token_s for t in row.turns])
        print(
            f"{row.max_num_seqs:>4}  {row.policy:<8}  {row.load:<16} {len(first):>2}  "
            f"  {summary(first)}  {summary(lm)}"
        )
    silent = sum(t.first_audio_s is None for row in report.latency for t in row.turns)
    if silent:
        print(f"({silent} turns ended without audio and are not counted)")

    print()
    print("2. ASR, greedy, same clips: speculative decoding none vs ngram")
    print(
        f"{'speculative':<11} {'clip p50 ms':>11} {'p95':>6} {'total s':>8} {'tokens':>7} "
        f"{'decode tok/s':>12} {'wall tok/s':>10} {'accept':>7} {'tok/step':>8}  per position"
    )
    for run in report.asr:
        c = run.counters
        positions = " ".join(f"{v:.2f}" for v in c.per_position) or "-"
        print(
            f"{run.label:<11} {1000 * statistics.median(run.walls):11.0f} "
            f"{1000 * percentile(run.walls, 95):6.0f} {sum(run.walls):8.2f} {c.generated:7.0f} "
            f"{c.decode_tokens_per_s:12.0f} {c.generated / sum(run.walls):10.0f} "
            f"{number(c.acceptance):>7} {number(c.tokens_per_step):>8}  {positions}"
        )
    if len(report.asr) == 2:
        plain, ngram = report.asr
        same = sum(a == b for a, b in zip(plain.texts, ngram.texts, strict=True))
        print(f"transcripts identical: {same}/{len(plain.texts)}")
        speedup = ngram.counters.decode_tokens_per_s / plain.counters.decode_tokens_per_s
        print(f"decode speed-up ngram/none: {speedup:.2f}x")
    if args.model is None:
        print("(random weights: the 'text' is random, so acceptance measures n-gram repeats in it)")

    print()
    print("3. Streamed synthesis, no other load (RTF = wall / audio seconds, LM included)")
    for name, streams in (("realtime turn", report.turns_alone), ("REST synth", report.rest_alone)):
        done = [s for s in streams if s.audio_s]
        if not done:
            print(f"  {name:<14} no audio")
            continue
        rtf = [s.rtf for s in done if s.rtf is not None]
        audio = statistics.median([s.audio_s for s in done])
        first = statistics.median(ms([s.first_audio_s for s in done]))
        print(
            f"  {name:<14} n={len(done)}  audio {audio:.1f} s  first audio p50 {first:.0f} ms"
            f"  RTF p50 {statistics.median(rtf):.3f}  p95 {percentile(rtf, 95):.3f}"
        )

    if report.probes:
        print()
        print("4. Speculative methods (ASR of the clips once; '= none': transcripts identical)")
        plain = report.asr[0].texts[: report.asr_clips] if report.asr else []
        names = [
            p.name + (" + image_token_index" if p.patch_as_image_token else "")
            for p in report.probes
        ]
        width = max(map(len, names))
        for probe, name in zip(report.probes, names, strict=True):
            result = probe.result
            if result.get("ok"):
                same = "= none" if result["texts"] == plain else "DIFFERS from none"
                print(
                    f"  {name:<{width}} works, {same}, acceptance {number(result['acceptance'])}, "
                    f"tokens/step {number(result['tokens_per_step'])}, "
                    f"decode {number(result['decode_tokens_per_s'], 0)} tok/s"
                )
            else:
                print(f"  {name:<{width}} {result.get('error', 'failed')}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="Step-Audio-2 folder (default: tiny, temp)")
    parser.add_argument(
        "--speech", type=Path, default=POCKETSPHINX_DATA, help="folder of audio clips"
    )
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--turns", type=int, default=5, help="realtime turns per row")
    parser.add_argument("--burst", type=int, default=3, help="REST syntheses (and ASR) per turn")
    parser.add_argument("--max-output-tokens", type=int, default=100, help="per realtime turn")
    parser.add_argument("--asr-runs", type=int, default=3, help="passes over the ASR clips")
    parser.add_argument("--skip-methods", action="store_true", help="skip part 4")
    parser.add_argument("--draft-model", type=Path, help="draft for part 4 (tiny: generated)")
    parser.add_argument("--probe-timeout", type=int, default=240)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kv-cache-gib", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one part-4 child
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Engine processes inherit these: stdout keeps only the report.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    turn_clips, asr_clips, speech = load_clips(args.speech)
    with tempfile.TemporaryDirectory(prefix="bench-unified-") as tmp:
        model = args.model
        if model is None:
            from voxgate.model.stepaudio2.tiny import make_tiny_model

            model = make_tiny_model(Path(tmp) / "model")
        if args.probe:
            asyncio.run(probe_child(args, model, asr_clips))
            return
        label = str(args.model) if args.model else "tiny random checkpoint"
        report = Report(label, speech, seconds(turn_clips), seconds(asr_clips), len(asr_clips))
        started = time.perf_counter()
        asyncio.run(measure(args, model, report, turn_clips, asr_clips))
        if not args.skip_methods:
            report.probes = probes(model, Path(tmp), args.model is None, args.draft_model)
            for probe in report.probes:
                run_probe(probe, args, model)
        print_report(report, args)
        print(f"\n(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
