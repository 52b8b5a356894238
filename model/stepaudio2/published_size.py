"""Step-Audio-2-mini at its published sizes with random weights: `make-tiny-model --size mini`.

The published checkpoint cannot be fetched here, but its speed does not depend on its values: a
random checkpoint of the same sizes, layout and vocabulary measures first audio, decode speed
and voices per GPU. It is written as the published one is laid out: `config.json` (the values
below), bfloat16 weights under the published names in sharded safetensors with an index, a
tokenizer with every special and audio token at its published id, the token2wav folder at its
published sizes, and a random voice prompt.

Weights are generated tensor by tensor on the chosen device (`cuda` on a GPU machine) and
written shard by shard, so the host holds one shard at a time. Each tensor has its own seed,
so writing some shards (`only_shards`) gives the same bytes as writing all.

A random LM of this vocabulary would almost never speak: 6,561 of its 158,720 outputs are
speech codes, so a turn would need ~700 tokens for the vocoder's first 28 codes. One hidden
dimension is therefore pinned (`RandomWeights`): every token's embedding holds a constant there,
no layer reads or writes it, and the LM head reads it as a bonus for the speech codes. Sampled at
the realtime regime's temperature, about four tokens in five are speech codes, as in the
published model's TA4 answers (one text token, four codes). The end tokens keep a random
model's odds (about 1 in 400,000 per sampled step; greedy ASR almost never picks them), so
answers and transcripts run to their token budgets.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from voxgate.model.stepaudio2 import regimes
from voxgate.model.stepaudio2.tokens import AUDIO_CODES

MINI_CONFIG: dict[str, Any] = {
    "architectures": ["StepAudio2ForCausalLM"],
    "model_type": "step_audio_2",
    "torch_dtype": "bfloat16",
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_attention_groups": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "max_seq_len": 16384,
        "max_position_embeddings": 16384,
        "vocab_size": 158720,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
        "torch_dtype": "bfloat16",
    },
    "audio_encoder_config": {
        "n_mels": 128,
        "n_audio_ctx": 1500,
        "n_audio_state": 1280,
        "n_audio_head": 20,
        "n_audio_layer": 32,
        "n_codebook_size": 4096,
        "llm_dim": 3584,
        "kernel_size": 3,
        "adapter_stride": 2,
    },
}
"""Step-Audio-2-mini's `config.json` as reconstructed from public code (the values are
unverified against the real file: tests/fixtures/stepaudio2/README.md says where each comes
from; a unit test holds this equal to that fixture)."""

TEXT_TOKENS = 151_643
"""Qwen2.5's text vocabulary: every id below is text."""
BOT_STAND_IN = 151_666
"""`<|BOT|>`'s published id is unknown (it lies in the text range); the first free id after
`<|EOT|>` stands in for it."""
MINI_TOKEN_IDS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|EOT|>": 151665,
    "<|BOT|>": BOT_STAND_IN,
    "<audio_start>": 151688,
    "<audio_end>": 151689,
    "<audio_patch>": 151690,
    "<tts_start>": 151693,
    "<tts_end>": 151694,
    "<tts_pad>": 151695,
    "<audio_0>": 151696,
}
"""Published ids of the named tokens; `<audio_k>` is `<audio_0>` + k up to `<audio_6561>`.
Ids between them that no public source names are filled with unused tokens."""
TEXT_ADDED = ("<tool_call>", "</tool_call>")
"""Added tokens that are not special (they decode as text), as in Qwen2.5."""

WEIGHT_STD = 0.02
SPEECH_SHARE = 0.8
"""Share of speech codes among the tokens the random LM samples in the realtime regime."""
PIN_VALUE = 100.0
"""The pinned dimension's value in every embedding: large against the rest of the residual
stream (a few units with these weights), so the final norm maps it to ~sqrt(hidden_size)."""
SUPPRESSED = -20.0
"""Logit of the embedding rows past the tokenizer (padding to 158,720): never sampled."""

