"""Hyper-parameters of the token2wav flow, read from (and written as) the published `flow.yaml`.

The checkpoint's `flow.yaml` is HyperPyYAML:
`flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec` with nested `!new:` objects for the
encoder, the CFM decoder and its DiT estimator. We never import or instantiate those classes: a
small loader turns every `!new:` mapping into a plain dict (the class path kept under `_class`)
and we read the constructor arguments we need. Settings that would change
the architecture to one we did not build (another attention type, post-norm, ...) are refused;
settings that only matter for training (dropouts) are ignored.

HiFT has no config file in the checkpoint: the reference hard-codes it, so `HiFTConfig` lives in
`hift.py` and only its widths are read from `hift.pt`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FLOW_CLASS = "cosyvoice2.flow.flow.CausalMaskedDiffWithXvec"
ENCODER_CLASS = "cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2"
DECODER_CLASS = "cosyvoice2.flow.flow_matching.CausalConditionalCFM"
ESTIMATOR_CLASS = "cosyvoice2.flow.decoder_dit.DiT"

# Constructor arguments that select code paths; our modules implement exactly these values.
_REQUIRED = {
    "flow": {"output_type": "mel"},
    "encoder": {
        "input_layer": "linear",
        "pos_enc_layer_type": "rel_pos_espnet",
        "selfattention_layer_type": "rel_selfattn",
        "normalize_before": True,
        "activation_type": "swish",
    },
}


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """UpsampleConformerEncoderV2: conformer at the token rate, x2 upsample, conformer again."""

    input_size: int = 512
    output_size: int = 512
    pre_lookahead_len: int = 3
    num_blocks: int = 6
    num_up_blocks: int = 4
    up_stride: int = 2
    up_scale_factor: float = 2.0
    attention_heads: int = 8
    key_bias: bool = True
    linear_units: int = 2048


@dataclass(frozen=True, slots=True)
class DiTConfig:
    """The flow-matching estimator ("DiT-v5": attention, causal conv and MLP per block)."""

    in_channels: int = 320
    out_channels: int = 80
    mlp_ratio: float = 4.0
    depth: int = 16
    num_heads: int = 8
    head_dim: int = 64
    hidden_size: int = 512


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """CausalMaskedDiffWithXvec with its encoder and CFM decoder (defaults = Step-Audio-2-mini)."""

    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    estimator: DiTConfig = field(default_factory=DiTConfig)
    inference_cfg_rate: float = 0.7

    def __post_init__(self) -> None:
        mel = self.output_size
        if self.estimator.out_channels != mel or self.estimator.in_channels != 4 * mel:
            # The DiT input is [noisy mel, mu, speaker, prompt cond], each `output_size` wide.
            raise ValueError("estimator channels must be out=output_size, in=4*output_size")
        if self.encoder.input_size != self.input_size:
            raise ValueError("encoder.input_size must equal the token embedding size")
        if self.encoder.up_scale_factor != self.encoder.up_stride:
            raise ValueError("up_scale_factor must equal up_stride (one mel frame per step)")


class _Ref:
    """A HyperPyYAML `!ref <key>`; resolved against the document's top level after loading."""

    def __init__(self, key: str) -> None:
        self.key = key


class _Loader(yaml.SafeLoader):
    pass


