"""What Step-Audio-2's published prompt format costs in a long spoken conversation.

    python bench/stepaudio2_prompts.py [--turns 40] [--user-s 4] [--answer-s 8] [--model DIR]

A synthetic conversation, no engine: each user turn is `--user-s` of audio (12.5 tokens a
second once vLLM expands it), each answer `--answer-s` of speech written the TA4 way (per 160
ms one text token or `<tts_pad>`, then four speech codes: 31.25 tokens a second). The prompt of
every turn is built by the backbone's own window (`DialogueWindow`, the 60 s default answer
budget, `--context` tokens) in two ways, side by side:

- published: past answers as the ids the model wrote (TA4), the newest user turns as audio
  (the session keeps `--audio-turns`), older ones as transcripts;
- text: past answers and user turns as their words only (what voxgate wrote before issue 12).

Per way it prints the median and p95 prompt length, how many turns the window holds, the share
of each prompt's ids that repeat the previous prompt's start (what vLLM's prefix cache can
reuse; 1.0 = only the new turn is prefilled), how often the window moved, and the median time
to render a prompt (CPU, in the backbone's worker thread). `--model DIR` uses a real
checkpoint's tokenizer (the published vocabulary); the default is the tiny test vocabulary.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from voxgate.model.stepaudio2 import budgets
from voxgate.model.stepaudio2.backbone import DialogueWindow, StepAudio2Options
from voxgate.model.stepaudio2.regimes import PromptWriter
from voxgate.model.stepaudio2.tiny import build_tokenizer
from voxgate.model.stepaudio2.tokens import TokenMap
from voxgate.model.types import ContextWindow, Role, Turn
from voxgate.streaming.session import older_voices_kept

PERSONA = "You are a friendly voice assistant. Answer briefly and warmly."
WORDS = "the weather is nice today and we could take a walk along the river later".split()


def spoken_answer(tokenizer, tokens: TokenMap, seconds: float, seed: int) -> tuple[str, tuple]:
    """An answer's words and its TA4 ids (~2.5 words a second, one text slot per 4 codes)."""
    rng = np.random.default_rng(seed)
    words = " ".join(rng.choice(WORDS, max(1, int(seconds * 2.5))))
    text = tokenizer.encode(words, add_special_tokens=False)
    codes = [tokens.audio_0 + int(c) for c in rng.integers(0, 6561, int(seconds * 25))]
    ids: list[int] = []
    for group in range(-(-len(codes) // 4)):
        ids.append(text[group] if group < len(text) else tokens.tts_pad)
        ids += codes[group * 4 : group * 4 + 4]
    return words, (*ids, tokens.tts_end)


def shared_start(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def run(tokenizer, args: argparse.Namespace, published: bool) -> dict[str, float]:
    tokens = TokenMap.from_tokenizer(tokenizer)
    writer = PromptWriter(tokenizer, tokens)
    window = DialogueWindow(writer, tokenizer, args.context)
    state = ContextWindow()
    answer_tokens = budgets.speech_tokens(StepAudio2Options().answer_s)
    turns: list[Turn] = []
    lengths, held, reuse, render_ms = [], [], [], []
    moves, previous, start_before = 0, None, 0
    for i in range(args.turns):
        voice = np.zeros(int(args.user_s * 16_000), np.float32)
        said = " ".join(WORDS[: int(args.user_s * 2.5)])
        if published:  # the session keeps the newest user voices only, as it does
            voices = [t for t in turns if t.audio is not None]
            keep = older_voices_kept(len(voices), args.audio_turns) if args.blocks else None
            for old in (
                voices[: len(voices) - keep]
                if keep is not None
                else voices[: -args.audio_turns + 1 or None]
            ):
                turns[turns.index(old)] = Turn(Role.USER, old.text, None, key=old.key)
        turns.append(Turn(Role.USER, said, voice if published else None, key=f"u{i}"))
        began = time.perf_counter()
        prompt, start = window.build_window(PERSONA, turns, answer_tokens, state)
        render_ms.append((time.perf_counter() - began) * 1000)
        lengths.append(prompt.length)
        held.append(len(turns) - start)
        if previous is not None:
            reuse.append(shared_start(previous, prompt.token_ids) / len(prompt.token_ids))
            moves += start != start_before
        previous, start_before = prompt.token_ids, start
        words, ids = spoken_answer(tokenizer, tokens, args.answer_s, i)
        turns.append(Turn(Role.ASSISTANT, words, key=f"a{i}", tokens=ids if published else None))
    return {
        "prompt_median": statistics.median(lengths),
        "prompt_p95": float(np.percentile(lengths, 95)),
        "turns_held_median": statistics.median(held),
        "prefix_reuse_median": statistics.median(reuse),
        "prefix_reuse_p5": float(np.percentile(reuse, 5)),
        "window_moves": moves,
        "render_ms_median": statistics.median(render_ms),
        "render_ms_p95": float(np.percentile(render_ms, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--user-s", type=float, default=4.0)
    parser.add_argument("--answer-s", type=float, default=8.0)
    parser.add_argument("--audio-turns", type=int, default=4)
    parser.add_argument(
        "--one-by-one",
        dest="blocks",
        action="store_false",
        help="drop old user voices one per turn instead of in blocks (for comparison)",
    )
    parser.add_argument("--context", type=int, default=StepAudio2Options().context_tokens)
    parser.add_argument("--model", type=Path, help="a Step-Audio-2 folder (its tokenizer)")
    args = parser.parse_args()
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer())
    print(
        f"{args.turns} turns: user {args.user_s:g} s of audio, answer {args.answer_s:g} s of "
        f"speech; context {args.context} tokens, {budgets.speech_tokens(60)} kept for the answer"
    )
    rows = {"published": run(tokenizer, args, True), "text": run(tokenizer, args, False)}
    names = list(rows["published"])
    print(f"{'':24}" + "".join(f"{name:>12}" for name in rows))
    for name in names:
        print(f"{name:24}" + "".join(f"{rows[way][name]:>12.2f}" for way in rows))


if __name__ == "__main__":
    main()
