"""Step-Audio-2's token2wav: audio tokens (25 Hz) -> 24 kHz speech in the voice of a prompt.

A flow-matching decoder (conformer encoder + DiT, `flow.py`) turns tokens into mel, conditioned
on a speaker prompt (`voice.py`); a HiFT vocoder (`hift.py`) turns mel into waveform. The
modules load the published `token2wav/{flow.yaml,flow.pt,hift.pt}` as they are. `Token2Wav`
synthesises whole utterances or streams (`streaming.py`: 25-token chunks with 3 tokens of
lookahead, caches carried across chunks, output identical to the whole utterance's on the
CPU; on CUDA within float rounding, 7e-5 at most on an H200).

Many live streams: `BatchedVocoder` (`batched.py`) advances the chunks of many streams, each
at its own position, in one static-shape step (`batch_step.py`, over the preallocated state of
`batch_state.py`) that a CUDA graph can capture; `VocoderScheduler` (`scheduler.py`) is the
thread that collects the streams with a chunk ready and steps them together.
"""

from .batch_state import StepShapes
from .batched import BatchedStream, BatchedVocoder
from .scheduler import ScheduledStream, VocoderScheduler
from .streaming import StreamClosed, Token2WavStream
from .vocoder import Token2Wav
from .voice import Voice

__all__ = [
    "BatchedStream",
    "BatchedVocoder",
    "ScheduledStream",
    "StepShapes",
    "StreamClosed",
    "Token2Wav",
    "Token2WavStream",
    "VocoderScheduler",
    "Voice",
]
