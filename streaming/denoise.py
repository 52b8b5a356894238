"""Input noise suppression, for OpenAI's `audio.input.noise_reduction`: RNNoise, one stream per
session.

RNNoise (Xiph.Org, BSD-3-Clause) is a small recurrent network that takes noise out of speech at
48 kHz in 10 ms frames, on one core at a fraction of real time. Its library comes from the
`pyrnnoise` wheel as a model artifact (`model/artifacts.py`: fetched, sha256-checked) and is
loaded here with ctypes: only `rnnoise_create`, `rnnoise_process_frame` and `rnnoise_destroy`
are used, none of that package's Python.

The session's input is 16 kHz mono float32. `NoiseSuppressor.process()` resamples each piece to
48 kHz, denoises whole frames (a partial frame waits for the next piece), and resamples back:
streaming, so the output is the input delayed by one frame and the resamplers' filters.
OpenAI's two settings, `near_field` and `far_field`, both mean RNNoise: it has one model.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming.audio import StreamResampler

RNNOISE_RATE = 48_000
FLOAT_P = ctypes.POINTER(ctypes.c_float)


class RNNoiseLibrary:
    """The RNNoise shared library, loaded once per process."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.rnnoise_create.argtypes = [ctypes.c_void_p]
        lib.rnnoise_create.restype = ctypes.c_void_p
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_destroy.restype = None
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, FLOAT_P, FLOAT_P]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        lib.rnnoise_get_frame_size.argtypes = []
        lib.rnnoise_get_frame_size.restype = ctypes.c_int
        self._lib = lib
        self.frame_size = int(lib.rnnoise_get_frame_size())
        if self.frame_size != RNNOISE_RATE // 100:
            raise ValueError(f"{path}: unexpected RNNoise frame size {self.frame_size}")

    def suppressor(self) -> NoiseSuppressor:
        return NoiseSuppressor(self)


class NoiseSuppressor:
    """One stream of 16 kHz audio through RNNoise; `close()` frees its state."""

    def __init__(self, library: RNNoiseLibrary) -> None:
        self._library = library
        self._lib = library._lib
        self._state: int | None = self._lib.rnnoise_create(None)
        if not self._state:
            raise MemoryError("rnnoise_create failed")
        self._up = StreamResampler(INPUT_SAMPLE_RATE, RNNOISE_RATE)
        self._down = StreamResampler(RNNOISE_RATE, INPUT_SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)
        self._frame_in = np.zeros(library.frame_size, np.float32)
        self._frame_out = np.zeros(library.frame_size, np.float32)
        self.speech_probability = 0.0
        """RNNoise's own voice activity estimate for the last frame (0..1)."""

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Denoise the next piece of the stream (16 kHz float32 in [-1, 1])."""
        if self._state is None:
            raise RuntimeError("the suppressor is closed")
        wide = np.concatenate([self._pending, self._up.process(samples)])
        size = self._library.frame_size
        whole = len(wide) // size * size
        out = np.empty(whole, np.float32)
        for start in range(0, whole, size):
            # RNNoise works on 16-bit sample values held in floats.
            np.multiply(wide[start : start + size], 32768.0, out=self._frame_in)
            self.speech_probability = self._lib.rnnoise_process_frame(
                self._state,
                self._frame_out.ctypes.data_as(FLOAT_P),
                self._frame_in.ctypes.data_as(FLOAT_P),
            )
            np.multiply(self._frame_out, 1 / 32768.0, out=out[start : start + size])
        self._pending = wide[whole:].copy()
        return np.clip(self._down.process(out), -1.0, 1.0)

    def close(self) -> None:
        if self._state is not None:
            self._lib.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
