"""`voxgate make-tiny-model DIR`: a randomly initialised Step-Audio-2 in the published layout.

Same config nesting (`text_config`, `audio_encoder_config`), same weight names, sharded
safetensors with an index, a tokenizer with the same special and audio-code tokens, the
token2wav folder and a voice prompt: only the sizes are tiny (hidden 64, 2 layers), so the test
suite runs the whole unified backbone on vLLM's CPU backend. Nothing is downloaded: the text
tokenizer is a small byte-level BPE trained here on a built-in English text. The same layout
at the published sizes (for speed, not for tests): `published_size.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from voxgate.model.stepaudio2.config import ARCHITECTURE, MODEL_TYPE, StepAudio2EncoderConfig
from voxgate.model.stepaudio2.encoder import Adaptor, AudioEncoder
from voxgate.model.stepaudio2.tokens import AUDIO_CODES

HIDDEN = 64
HEADS = 2  # head size 32: vLLM's CPU attention needs at least 32
TEXT_VOCAB = 1024

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_TEXT_ADDED = ("<tool_call>", "</tool_call>")
"""Added but not special in Qwen2.5's vocabulary (they decode as text)."""
STEP_SPECIALS = ("<|BOT|>", "<|EOT|>")
THINK_SPECIALS = ("<|THINK_START|>", "<|THINK_END|>")
"""Step-Audio-R1.1's think tokens (the "tokens" variant); Step-Audio-2-mini-Think writes
`<think>`/`</think>` as text (the "text" variant, the default)."""
AUDIO_SPECIALS = (
    "<audio_start>",
    "<audio_end>",
    "<audio_patch>",
    "<tts_start>",
    "<tts_end>",
    "<tts_pad>",
)
"""In the published order (151688...151695), just before <audio_0> (151696)."""

CORPUS = """\
Hello, how are you today? I am fine, thank you. What is the capital of France? Paris is the
capital of France. Please say hello. Tell me a long story about a brave knight and a dragon.
Once upon a time there was a small village by the sea, and the people there were happy.
The weather is nice and sunny, but tomorrow it may rain. Count from one to twenty: one, two,
three, four, five, six, seven, eight, nine, ten, eleven, twelve. Yes, no, maybe, okay, sure.
You are a helpful voice assistant. Answer in one or two short sentences. Read the text aloud.
Transcribe what you hear. The quick brown fox jumps over the lazy dog. Thank you very much!
system human assistant user: good morning, good evening, good night, see you later.
"""


def train_text_bpe():
    """A small byte-level BPE trained on `CORPUS` (deterministic): the text part of the tiny
    vocabulary, and of the published-size one (`published_size.py`), which pads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines() * 8, trainer=trainer)
    return tokenizer


def tokenizer_config(model_max_length: int = 4096) -> dict:
    """`tokenizer_config.json` of both generated vocabularies."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|EOT|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }


def build_tokenizer(think: str = "text"):
    """The tiny vocabulary, laid out as the published one: text, Qwen's specials and tool-call
    tags, Step's turn tokens (then R1.1's think tokens in the "tokens" variant), the audio
    control tokens, the 6562 audio codes."""
    from tokenizers import AddedToken

    tokenizer = train_text_bpe()
    # As in the published vocabulary: specials after the text tokens, then the audio codes.
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in QWEN_SPECIALS])
    tokenizer.add_tokens([AddedToken(t, special=False) for t in QWEN_TEXT_ADDED])
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in STEP_SPECIALS])
    if think == "tokens":
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in THINK_SPECIALS])
    elif think != "text":
        raise ValueError(f"think is 'text' or 'tokens', not {think!r}")
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in AUDIO_SPECIALS])
    tokenizer.add_special_tokens(
        [AddedToken(f"<audio_{k}>", special=True) for k in range(AUDIO_CODES + 1)]
    )
    return tokenizer


def _text_config(vocab_size: int, eos: list[int], pad: int) -> dict:
    # The published text_config keys, tiny values.
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 4 * HIDDEN,
        "num_attention_heads": HEADS,
        "num_attention_groups": HEADS,
        "num_key_value_heads": HEADS,
        "num_hidden_layers": 2,
        "max_seq_len": 4096,
        "max_position_embeddings": 4096,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": None,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }


def _audio_config() -> dict:
    return {
        "n_mels": 128,
        "n_audio_ctx": 1500,
        "n_audio_state": HIDDEN,
        "n_audio_head": HEADS,
        "n_audio_layer": 2,
        "n_codebook_size": 4096,
        "llm_dim": HIDDEN,
        "kernel_size": 3,
        "adapter_stride": 2,
        "adapter_hidden": 2 * HIDDEN,
    }


def _write_shards(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    from safetensors.torch import save_file

    names = sorted(tensors)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per_shard : (i + 1) * per_shard]
        filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(
            {n: tensors[n].contiguous() for n in part},
            directory / filename,
            metadata={"format": "pt"},
        )
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_tiny_model(directory: Path, seed: int = 0, think: str = "text") -> Path:
    """Write the tiny checkpoint into `directory` (created); return it. `think` picks the
    vocabulary's think markers: "text" (Step-Audio-2-mini-Think) or "tokens" (R1.1)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tokenizer = build_tokenizer(think)
    tokenizer.save(str(directory / "tokenizer.json"))
    eot, endoftext = tokenizer.token_to_id("<|EOT|>"), tokenizer.token_to_id("<|endoftext|>")
    vocab_size = -(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))

    text = _text_config(vocab_size, [eot, endoftext], endoftext)
    audio = _audio_config()
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "text_config": text,
        "audio_encoder_config": audio,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [eot, endoftext], "pad_token_id": endoftext}, indent=2)
    )

    lm_config = {k: v for k, v in text.items() if k not in ("num_attention_groups", "max_seq_len")}
    lm = Qwen2ForCausalLM(Qwen2Config(**lm_config, tie_word_embeddings=False))
    encoder_config = StepAudio2EncoderConfig(**audio)
    tensors = {name: t.detach().clone() for name, t in lm.state_dict().items()}
    tensors |= {f"encoder.{n}": t for n, t in AudioEncoder(encoder_config).state_dict().items()}
    tensors |= {f"adapter.{n}": t for n, t in Adaptor(encoder_config).state_dict().items()}
    _write_shards(directory, tensors)

    from voxgate.model.stepaudio2.token2wav.tiny import write_tiny_token2wav

    write_tiny_token2wav(directory, seed)
    return directory
