"""The Step-Audio-2 checkpoint config (`model_type: step_audio_2`), as transformers sees it.

The published config.json nests `text_config` (a Qwen2-shaped LM) and `audio_encoder_config`
(a Whisper-style encoder plus the adaptor). vLLM reads the LM fields through
`get_text_config()`, so `text_config` becomes a real `Qwen2Config`. No vLLM imports here.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config

MODEL_TYPE = "step_audio_2"
ARCHITECTURE = "StepAudio2ForCausalLM"

# Keys of the published text_config that Qwen2Config does not know (kept as attributes).
_TEXT_ONLY_KEYS = ("num_attention_groups", "max_seq_len")
# eos of the reference config class: <|endoftext|>, <|im_end|> and <|EOT|> in the real vocab.
_REFERENCE_EOS = (151643, 151645, 151665)


class StepAudio2EncoderConfig(PretrainedConfig):
    model_type = "step_audio_2_encoder"

    def __init__(
        self,
        n_mels: int = 128,
        n_audio_ctx: int = 1500,
        n_audio_state: int = 1280,
        n_audio_head: int = 20,
        n_audio_layer: int = 32,
        n_codebook_size: int = 4096,
        llm_dim: int = 3584,
        kernel_size: int = 3,
        adapter_stride: int = 2,
        adapter_hidden: int = 2048,
        **kwargs: Any,
    ) -> None:
        self.n_mels = n_mels
        self.n_audio_ctx = n_audio_ctx
        """Learned positions after conv2 (50 Hz): 1500 = 30 s."""
        self.n_audio_state = n_audio_state
        self.n_audio_head = n_audio_head
        self.n_audio_layer = n_audio_layer
        self.n_codebook_size = n_codebook_size
        self.llm_dim = llm_dim
        self.kernel_size = kernel_size
        self.adapter_stride = adapter_stride
        self.adapter_hidden = adapter_hidden
        """Hard-coded 2048 in the reference (not in the published config); tiny models shrink it."""
        super().__init__(**kwargs)


class StepAudio2Config(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {  # noqa: RUF012 - the transformers API is a plain class attribute
        "audio_encoder_config": StepAudio2EncoderConfig,
        "text_config": Qwen2Config,
    }

    def __init__(
        self,
        text_config: dict[str, Any] | Qwen2Config | None = None,
        audio_encoder_config: dict[str, Any] | StepAudio2EncoderConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(audio_encoder_config, StepAudio2EncoderConfig):
            audio_encoder_config = StepAudio2EncoderConfig(**(audio_encoder_config or {}))
        if not isinstance(text_config, Qwen2Config):
            text_config = _qwen2_config(dict(text_config or {}))
        self.audio_encoder_config = audio_encoder_config
        self.text_config = text_config
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def _qwen2_config(text: dict[str, Any]) -> Qwen2Config:
    extras = {key: text.pop(key) for key in _TEXT_ONLY_KEYS if key in text}
    if "num_attention_groups" in extras:
        text.setdefault("num_key_value_heads", extras["num_attention_groups"])
    text.setdefault("tie_word_embeddings", False)
    text.setdefault("hidden_act", "silu")
    text["architectures"] = ["Qwen2ForCausalLM"]
    eos = text.get("eos_token_id")
    if eos == _REFERENCE_EOS[0]:
        # The reference config class stops on all three end tokens of the real vocabulary.
        text["eos_token_id"] = list(_REFERENCE_EOS)
    config = Qwen2Config(**text)
    for key, value in extras.items():
        setattr(config, key, value)
    return config