Init = Literal["normal", "ones", "zeros"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init
    seed_index: int
    """Position in the checkpoint: with the run's seed, this tensor's own seed."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 2  # bfloat16


@dataclass(frozen=True, slots=True)
class WriteReport:
    directory: Path
    parameters: int
    total_bytes: int
    shards: int
    written: tuple[int, ...]
    """1-based numbers of the shards written (all unless `only_shards` or `dry_run`)."""
    written_bytes: int
    weights_s: float
    """Generating and writing the weight shards."""
    total_s: float

    @property
    def gb_per_s(self) -> float:
        return self.written_bytes / 1e9 / self.weights_s if self.weights_s else float("nan")


def mini_config() -> dict[str, Any]:
    return copy.deepcopy(MINI_CONFIG)


def tensor_specs(config: dict[str, Any]) -> list[TensorSpec]:
    """Every checkpoint tensor of `config` in module order (encoder, adapter, LM): names and
    shapes from voxgate's own modules on the meta device, norms' weights 1 and biases 0."""
    from transformers import Qwen2ForCausalLM

    from voxgate.model.stepaudio2.config import StepAudio2Config
    from voxgate.model.stepaudio2.encoder import Adaptor, AudioEncoder

    parsed = StepAudio2Config(**config)
    with torch.device("meta"):
        modules: list[tuple[str, nn.Module]] = [
            ("encoder.", AudioEncoder(parsed.audio_encoder_config)),
            ("adapter.", Adaptor(parsed.audio_encoder_config)),
            ("", Qwen2ForCausalLM(parsed.get_text_config())),
        ]
    specs: list[TensorSpec] = []
    for prefix, module in modules:
        norms = {
            name
            for name, m in module.named_modules()
            if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
        }
        for name, tensor in module.state_dict().items():
            owner, _, leaf = name.rpartition(".")
            init: Init = "normal"
            if owner in norms:
                init = "ones" if leaf == "weight" else "zeros"
            specs.append(TensorSpec(prefix + name, tuple(tensor.shape), init, len(specs)))
    return specs


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors, at most `shard_bytes` a shard (a bigger tensor alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_name(number: int, count: int) -> str:
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def build_mini_tokenizer():
    """The tiny trained BPE padded with unreachable filler tokens to Qwen's 151,643 text ids,
    then every named token at its published id and the 6,562 audio codes."""
    from tokenizers import AddedToken, Tokenizer

    from voxgate.model.stepaudio2.tiny import train_text_bpe

    data = json.loads(train_text_bpe().to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    # No merge leads to these: the BPE never produces them from text.
    vocab.update({f"<|text_{i}|>": i for i in range(len(vocab), TEXT_TOKENS)})
    tokenizer = Tokenizer.from_str(json.dumps(data))

    by_id = {i: token for token, i in MINI_TOKEN_IDS.items()}
    audio_0 = MINI_TOKEN_IDS["<audio_0>"]
    added = [by_id.get(i, f"<|unused_{i}|>") for i in range(TEXT_TOKENS, audio_0)]
    added += [f"<audio_{k}>" for k in range(AUDIO_CODES + 1)]
    # Ids are given in order of addition: add runs of the same kind, in id order.
    start = 0
    while start < len(added):
        special = added[start] not in TEXT_ADDED
        end = start
        while end < len(added) and (added[end] not in TEXT_ADDED) == special:
            end += 1
        tokens = [AddedToken(t, special=special) for t in added[start:end]]
        if special:
            tokenizer.add_special_tokens(tokens)
        else:
            tokenizer.add_tokens(tokens)
        start = end
    for token, i in [*MINI_TOKEN_IDS.items(), (f"<audio_{AUDIO_CODES}>", audio_0 + AUDIO_CODES)]:
        if tokenizer.token_to_id(token) != i:
            raise AssertionError(f"{token} landed at {tokenizer.token_to_id(token)}, not {i}")
    return tokenizer


def speech_bonus(temperature: float, vocabulary: int) -> float:
    """The logit bonus that makes speech codes `SPEECH_SHARE` of what is sampled at
    `temperature` from an otherwise flat distribution over `vocabulary` tokens."""
    others = vocabulary - AUDIO_CODES
    return temperature * math.log(SPEECH_SHARE / (1 - SPEECH_SHARE) * others / AUDIO_CODES)


class RandomWeights:
    """The checkpoint's tensors, each from its own seed, edited so the random LM speaks (the
    module docstring says why): the last hidden dimension is pinned to PIN_VALUE in every input
    embedding (and in the adaptor's output, which stands in for embeddings at audio positions),
    no layer reads it (its norm weights are 0) or writes it (its rows of o_proj and down_proj
    are 0), and the LM head turns it (~sqrt(hidden) after the final norm) into a bonus for the
    speech codes and a penalty for the ids past the tokenizer."""

    def __init__(
        self, config: dict[str, Any], vocabulary: int, seed: int = 0, device: str = "cpu"
    ) -> None:
        hidden = config["text_config"]["hidden_size"]
        self.dim = hidden - 1
        scale = math.sqrt(hidden)
        self.bonus = speech_bonus(regimes.REALTIME.temperature, vocabulary) / scale
        self.suppressed = SUPPRESSED / scale
        self.audio_0 = MINI_TOKEN_IDS["<audio_0>"]
        self.vocabulary = vocabulary
        self.seed = seed
        self.device = device

    def __call__(self, spec: TensorSpec) -> torch.Tensor:
        tensor = torch.empty(spec.shape, dtype=torch.bfloat16, device=self.device)
        match spec.init:
            case "ones":
                tensor.fill_(1.0)
            case "zeros":
                tensor.zero_()
            case "normal":
                generator = torch.Generator(device=self.device)
                generator.manual_seed(self.seed * 1_000_003 + spec.seed_index)
                tensor.normal_(0.0, WEIGHT_STD, generator=generator)
        self._speak(spec.name, tensor)
        return tensor

    def _speak(self, name: str, tensor: torch.Tensor) -> None:
        k = self.dim
        if name == "model.embed_tokens.weight":
            tensor[:, k] = PIN_VALUE
        elif name == "adapter.linear2.weight" or name.endswith(
            ("self_attn.o_proj.weight", "mlp.down_proj.weight")
        ):
            tensor[k, :] = 0
        elif name == "adapter.linear2.bias":
            tensor[k] = PIN_VALUE
        elif name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            tensor[k] = 0
        elif name == "lm_head.weight":
            tensor[:, k] = 0
            tensor[self.audio_0 : self.audio_0 + AUDIO_CODES, k] = self.bonus
            tensor[self.vocabulary :, k] = self.suppressed


def write_token2wav(directory: Path, seed: int = 0) -> None:
    """`token2wav/` at the published sizes (the vocoder's default configs), random weights,
    and a random 6 s voice prompt as `voices/default.npz`."""
    from voxgate.model.stepaudio2.token2wav import Voice
    from voxgate.model.stepaudio2.token2wav.config import FlowConfig, dump_flow_config
    from voxgate.model.stepaudio2.token2wav.flow import CausalMaskedDiffWithXvec
    from voxgate.model.stepaudio2.token2wav.hift import HiFTConfig, HiFTGenerator
    from voxgate.model.stepaudio2.token2wav.voice import FRAMES_PER_TOKEN, MEL_BINS, SPEAKER_DIM

    torch.manual_seed(seed)
    folder = directory / "token2wav"
    folder.mkdir(parents=True, exist_ok=True)
    flow_config = FlowConfig()
    (folder / "flow.yaml").write_text(dump_flow_config(flow_config), encoding="utf-8")
    torch.save(CausalMaskedDiffWithXvec(flow_config).state_dict(), folder / "flow.pt")
    torch.save(HiFTGenerator(HiFTConfig()).state_dict(), folder / "hift.pt")
    rng = np.random.default_rng(seed)
    tokens = 150  # 6 s at 25 Hz
    Voice(
        name="default",
        prompt_tokens=rng.integers(0, flow_config.vocab_size, tokens).astype(np.int64),
        prompt_mel=(rng.standard_normal((FRAMES_PER_TOKEN * tokens, MEL_BINS)) - 5).astype(
            np.float32
        ),
        speaker_embedding=rng.standard_normal(SPEAKER_DIM).astype(np.float32),
    ).save(directory / "voices" / "default.npz")


def _write_files(
    directory: Path,
    config: dict[str, Any],
    tokenizer: Any,
    shards: list[list[TensorSpec]],
    seed: int,
) -> None:
    """Everything but the weight shards: config, tokenizer, index, token2wav, voice."""
    import transformers

    from voxgate.model.stepaudio2.tiny import tokenizer_config

    text = config["text_config"]
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(text["max_position_embeddings"]), indent=2)
    )
    # As save_pretrained writes it: without it, transformers takes a vocabulary this large for
    # a Mistral one with a broken regex and warns at every load.
    saved = config | {"transformers_version": transformers.__version__}
    (directory / "config.json").write_text(json.dumps(saved, indent=2))
    ends = [MINI_TOKEN_IDS["<|EOT|>"], MINI_TOKEN_IDS["<|endoftext|>"]]
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": ends, "pad_token_id": ends[1]}, indent=2)
    )
    count = len(shards)
    weight_map = {t.name: shard_name(i + 1, count) for i, shard in enumerate(shards) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    write_token2wav(directory, seed)


def write_mini_model(
    directory: Path,
    *,
    device: str = "cpu",
    seed: int = 0,
    shard_gb: float = 2.0,
    only_shards: Iterable[int] | None = None,
    dry_run: bool = False,
    progress: Callable[[str], object] = lambda line: None,
) -> WriteReport:
    """Write the published-size checkpoint into `directory` (created). `dry_run` writes all
    but the weight shards (the index still names every tensor); `only_shards` (1-based) writes
    those shards only. `progress` gets one line per shard written."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    config = mini_config()
    specs = tensor_specs(config)
    shards = plan_shards(specs, int(shard_gb * 1e9))
    count = len(shards)
    wanted = set(range(1, count + 1)) if only_shards is None else set(only_shards)
    if unknown := wanted - set(range(1, count + 1)):
        raise ValueError(f"no shard {sorted(unknown)}: this plan has shards 1..{count}")
    if dry_run:
        wanted = set()

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_mini_tokenizer()
    _write_files(directory, config, tokenizer, shards, seed)
    total = sum(s.nbytes for s in specs)

    weights = RandomWeights(config, tokenizer.get_vocab_size(with_added_tokens=True), seed, device)
    weights_started = time.perf_counter()
    written_bytes = 0
    for number in sorted(wanted):
        shard_started = time.perf_counter()
        tensors = {}
        for spec in shards[number - 1]:
            tensors[spec.name] = weights(spec).cpu()
        name = shard_name(number, count)
        save_file(tensors, directory / name, metadata={"format": "pt"})
        size = sum(s.nbytes for s in shards[number - 1])
        written_bytes += size
        del tensors
        seconds = time.perf_counter() - shard_started
        progress(f"{name}: {size / 1e9:.2f} GB in {seconds:.1f} s")
    now = time.perf_counter()
    return WriteReport(
        directory=directory,
        parameters=total // 2,
        total_bytes=total,
        shards=count,
        written=tuple(sorted(wanted)),
        written_bytes=written_bytes,
        weights_s=now - weights_started,
        total_s=now - started,
    )
