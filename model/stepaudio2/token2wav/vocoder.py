"""`Token2Wav`: Step-Audio-2 audio tokens -> 24 kHz speech in a chosen voice, whole or streamed.

Layout of a model folder (the published one, or the tiny one `tiny.py` writes):
    token2wav/flow.yaml  token2wav/flow.pt  token2wav/hift.pt   (weights)
    voices/<name>.npz                                           (speaker prompts, `Voice`)
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .config import load_flow_config
from .flow import CausalMaskedDiffWithXvec, FlowState
from .hift import HiFTGenerator, load_hift
from .streaming import CHUNK_TOKENS, DIT_WINDOW_FRAMES, Token2WavStream, check_tokens
from .voice import Voice


class Token2Wav:
    sample_rate: int = 24000

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        voices_dir: Path,
        *,
        chunk_tokens: int = CHUNK_TOKENS,
        dit_window: int | None = DIT_WINDOW_FRAMES,
    ) -> None:
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.chunk_tokens = chunk_tokens
        self.dit_window = dit_window
        self._voices_dir = voices_dir
        self._voices: dict[str, Voice] = {}
        # Encoding a speaker prompt runs the whole flow on it; do it once per voice.
        self._prompt_states: weakref.WeakKeyDictionary[Voice, FlowState] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Token2Wav:
        """Read `model_dir/token2wav/{flow.yaml,flow.pt,hift.pt}`. The flow runs in `dtype`;
        HiFT always in float32 (its exp/iSTFT head and phase are precision-sensitive)."""
        folder = Path(model_dir) / "token2wav"
        cfg = load_flow_config(folder / "flow.yaml")
        with torch.device("meta"):  # no random init of 600 MB of weights we overwrite anyway
            flow = CausalMaskedDiffWithXvec(cfg)
        state = torch.load(folder / "flow.pt", map_location="cpu", weights_only=True)
        flow.load_state_dict(state, strict=True, assign=True)
        hift = load_hift(torch.load(folder / "hift.pt", map_location="cpu", weights_only=True))
        return cls(flow.to(device, dtype), hift.to(device), Path(model_dir) / "voices")

    # -- voices ---------------------------------------------------------------------------------

    def voices(self) -> list[str]:
        return sorted(p.stem for p in self._voices_dir.glob("*.npz"))

    def voice(self, name: str) -> Voice:
        with self._lock:
            if name not in self._voices:
                path = self._voices_dir / f"{name}.npz"
                if "/" in name or not path.is_file():
                    raise KeyError(f"no voice {name!r}; known: {self.voices()}")
                self._voices[name] = Voice.load(path)
            return self._voices[name]

    def prompt_state(self, voice: Voice) -> FlowState:
        """The flow state that starts every stream of `voice` (its prompt encoded; cached)."""
        with self._lock:
            state = self._prompt_states.get(voice)
        if state is None:
            with torch.inference_mode():
                tokens, mel, spk = self._prompt_tensors(voice)
                state = self.flow.setup(tokens, mel, spk)
            with self._lock:
                self._prompt_states[voice] = state
        return state

    def _prompt_tensors(self, voice: Voice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight = self.flow.input_embedding.weight
        return (
            torch.from_numpy(voice.prompt_tokens).to(weight.device),
            torch.from_numpy(voice.prompt_mel).to(weight),
            torch.from_numpy(voice.speaker_embedding).to(weight),
        )

    # -- synthesis ------------------------------------------------------------------------------

    def stream(self, voice: Voice) -> Token2WavStream:
        """A stream in `voice`. Cheap: a voice's prompt is encoded (once) at its first chunk."""
        return Token2WavStream(
            self.flow,
            self.hift,
            functools.partial(self.prompt_state, voice),
            self.chunk_tokens,
            self.dit_window,
        )

    def synthesize(
        self, tokens: Sequence[int], voice: Voice, *, full_context: bool = False
    ) -> np.ndarray:
        """The whole utterance (float32 mono, 24 kHz, 960 samples per token).

        By default this is exactly the audio `stream()` produces for the same tokens (the flow
        attends chunk-causally, as when streaming), so REST and realtime answers sound the
        same. `full_context=True` runs the reference's offline path instead: full attention
        over prompt and utterance, which differs from the streamed audio.
        """
        ids = check_tokens(tokens, self.flow.cfg.vocab_size)
        if not full_context:
            stream = self.stream(voice)
            return np.concatenate([stream.push(ids), stream.finish()])
        if not ids:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            prompt = self._prompt_tensors(voice)
            device = prompt[0].device
            mel = self.flow.whole(*prompt, torch.tensor(ids, device=device), full_context=True)
            audio = self.hift(mel.T[None].float())[0]
        return audio.cpu().numpy().astype(np.float32, copy=False)
