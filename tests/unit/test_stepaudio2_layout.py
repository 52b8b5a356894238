"""voxgate's Step-Audio-2 code against the published Step-Audio-2-mini layout.

The published layout is pinned as fixtures (tests/fixtures/stepaudio2/, each with a `_source`):
the special-token ids the reference code states, a reconstruction of the mini `config.json`
(values unverified), and the checkpoint names and shapes that StepFun's own modeling code
yields for that config. Those names were produced outside the repo by running the encoder and
adaptor classes of StepFun's vLLM fork (branch step-audio2-mini) and transformers'
Qwen2ForCausalLM on the meta device, and mapping them as the fork's `load_weights` does.

Checked here, without weights and without starting vLLM: the token map finds the published ids;
the tiny vocabulary keeps their order; voxgate's config class reads the mini config; voxgate's
encoder and adaptor have exactly the published tensors; the tiny checkpoint has the published
names (modulo layer count); and voxgate's vLLM model maps every checkpoint name to one of its
modules. That vLLM's loader accepts the tiny checkpoint is run in
tests/integration/test_stepaudio2_engine.py; with the layout test here it covers the real one.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from voxgate.model.stepaudio2.config import StepAudio2Config, StepAudio2EncoderConfig
from voxgate.model.stepaudio2.encoder import Adaptor, AudioEncoder
from voxgate.model.stepaudio2.tiny import build_tokenizer, make_tiny_model
from voxgate.model.stepaudio2.tokens import AUDIO_CODES, TokenMap

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stepaudio2"
REPEATED = re.compile(r"^(encoder\.blocks\.|model\.layers\.)(\d+)\.")
"""The repeated stacks of the checkpoint: names of block i are those of block 0."""
BOT_STAND_IN = 151666
"""<|BOT|>'s published id is unknown; the fake vocabulary needs one in the text range."""
TINY_ONLY_AUDIO_KEYS = {"adapter_hidden"}
"""Hard-coded 2048 in the reference; the tiny config writes it to shrink the adaptor."""
AUDIO_CONTROL = ("<audio_start>", "<audio_end>", "<audio_patch>", "<tts_start>", "<tts_end>")


