"""Shared fixtures: the model files (fetched by `voxgate fetch-models`) and test speech.

Model tests never download: a missing or corrupt model file fails the test with the command to
run, it does not skip.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soxr

from voxgate.model import artifacts
from voxgate.model.artifacts import PIPER_JOE, RNNOISE, SILERO_VAD, Artifact, ArtifactError
from voxgate.model.types import INPUT_SAMPLE_RATE


def _verified(artifact: Artifact) -> Path:
    try:
        return artifacts.verify(artifact, artifacts.default_home())
    except ArtifactError as e:
        pytest.fail(f"test models are not in place: {e}")


@pytest.fixture(scope="session")
def silero_path() -> Path:
    return _verified(SILERO_VAD) / SILERO_VAD.files[0].name


@pytest.fixture(scope="session")
def rnnoise_path() -> Path:
    return _verified(RNNOISE) / RNNOISE.files[0].name


@pytest.fixture(scope="session")
def piper_path() -> Path:
    return _verified(PIPER_JOE) / "en_US-joe-medium.onnx"


@functools.cache
def _piper(path: Path):
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    # One thread, as the server runs it: ONNX Runtime's default pool spins on both cores and,
    # next to a busy server, made a short sentence take seconds.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
    return PiperVoice(session=session, config=config)


@pytest.fixture(scope="session")
def speak(piper_path: Path):
    """speak(text) -> the text spoken by Piper at 16 kHz, trimmed to where the voice is.

    Deterministic: the same text always gives the same samples."""

    def speak(text: str) -> np.ndarray:
        from piper import SynthesisConfig

        # Piper samples noise by default, so each call says the text a little differently;
        # without noise the same text is the same audio, and tests are repeatable.
        steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(_piper(piper_path).synthesize(text, syn_config=steady))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        audio = soxr.resample(audio, chunks[0].sample_rate, INPUT_SAMPLE_RATE)
        frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
        # Piper pads sentences with near-silence; keep 10 ms frames from first to last voiced.
        voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 0.01)
        return audio[voiced[0] * 160 : (voiced[-1] + 1) * 160].astype(np.float32)

    return speak


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (the test machines are small and shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
