"""Gaussian noise addressed by absolute position: every way of cutting a signal sees the same noise.

The flow's ODE starts from noise and HiFT's source adds noise; the reference draws both with
`randn` per call, so a chunk of a stream and the same frames of a whole-utterance pass see
different noise. Here block `b` of the noise is `randn` from a generator seeded with
`(seed, b)`, and any `[start, stop)` range is cut from those blocks: unbounded in length, cheap
(a block is drawn when first asked for) and identical for streamed and whole synthesis.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class PositionalNoise:
    def __init__(self, seed: int, channels: int, block: int) -> None:
        self.seed = seed
        self.channels = channels
        self.block = block
        self._blocks: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # one Token2Wav serves streams on several threads

    def _get_block(self, index: int) -> torch.Tensor:
        if index in self._blocks:
            self._blocks.move_to_end(index)
            return self._blocks[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        noise = torch.randn(self.channels, self.block, generator=generator)
        self._blocks[index] = noise
        if len(self._blocks) > 8:  # a stream only ever needs the newest few blocks
            self._blocks.popitem(last=False)
        return noise

    def slice(self, start: int, stop: int) -> torch.Tensor:
        """Noise for positions `[start, stop)`: float32 `(channels, stop - start)` on the CPU."""
        if stop <= start:
            return torch.zeros(self.channels, 0)
        first, last = start // self.block, (stop - 1) // self.block
        with self._lock:
            noise = torch.cat([self._get_block(i) for i in range(first, last + 1)], dim=1)
        offset = start - first * self.block
        return noise[:, offset : offset + stop - start]
