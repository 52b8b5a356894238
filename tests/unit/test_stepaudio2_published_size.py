"""The random checkpoint at Step-Audio-2-mini's published sizes (`make-tiny-model --size mini`).

16.6 GB of weights are not written here: the checkpoint is written with small shards and only
two of them materialised, and the index, config, tokenizer and token2wav are checked whole
against the published layout (tests/fixtures/stepaudio2/). That vLLM accepts the config is
checked with the config class its engine builds first; that the random LM speaks, on a
narrow model with the published vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2ForCausalLM

from voxgate.model.stepaudio2.config import StepAudio2Config
from voxgate.model.stepaudio2.published_size import (
    MINI_CONFIG,
    MINI_TOKEN_IDS,
    SPEECH_SHARE,
    TEXT_TOKENS,
    WEIGHT_STD,
    RandomWeights,
    mini_config,
    tensor_specs,
    write_mini_model,
)
from voxgate.model.stepaudio2.tiny import CORPUS, TEXT_VOCAB
from voxgate.model.stepaudio2.token2wav import Token2Wav
from voxgate.model.stepaudio2.token2wav.config import FlowConfig
from voxgate.model.stepaudio2.token2wav.hift import HiFTConfig
from voxgate.model.stepaudio2.tokens import AUDIO_CODES, TokenMap

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stepaudio2"
BLOCK = re.compile(r"^(encoder\.blocks\.|model\.layers\.)(\d+)\.")
SHARD_GB = 0.05
"""176 shards of at most 50 MB (or one bigger tensor): the first two hold the encoder's first
blocks."""
WRITTEN = (1, 2)


@functools.cache
def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("mini") / "model"
    report = write_mini_model(directory, shard_gb=SHARD_GB, only_shards=WRITTEN)
    assert report.written == WRITTEN
    assert report.total_bytes == 2 * _fixture("mini_weights.json")["total_parameters"]
    return directory


def _index(directory: Path) -> dict[str, str]:
    return json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]


# --- the published values, held in model code ------------------------------------------------


def test_the_config_is_the_published_one() -> None:
    published = {k: v for k, v in _fixture("mini_config.json").items() if k != "_source"}
    assert MINI_CONFIG == published
    assert mini_config() == published and mini_config() is not MINI_CONFIG


def test_the_token_ids_are_the_published_ones() -> None:
    fixture = _fixture("special_tokens.json")
    audio_0 = MINI_TOKEN_IDS["<audio_0>"]
    for entry in fixture["tokens"]:
        token, published = entry["token"], entry["id"]
        ours = audio_0 + AUDIO_CODES if token == f"<audio_{AUDIO_CODES}>" else MINI_TOKEN_IDS[token]
        if published is None:  # <|BOT|>: unknown, a stand-in in the text range
            assert TEXT_TOKENS <= ours < fixture["text_below"]["value"], token
        else:
            assert ours == published, token
    assert len(set(MINI_TOKEN_IDS.values())) == len(MINI_TOKEN_IDS)


# --- what is written ---------------------------------------------------------------------------


def test_the_written_config_is_the_published_one_and_parses(mini: Path) -> None:
    written = json.loads((mini / "config.json").read_text())
    assert written.pop("transformers_version")
    assert written == MINI_CONFIG
    text = StepAudio2Config(**written).get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (3584, 28, 158720)


def test_the_tokenizer_puts_every_token_at_its_published_id(mini: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(mini)
    fixture = _fixture("special_tokens.json")
    vocabulary = tokenizer.get_vocab()
    for entry in fixture["tokens"]:
        if entry["id"] is not None:
            assert vocabulary[entry["token"]] == entry["id"], entry["token"]
    tokens = TokenMap.from_tokenizer(tokenizer)
    assert tokens.first_special == fixture["text_below"]["value"]
    assert tokens.audio_0 == 151696 and tokens.audio_pad == 158257
    assert len(tokenizer) == tokens.audio_pad + 1
    assert tokens.tool_call == 151657 and tokens.is_text(tokens.tool_call)
    # Text still tokenizes with the small trained BPE: the filler ids are never produced.
    ids = tokenizer.encode(CORPUS)
    assert max(ids) < TEXT_VOCAB
    assert tokenizer.decode(ids) == CORPUS
    assert tokenizer.decode([tokens.tts_start, tokens.audio_0 + 5]) == "<tts_start><audio_5>"


def test_the_index_names_every_published_tensor(mini: Path) -> None:
    fixture = _fixture("mini_weights.json")
    index = _index(mini)
    shapes = {spec.name: spec.shape for spec in tensor_specs(MINI_CONFIG)}
    assert index.keys() == shapes.keys()
    assert len(shapes) == fixture["total_tensors"]
    assert sum(torch.Size(s).numel() for s in shapes.values()) == fixture["total_parameters"]
    # Block i of each stack has block 0's names and shapes, and the stacks are complete.
    blocks: dict[str, set[int]] = {}
    for name, shape in shapes.items():
        found = BLOCK.match(name)
        if found is not None:
            blocks.setdefault(found.group(1), set()).add(int(found.group(2)))
            name = f"{found.group(1)}0.{name[found.end() :]}"
        assert list(shape) == fixture["tensors"][name], name
    assert {p: len(b) for p, b in blocks.items()} == fixture["repeated"]
    assert all(b == set(range(len(b))) for b in blocks.values())


def test_the_written_shards_hold_what_the_index_says(mini: Path) -> None:
    index = _index(mini)
    specs = {spec.name: spec for spec in tensor_specs(MINI_CONFIG)}
    files = sorted(set(index.values()))
    assert all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    assert sorted(p.name for p in mini.glob("*.safetensors")) == files[: len(WRITTEN)]
    for filename in files[: len(WRITTEN)]:
        with safe_open(mini / filename, framework="pt") as shard:
            assert set(shard.keys()) == {n for n, f in index.items() if f == filename}
            for name in shard.keys():
                tensor = shard.get_tensor(name)
                assert tensor.dtype == torch.bfloat16
                assert tuple(tensor.shape) == specs[name].shape
                match specs[name].init:
                    case "ones":
                        assert bool((tensor == 1).all()), name
                    case "zeros":
                        assert not tensor.any(), name
                    case "normal":
                        assert abs(tensor.float().std().item() - WEIGHT_STD) < 0.002, name


def test_a_shard_written_alone_is_the_same(mini: Path, tmp_path: Path) -> None:
    write_mini_model(tmp_path, shard_gb=SHARD_GB, only_shards=[2])
    (name,) = [p.name for p in tmp_path.glob("*.safetensors")]

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(tmp_path / name) == digest(mini / name)


def test_an_unknown_shard_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no shard"):
        write_mini_model(tmp_path / "model", only_shards=[99])
    assert not (tmp_path / "model").exists()


def test_token2wav_is_at_the_published_sizes(mini: Path) -> None:
    vocoder = Token2Wav.load(mini)
    assert vocoder.flow.cfg == FlowConfig()
    assert vocoder.hift.cfg == HiFTConfig()
    assert vocoder.voices() == ["default"]
    assert len(vocoder.voice("default").prompt_tokens) == 150


# --- the random LM speaks -------------------------------------------------------------------


def test_the_random_lm_samples_speech_codes_four_times_in_five() -> None:
    """The pinned dimension at a narrow width (so it runs here), the published vocabulary:
    sampled at the realtime temperature, speech codes take SPEECH_SHARE of the mass whatever
    the tokens before, and the ids past the tokenizer none."""
    config = mini_config()
    config["text_config"] |= {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_attention_groups": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
    }
    tokenizer_length = MINI_TOKEN_IDS["<audio_0>"] + AUDIO_CODES + 1
    weights = RandomWeights(config, tokenizer_length, seed=3)
    lm_specs = [s for s in tensor_specs(config) if not s.name.startswith(("encoder.", "adapter."))]
    state = {s.name: weights(s).float() for s in lm_specs}
    lm = Qwen2ForCausalLM(StepAudio2Config(**config).get_text_config())
    lm.load_state_dict(state, strict=True)

    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, tokenizer_length, (4, 12), generator=generator)
    with torch.no_grad():
        logits = lm(prompts).logits.float()
    probabilities = torch.softmax(logits / 0.7, dim=-1)
    audio_0 = MINI_TOKEN_IDS["<audio_0>"]
    speech = probabilities[..., audio_0 : audio_0 + AUDIO_CODES].sum(-1)
    assert speech.min() > SPEECH_SHARE - 0.05 and speech.max() < SPEECH_SHARE + 0.05
    assert probabilities[..., tokenizer_length:].sum(-1).max() < 1e-6


# --- vLLM ------------------------------------------------------------------------------------


# Importing vLLM's config reaches torch.jit.script_method, deprecated in this torch.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vllm_builds_its_model_config_from_the_checkpoint(mini: Path) -> None:
    """What the engine does first with `--model DIR`: the plugin registers the architecture,
    then vLLM's ModelConfig parses config.json and resolves the model class (no weights)."""
    from vllm.config import ModelConfig
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    config = ModelConfig(
        model=str(mini), dtype="auto", max_model_len=8192, limit_mm_per_prompt={"audio": 8}
    )
    assert config.architectures == ["StepAudio2ForCausalLM"]
    assert isinstance(config.hf_config, StepAudio2Config)
    assert config.is_multimodal_model
    assert config.dtype == torch.bfloat16
    assert config.get_vocab_size() == 158720
    assert (config.get_hidden_size(), config.get_head_size()) == (3584, 128)
    assert config.get_total_num_kv_heads() == 4
    assert config.hf_text_config.num_hidden_layers == 28
