"""Step-Audio-2's audio encoder (Whisper-style, with the reference's differences) and adaptor.

Parameter names match the published checkpoint (`encoder.*`, `adapter.*`): a learned positional
table, no bias on the attention key, the average pool and `after_norm` after the blocks, and an
adaptor conv (stride 2) + two linears down to 12.5 Hz at the LM's width. Plain torch: vLLM wraps
it, and tests run it alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voxgate.model.stepaudio2.audio import encoder_frames
from voxgate.model.stepaudio2.config import StepAudio2EncoderConfig


class _Attention(nn.Module):
    def __init__(self, state: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(state, state)
        self.key = nn.Linear(state, state, bias=False)
        self.value = nn.Linear(state, state)
        self.out = nn.Linear(state, state)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, state: int, heads: int) -> None:
        super().__init__()
        self.attn = _Attention(state, heads)
        self.attn_ln = nn.LayerNorm(state)
        self.mlp = nn.Sequential(
            nn.Linear(state, 4 * state), nn.GELU(), nn.Linear(4 * state, state)
        )
        self.mlp_ln = nn.LayerNorm(state)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, config: StepAudio2EncoderConfig) -> None:
        super().__init__()
        state = config.n_audio_state
        self.conv1 = nn.Conv1d(config.n_mels, state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(state, state, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(config.n_audio_ctx, state)
        self.blocks = nn.ModuleList(
            _Block(state, config.n_audio_head) for _ in range(config.n_audio_layer)
        )
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(state)

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel with `valid` frames each -> (B, T', state) at 25 Hz."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T2, state)
        t2 = x.shape[1]
        x = x + self.positional_embedding.weight[:t2]
        # Keys past each item's audio (batch padding, the front end's right padding) are masked.
        key_mask = torch.arange(t2, device=x.device)[None, :] < ((valid + 1) // 2)[:, None]
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        return self.after_norm(x)


class Adaptor(nn.Module):
    def __init__(self, config: StepAudio2EncoderConfig) -> None:
        super().__init__()
        state = config.n_audio_state
        self.conv = nn.Conv1d(
            state,
            state,
            config.kernel_size,
            stride=config.adapter_stride,
            padding=(config.kernel_size - 1) // 2,
        )
        self.linear1 = nn.Linear(state, config.adapter_hidden)
        self.linear2 = nn.Linear(config.adapter_hidden, config.llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T', state) at 25 Hz -> (B, T'', llm_dim) at 12.5 Hz."""
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(F.relu(self.linear1(x)))


def embed_audio(
    encoder: AudioEncoder, adaptor: Adaptor, mel: torch.Tensor, valid: int
) -> torch.Tensor:
    """One item's (n_mels, T) log-mel -> (num_audio_tokens, llm_dim) embeddings."""
    valid_t = torch.tensor([valid], device=mel.device)
    hidden = adaptor(encoder(mel[None], valid_t))[0]
    tokens = (encoder_frames(valid) - 1) // 2 + 1
    return hidden[:tokens]
