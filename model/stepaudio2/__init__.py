"""The unified backbone: Step-Audio-2 on vLLM (ASR, TTS and realtime dialogue on one engine).

`register()` is the `vllm.general_plugins` entry point: vLLM calls it in every process it
starts (front end, EngineCore, workers), so it is idempotent and imports little.
"""

from __future__ import annotations


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from voxgate.model.stepaudio2.config import ARCHITECTURE, MODEL_TYPE, StepAudio2Config

    AutoConfig.register(MODEL_TYPE, StepAudio2Config, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # The string form is lazy: the model module is imported only where a model is built.
        ModelRegistry.register_model(
            ARCHITECTURE, "voxgate.model.stepaudio2.vllm_model:StepAudio2ForCausalLM"
        )