def _construct_new(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise ValueError(f"!new:{suffix} with positional arguments is not supported")
    return {"_class": suffix, **loader.construct_mapping(node, deep=True)}


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> _Ref:
    text = str(loader.construct_scalar(node)).strip()  # type: ignore[arg-type]
    if not (text.startswith("<") and text.endswith(">")) or " " in text:
        raise ValueError(f"only plain `!ref <key>` is supported, got {text!r}")
    return _Ref(text[1:-1])


def _refuse_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise ValueError(f"unsupported HyperPyYAML tag !{suffix} in flow.yaml")


_Loader.add_multi_constructor("!new:", _construct_new)
_Loader.add_constructor("!ref", _construct_ref)
_Loader.add_multi_constructor("!", _refuse_tag)


def _resolve(value: Any, top: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        node: Any = top
        for part in value.key.split("."):
            node = node[part]
        return _resolve(node, top)
    if isinstance(value, dict):
        return {k: _resolve(v, top) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    return value


def read_yaml(text: str) -> dict[str, Any]:
    """The HyperPyYAML document as plain dicts (`!new:` objects carry their class in `_class`)."""
    top = yaml.load(text, Loader=_Loader)  # our loader builds only plain data
    if not isinstance(top, dict):
        raise ValueError("flow.yaml must be a mapping")
    return _resolve(top, top)


def _pick(cls: type, raw: dict[str, Any], where: str) -> Any:
    for key, want in _REQUIRED.get(where, {}).items():
        if key in raw and raw[key] != want:
            raise ValueError(
                f"flow.yaml {where}.{key}={raw[key]!r} is not supported (want {want!r})"
            )
    names = {f.name for f in dataclasses.fields(cls)} - {"encoder", "estimator"}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for name in names & raw.keys():
        kind = {"int": int, "float": float, "bool": bool}[types[name]]
        kwargs[name] = kind(raw[name])
    return kwargs


def parse_flow_config(text: str) -> FlowConfig:
    flow = read_yaml(text).get("flow")
    if not isinstance(flow, dict) or flow.get("_class") != FLOW_CLASS:
        raise ValueError(f"flow.yaml needs `flow: !new:{FLOW_CLASS}`")
    encoder, decoder = flow.get("encoder"), flow.get("decoder")
    estimator = decoder.get("estimator") if isinstance(decoder, dict) else None
    for obj, cls in (
        (encoder, ENCODER_CLASS),
        (decoder, DECODER_CLASS),
        (estimator, ESTIMATOR_CLASS),
    ):
        if not isinstance(obj, dict) or obj.get("_class") != cls:
            raise ValueError(f"flow.yaml needs a `!new:{cls}` object")
    assert isinstance(decoder, dict) and isinstance(estimator, dict) and isinstance(encoder, dict)
    kwargs = _pick(FlowConfig, flow, "flow")
    if "inference_cfg_rate" in decoder:
        kwargs["inference_cfg_rate"] = float(decoder["inference_cfg_rate"])
    return FlowConfig(
        **kwargs,
        encoder=EncoderConfig(**_pick(EncoderConfig, encoder, "encoder")),
        estimator=DiTConfig(**_pick(DiTConfig, estimator, "estimator")),
    )


def load_flow_config(path: Path) -> FlowConfig:
    return parse_flow_config(path.read_text(encoding="utf-8"))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def dump_flow_config(cfg: FlowConfig) -> str:
    """`flow.yaml` text in the published layout (tags, nesting, argument names)."""
    enc, dit = cfg.encoder, cfg.estimator
    encoder = {
        "input_size": enc.input_size,
        "output_size": enc.output_size,
        "input_layer": "linear",
        "pre_lookahead_len": enc.pre_lookahead_len,
        "num_blocks": enc.num_blocks,
        "num_up_blocks": enc.num_up_blocks,
        "up_stride": enc.up_stride,
        "up_scale_factor": enc.up_scale_factor,
        "attention_heads": enc.attention_heads,
        "pos_enc_layer_type": "rel_pos_espnet",
        "selfattention_layer_type": "rel_selfattn",
        "key_bias": enc.key_bias,
        "linear_units": enc.linear_units,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "normalize_before": True,
    }
    lines = [
        f"flow: !new:{FLOW_CLASS}",
        f"    input_size: {cfg.input_size}",
        f"    output_size: {cfg.output_size}",
        f"    spk_embed_dim: {cfg.spk_embed_dim}",
        "    output_type: 'mel'",
        f"    vocab_size: {cfg.vocab_size}",
        f"    encoder: !new:{ENCODER_CLASS}",
        *(f"        {k}: {_scalar(v)}" for k, v in encoder.items()),
        f"    decoder: !new:{DECODER_CLASS}",
        f"        inference_cfg_rate: {cfg.inference_cfg_rate}",
        f"        estimator: !new:{ESTIMATOR_CLASS}",
        *(
            f"            {f.name}: {_scalar(getattr(dit, f.name))}"
            for f in dataclasses.fields(dit)
        ),
    ]
    return "\n".join(lines) + "\n"