@functools.cache
def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def _without_notes(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-stepaudio2") / "model")


def _published_ids() -> dict[str, int]:
    tokens = _fixture("special_tokens.json")["tokens"]
    return {t["token"]: t["id"] for t in tokens if t["id"] is not None}


def _published_weights() -> dict[str, tuple[int, ...]]:
    """The fixture's names expanded to every block of each repeated stack."""
    fixture = _fixture("mini_weights.json")
    expanded = {}
    for name, shape in fixture["tensors"].items():
        found = REPEATED.match(name)
        if found is None:
            expanded[name] = tuple(shape)
            continue
        prefix = found.group(1)
        for i in range(fixture["repeated"][prefix]):
            expanded[f"{prefix}{i}.{name[found.end() :]}"] = tuple(shape)
    assert len(expanded) == fixture["total_tensors"]
    return expanded


def _collapsed(names: list[str]) -> tuple[set[str], dict[str, int]]:
    """Names with each block index set to 0, and how many blocks each stack has."""
    blocks: dict[str, set[int]] = {}
    collapsed = set()
    for name in names:
        found = REPEATED.match(name)
        if found is not None:
            blocks.setdefault(found.group(1), set()).add(int(found.group(2)))
            name = f"{found.group(1)}0.{name[found.end() :]}"
        collapsed.add(name)
    for prefix, indices in blocks.items():
        assert indices == set(range(len(indices))), f"{prefix} blocks are not 0..n-1"
    return collapsed, {prefix: len(indices) for prefix, indices in blocks.items()}


def _shapes(prefix: str, module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {prefix + n: tuple(t.shape) for n, t in module.state_dict().items()}


def _mini_config() -> StepAudio2Config:
    return StepAudio2Config(**_without_notes(_fixture("mini_config.json")))


class _PublishedVocabulary:
    """What TokenMap reads of a tokenizer, holding the published ids."""

    def get_vocab(self) -> dict[str, int]:
        vocabulary = _published_ids() | {"<|BOT|>": BOT_STAND_IN}
        audio_0 = vocabulary["<audio_0>"]
        vocabulary |= {f"<audio_{k}>": audio_0 + k for k in range(AUDIO_CODES + 1)}
        return vocabulary

    def __len__(self) -> int:
        return _fixture("special_tokens.json")["vocab_size"]["value"]


# --- special tokens ---------------------------------------------------------------------------


def test_token_map_finds_the_published_ids() -> None:
    ids = _published_ids()
    tokens = TokenMap.from_tokenizer(_PublishedVocabulary())

    assert tokens.endoftext == ids["<|endoftext|>"] == 151643
    assert tokens.eot == ids["<|EOT|>"] == 151665
    assert (tokens.audio_start, tokens.audio_end, tokens.audio_patch) == (151688, 151689, 151690)
    assert (tokens.tts_start, tokens.tts_end, tokens.tts_pad) == (151693, 151694, 151695)
    assert tokens.audio_0 == ids["<audio_0>"] == 151696
    assert tokens.audio_pad == ids["<audio_6561>"] == 158257
    assert tokens.tool_call == ids["<tool_call>"] == 151657
    assert tokens.control == {151643, 151644, 151645, BOT_STAND_IN, 151665}
    assert tokens.vocab_size == 158720
    assert tokens.think.start_id is None  # mini writes <think> as text


def test_the_published_ids_split_as_the_reference_splits_them() -> None:
    ids = _published_ids()
    tokens = TokenMap.from_tokenizer(_PublishedVocabulary())
    # stepaudio2.py: text is id < 151688, audio code is id - 151696 for id > 151695.
    assert tokens.first_special == _fixture("special_tokens.json")["text_below"]["value"]
    assert tokens.is_text(ids["<tool_call>"]) and tokens.is_text(ids["</tool_call>"])
    assert tokens.is_text(0) and tokens.is_text(151642)
    assert not tokens.is_text(ids["<|EOT|>"])  # in the text range, but a turn token
    assert not tokens.is_text(ids["<|endoftext|>"])
    for name in (*AUDIO_CONTROL, "<tts_pad>"):
        assert not tokens.is_text(ids[name]) and not tokens.is_audio(ids[name])
    assert tokens.is_audio(151696) and tokens.is_audio(151696 + AUDIO_CODES - 1)
    assert not tokens.is_audio(158257)  # <audio_6561> pads, it is not speech
    assert tokens.audio_ids()[0] == 151696 and len(tokens.audio_ids()) == AUDIO_CODES


@pytest.mark.parametrize("think", ["text", "tokens"])
def test_the_tiny_vocabulary_keeps_the_published_order(think: str) -> None:
    tokenizer = build_tokenizer(think)
    tiny = tokenizer.get_vocab(with_added_tokens=True)
    published = _published_ids()

    by_published = sorted(published, key=published.__getitem__)
    assert sorted(published, key=tiny.__getitem__) == by_published
    audio_0 = tiny["<audio_0>"]
    assert all(tiny[f"<audio_{k}>"] == audio_0 + k for k in range(AUDIO_CODES + 1))
    assert audio_0 + AUDIO_CODES == max(tiny.values())  # the codes close the vocabulary

    # The audio control tokens sit right before <audio_0>, as 151688..151695 before 151696:
    # nothing else falls between the text range and the codes.
    tokens = TokenMap.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tokenizer))
    gap = {name for name, i in tiny.items() if tokens.first_special <= i < audio_0}
    assert gap == {*AUDIO_CONTROL, "<tts_pad>"}
    assert tiny["<audio_start>"] == tokens.first_special
    assert tokens.is_text(tiny["<tool_call>"]) and tokens.is_text(tiny["</tool_call>"])
    assert tiny["<|BOT|>"] < tokens.first_special and tiny["<|BOT|>"] in tokens.control


# --- config -----------------------------------------------------------------------------------


def test_the_mini_config_loads() -> None:
    published = _without_notes(_fixture("mini_config.json"))
    config = _mini_config()

    text = config.get_text_config()
    assert isinstance(text, Qwen2Config)
    assert text.architectures == ["Qwen2ForCausalLM"]
    special = {"eos_token_id", "torch_dtype", "rope_theta", "rope_scaling"}
    for key, value in published["text_config"].items():
        if key not in special:
            assert getattr(text, key) == value, key
    # transformers 5 keeps rope settings in rope_parameters.
    assert text.rope_parameters == {"rope_theta": 1_000_000.0, "rope_type": "default"}
    assert text.dtype == torch.bfloat16
    assert text.tie_word_embeddings is False
    # The fork's config class stops on all three end tokens, whatever the file says.
    assert set(text.eos_token_id) == {151643, 151645, 151665}

    audio = config.audio_encoder_config
    assert isinstance(audio, StepAudio2EncoderConfig)
    for key, value in published["audio_encoder_config"].items():
        assert getattr(audio, key) == value, key
    assert audio.adapter_hidden == 2048


