"""Step-Audio-2 as an out-of-tree vLLM model: audio encoder + adaptor + vLLM's own Qwen2 LM.

A prompt carries `<audio_start><audio_patch><audio_end>` per audio piece (at most 25 s each)
and the audio itself in `multi_modal_data`. The processor computes the log-mel (our own front
end: no Hugging Face feature extractor) and expands the single `<audio_patch>` to one per
12.5 Hz frame; the model writes the adaptor's outputs at those positions.

Only imported inside vLLM's processes (through the plugin in `__init__.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

from voxgate.model.stepaudio2 import audio
from voxgate.model.stepaudio2.config import StepAudio2Config
from voxgate.model.stepaudio2.encoder import Adaptor, AudioEncoder, embed_audio

AUDIO_PLACEHOLDER = "<audio_start><audio_patch><audio_end>"


class StepAudio2ProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> StepAudio2Config:
        return self.ctx.get_hf_config(StepAudio2Config)

    def get_hf_processor(self, **kwargs: object) -> None:
        raise NotImplementedError("Step-Audio-2 features are computed by voxgate, not by HF")

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}

    def get_data_parser(self) -> MultiModalDataParser:
        # vLLM's default resampler is torchaudio, which the CPU install removes.
        return MultiModalDataParser(
            target_sr=audio.SAMPLE_RATE,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        return {"audio": audio.num_audio_tokens(audio.MAX_PIECE_SAMPLES)}

    def patch_token_id(self) -> int:
        return int(self.get_tokenizer().convert_tokens_to_ids("<audio_patch>"))


class StepAudio2DummyInputsBuilder(BaseDummyInputsBuilder[StepAudio2ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        # The longest piece a prompt may carry: the worst case for memory profiling.
        return {
            "audio": self._get_dummy_audios(
                length=audio.MAX_PIECE_SAMPLES,
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio") if mm_options else None,
            )
        }


class StepAudio2MultiModalProcessor(BaseMultiModalProcessor[StepAudio2ProcessingInfo]):
    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        n_mels = self.info.get_hf_config().audio_encoder_config.n_mels
        mels, valid = [], []
        for piece in hf_data.get("audio") or []:
            samples = np.asarray(piece, dtype=np.float32)
            if len(samples) > audio.MAX_PIECE_SAMPLES:
                raise ValueError(
                    f"an audio piece of {len(samples) / audio.SAMPLE_RATE:.1f} s is longer than "
                    f"{audio.MAX_PIECE_SECONDS:g} s; split it first"
                )
            if audio.num_audio_tokens(len(samples)) < 1:
                raise ValueError("an audio piece is too short to encode")
            mels.append(audio.log_mel(samples, n_mels))
            valid.append(audio.valid_frames(len(samples)))
        return BatchFeature({"audio_mel": mels, "audio_valid_frames": torch.tensor(valid)})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "audio_mel": MultiModalFieldConfig.batched("audio"),
            "audio_valid_frames": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        patch = self.info.patch_token_id()
        # With vLLM's processor cache this holds only the items that missed it; replacement()
        # is then asked about exactly those.
        data = out_mm_kwargs.get_data()

        def replacement(item: int) -> list[int]:
            frames = audio.encoder_frames(int(data["audio_valid_frames"][item]))
            return [patch] * ((frames - 1) // 2 + 1)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    StepAudio2MultiModalProcessor,
    info=StepAudio2ProcessingInfo,
    dummy_inputs=StepAudio2DummyInputsBuilder,
)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    # The checkpoint is flat (encoder.*, adapter.*, model.*, lm_head.*); vLLM's Qwen2 lives
    # under language_model.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_PLACEHOLDER
        raise ValueError("Step-Audio-2 takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: StepAudio2Config = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = AudioEncoder(config.audio_encoder_config)
            self.adapter = Adaptor(config.audio_encoder_config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        mels = kwargs.get("audio_mel")
        valid = kwargs.get("audio_valid_frames")
        if mels is None:
            return []
        if isinstance(valid, torch.Tensor):
            valid = valid.flatten().tolist()
        weight = self.encoder.conv1.weight
        # One item at a time: pieces differ in length and are few per step.
        return [
            embed_audio(
                self.encoder, self.adapter, mel.to(device=weight.device, dtype=weight.dtype), int(n)
            )
            for mel, n in zip(mels, valid, strict=True)
        ]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
