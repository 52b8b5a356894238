"""Real-time factor and first-chunk latency of the token2wav vocoder (no server involved).

    python bench/vocoder_rtf.py                            # tiny random checkpoint (temp dir)
    python bench/vocoder_rtf.py --model DIR --device cuda  # real weights in DIR/token2wav/
    python bench/vocoder_rtf.py --full-size                # published sizes, random weights

Per run, one utterance of `--tokens` random audio tokens (25 per second of speech) in the
first voice of the model:
- whole:       `synthesize(tokens)` (the default, stream-identical chunk-causal pass)
- full:        `synthesize(tokens, full_context=True)` (the reference's offline path)
- streamed:    `stream().push()` in bursts of `--burst` tokens (as an LM emits them), `finish()`
- first chunk: the `push` that returns the first audio: 25 + 3 tokens through the flow and HiFT
- voice setup: encoding the speaker prompt, done once per voice and cached (not in the others)
- |stream-whole|: the largest difference between a streamed and the whole utterance's samples
  (0 on the CPU, where both run the same arithmetic; a GPU may pick other kernels by shape)
`--full-size` builds the published architecture with random weights and a 6 s random voice
prompt: the speed of the real model without its files (speed does not depend on the values).
RTF = compute seconds / audio seconds (below 1 is faster than real time). Medians over
`--runs` runs after one warm-up run. Figures only: nothing passes or fails.

    python bench/vocoder_rtf.py --batch 8                                  # tiny, CPU
    python bench/vocoder_rtf.py --full-size --device cuda --batch 64       # eager and captured

`--batch N`: the batched vocoder (`BatchedVocoder`) with 1, 2, 4, ... N live streams stepped
together, each `--tokens` long, all started at once; eager, and on CUDA also with the step
captured as CUDA graphs. Per row:
- first chunk:    the step that starts every stream (their joins and first chunks)
- step:           median step after that (every stream advances one chunk: 1 s of audio each)
- RTF/stream:     step / chunk seconds; below 1 the N streams keep real time
- streams at RT:  N / (RTF/stream): how many streams one vocoder thread keeps at real time at
                  this batch's cost per stream (an extrapolation, fair near N)
- |batch-whole|:  the largest difference between a batched stream and `synthesize` of it
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from voxgate.model.stepaudio2.token2wav import BatchedVocoder, StepShapes, Token2Wav, Voice
from voxgate.model.stepaudio2.token2wav.config import FlowConfig
from voxgate.model.stepaudio2.token2wav.flow import CausalMaskedDiffWithXvec
from voxgate.model.stepaudio2.token2wav.hift import HiFTConfig, HiFTGenerator
from voxgate.model.stepaudio2.token2wav.tiny import write_tiny_token2wav

SAMPLES_PER_TOKEN = 960


def run_once(t2w: Token2Wav, tokens: list[int], burst: int) -> dict[str, float]:
    voice = t2w.voice(t2w.voices()[0])
    seconds = len(tokens) * SAMPLES_PER_TOKEN / t2w.sample_rate
    figures = {}

    t0 = time.perf_counter()
    with torch.inference_mode():
        t2w.flow.setup(*t2w._prompt_tensors(voice))
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # setup returns device tensors; the others return numpy
    figures["voice setup s"] = time.perf_counter() - t0
    t2w.stream(voice).push(tokens[:28])  # the voice's prompt state is cached from here on

    t0 = time.perf_counter()
    whole = t2w.synthesize(tokens, voice)
    figures["whole RTF"] = (time.perf_counter() - t0) / seconds

    t0 = time.perf_counter()
    t2w.synthesize(tokens, voice, full_context=True)
    figures["full RTF"] = (time.perf_counter() - t0) / seconds

    stream, first, busy, pieces = t2w.stream(voice), None, 0.0, []
    for i in range(0, len(tokens), burst):
        t0 = time.perf_counter()
        pieces.append(stream.push(tokens[i : i + burst]))
        spent = time.perf_counter() - t0
        busy += spent
        if first is None and len(pieces[-1]):
            first = spent
    t0 = time.perf_counter()
    pieces.append(stream.finish())
    busy += time.perf_counter() - t0
    figures["streamed RTF"] = busy / seconds
    figures["first chunk s"] = first if first is not None else float("nan")
    # Streaming is meant to be the same arithmetic as `whole` (bit-identical on the CPU); on
    # another device, kernels picked by shape may round differently: how far apart they are.
    figures["|stream-whole|"] = float(np.abs(np.concatenate(pieces) - whole).max())
    return figures


def batched_once(
    vocoder: BatchedVocoder, utterances: list[list[int]], voice: Voice
) -> dict[str, float]:
    """All streams start together and step together until every one is done."""
    streams = [vocoder.stream(voice) for _ in utterances]
    for stream, tokens in zip(streams, utterances, strict=True):
        stream.push(tokens)
        stream.finish()
    times, audio = [], [[] for _ in streams]
    while not all(s.done for s in streams):
        ready = [i for i, s in enumerate(streams) if s.ready]
        t0 = time.perf_counter()
        waves = vocoder.step([streams[i] for i in ready])
        times.append(time.perf_counter() - t0)
        for i, wave in zip(ready, waves, strict=True):
            audio[i].append(wave)
    chunk_s = vocoder.geo.chunk_tokens * SAMPLES_PER_TOKEN / vocoder.t2w.sample_rate
    # steps after the first and before the last: every stream makes one whole chunk
    steady = times[1:-1] or times
    step = statistics.median(steady)
    whole = vocoder.t2w.synthesize(utterances[0], voice)
    return {
        "first chunk s": times[0],
        "step s": step,
        "RTF/stream": step / chunk_s,
        "streams at RT": len(streams) * chunk_s / step,
        "|batch-whole|": float(np.abs(np.concatenate(audio[0]) - whole).max()),
    }


def run_batched(t2w: Token2Wav, args: argparse.Namespace, label: str) -> None:
    voice = t2w.voice(t2w.voices()[0])
    sizes = StepShapes(max_batch=args.batch).batch_sizes()
    context = len(voice.prompt_tokens) + args.tokens + 32
    shapes = StepShapes(max_batch=args.batch, slots=args.batch, context_tokens=context, voices=1)
    rng = np.random.default_rng(0)
    modes = ["eager", "captured"] if torch.device(args.device).type == "cuda" else ["eager"]
    print(
        f"batched token2wav: {label}, {args.device}/{args.dtype}, {torch.get_num_threads()} "
        f"threads, {args.tokens} tokens per stream, median of {args.runs} runs"
    )
    print(
        f"  {'mode':<9}{'streams':>8}{'first chunk s':>15}{'step s':>9}{'RTF/stream':>12}"
        f"{'streams at RT':>15}{'|batch-whole|':>15}"
    )
    for mode in modes:
        vocoder = BatchedVocoder(t2w, shapes)
        if mode == "captured":
            t0 = time.perf_counter()
            vocoder.capture()
            print(
                f"  (captured {len(vocoder.captured)} graphs in {time.perf_counter() - t0:.1f} s)"
            )
        for size in sizes:
            runs = []
            for _ in range(args.runs + 1):  # the first is a warm-up
                utterances = [
                    rng.integers(0, t2w.flow.cfg.vocab_size, args.tokens).tolist()
                    for _ in range(size)
                ]
                runs.append(batched_once(vocoder, utterances, voice))
            runs = runs[1:]

            def median(name: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[name] for r in runs)

            worst = max(r["|batch-whole|"] for r in runs)
            print(
                f"  {mode:<9}{size:>8}{median('first chunk s'):>15.3f}{median('step s'):>9.3f}"
                f"{median('RTF/stream'):>12.3f}{median('streams at RT'):>15.1f}{worst:>15.1e}"
            )


def full_size_random(folder: Path, device: str, dtype: torch.dtype) -> Token2Wav:
    rng = np.random.default_rng(0)
    n = 150  # a 6 s prompt
    Voice(
        name="random",
        prompt_tokens=rng.integers(0, 6561, n),
        prompt_mel=(rng.standard_normal((2 * n, 80)) - 5).astype(np.float32),
        speaker_embedding=rng.standard_normal(192).astype(np.float32),
    ).save(folder / "voices" / "random.npz")
    flow = CausalMaskedDiffWithXvec(FlowConfig()).to(device, dtype)
    return Token2Wav(flow, HiFTGenerator(HiFTConfig()).to(device), folder / "voices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder with token2wav/ and voices/")
    parser.add_argument("--full-size", action="store_true", help="published sizes, random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tokens", type=int, default=250, help="tokens per utterance (25/s)")
    parser.add_argument("--burst", type=int, default=5, help="tokens per push when streaming")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--batch", type=int, default=0, help="N: the batched vocoder with 1, 2, 4 .. N streams"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        dtype = getattr(torch, args.dtype)
        if args.full_size:
            t2w, label = full_size_random(Path(tmp), args.device, dtype), "full size, random"
        else:
            model = args.model or write_tiny_token2wav(Path(tmp), seed=0)
            t2w = Token2Wav.load(model, device=args.device, dtype=dtype)
            label = str(args.model) if args.model else "tiny random checkpoint"
        if args.batch:
            run_batched(t2w, args, label)
            return
        rng = np.random.default_rng(0)
        utterances = [
            rng.integers(0, t2w.flow.cfg.vocab_size, args.tokens).tolist()
            for _ in range(args.runs + 1)
        ]
        run_once(t2w, utterances[0], args.burst)  # warm-up
        runs = [run_once(t2w, u, args.burst) for u in utterances[1:]]

    seconds = args.tokens * SAMPLES_PER_TOKEN / t2w.sample_rate
    print(
        f"token2wav: {label}, {args.device}/{args.dtype}, {torch.get_num_threads()} threads, "
        f"{args.tokens} tokens ({seconds:.1f} s of audio), bursts of {args.burst}, "
        f"median of {args.runs} runs"
    )
    for name in runs[0]:
        values = [r[name] for r in runs]
        spread = f"(min {min(values):.3f}, max {max(values):.3f})"
        if name == "|stream-whole|":  # tiny or zero: print it so that 1e-6 is not "0.000"
            print(f"  {name:<14} {max(values):8.1e}   (max of {len(values)} runs)")
            continue
        print(f"  {name:<14} {statistics.median(values):8.3f}   {spread}")


if __name__ == "__main__":
    main()