def test_the_tiny_config_has_the_published_keys(tiny_model: Path) -> None:
    published = _without_notes(_fixture("mini_config.json"))
    tiny = json.loads((tiny_model / "config.json").read_text())

    assert (tiny["architectures"], tiny["model_type"]) == (
        published["architectures"],
        published["model_type"],
    )
    assert tiny["text_config"].keys() == published["text_config"].keys()
    audio_keys = tiny["audio_encoder_config"].keys() - TINY_ONLY_AUDIO_KEYS
    assert audio_keys == published["audio_encoder_config"].keys()


# --- weights ----------------------------------------------------------------------------------


def test_the_encoder_and_adaptor_have_the_published_tensors() -> None:
    audio = _mini_config().audio_encoder_config
    with torch.device("meta"):
        ours = _shapes("encoder.", AudioEncoder(audio)) | _shapes("adapter.", Adaptor(audio))
    published = {
        n: s for n, s in _published_weights().items() if n.startswith(("encoder.", "adapter."))
    }
    assert ours == published


def test_the_text_config_yields_the_published_lm_tensors() -> None:
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(_mini_config().get_text_config())
    published = {
        n: s for n, s in _published_weights().items() if n.startswith(("model.", "lm_head."))
    }
    assert _shapes("", lm) == published


def test_the_tiny_checkpoint_is_in_the_published_layout(tiny_model: Path) -> None:
    directory = tiny_model
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tiny: dict[str, tuple[int, ...]] = {}
    for filename in set(index["weight_map"].values()):
        with safe_open(directory / filename, framework="pt") as shard:
            tiny |= {n: tuple(shard.get_slice(n).get_shape()) for n in shard.keys()}
    assert tiny.keys() == index["weight_map"].keys()

    published = _published_weights()
    tiny_names, tiny_blocks = _collapsed(list(tiny))
    published_names, _ = _collapsed(list(published))
    assert tiny_names == published_names
    config = json.loads((directory / "config.json").read_text())
    assert tiny_blocks == {
        "encoder.blocks.": config["audio_encoder_config"]["n_audio_layer"],
        "model.layers.": config["text_config"]["num_hidden_layers"],
    }
    for name, shape in tiny.items():
        found = REPEATED.match(name)
        block_0 = name if found is None else f"{found.group(1)}0.{name[found.end() :]}"
        assert len(shape) == len(published[block_0]), name


def _model_class_source() -> ast.ClassDef:
    # The module imports vLLM (15+ s); its mapper and module names are read from the source.
    spec = importlib.util.find_spec("voxgate.model.stepaudio2.vllm_model")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    return next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "StepAudio2ForCausalLM"
    )


def test_the_vllm_model_maps_every_checkpoint_name_to_its_modules() -> None:
    model = _model_class_source()
    mapper = next(
        node.value
        for node in model.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "hf_to_vllm_mapper" for t in node.targets)
    )
    assert isinstance(mapper, ast.Call)
    # Only prefix renaming is mirrored here; another kind of rule needs this test extended.
    assert [k.arg for k in mapper.keywords] == ["orig_to_new_prefix"]
    prefixes: dict[str, str] = ast.literal_eval(mapper.keywords[0].value)
    init = next(n for n in model.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    submodules = {
        target.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }

    def map_name(name: str) -> str:
        # vLLM's WeightsMapper: each matching prefix is replaced once, in order.
        for old, new in prefixes.items():
            if name.startswith(old):
                name = name.replace(old, new, 1)
        return name

    audio = _mini_config().audio_encoder_config
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(_mini_config().get_text_config())
        modules = (
            _shapes("encoder.", AudioEncoder(audio))
            | _shapes("adapter.", Adaptor(audio))
            # vLLM's Qwen2ForCausalLM loads the Hugging Face names (it stacks q/k/v itself).
            | _shapes("language_model.", lm)
        )
    for name in _published_weights():
        mapped = map_name(name)
        assert mapped.split(".", 1)[0] in submodules, name
        assert mapped in modules, f"{name} -> {mapped}"
