"""One warning per weight, said once instead (a `vllm.general_plugins` hook).

The cascade keeps SmolLM2's weights in float32 on disk and, on a CPU that computes in bfloat16,
runs them in bfloat16 (`smollm2.engine_dtype`). vLLM's loader then warns for every tensor it
narrows ("Attempted to load weight ... with dtype torch.float32 into parameter with dtype
torch.bfloat16"): 122 warning lines per start that bury the ones that matter. When
`CAST_ENV` names the cast the server chose (by `EngineHost.start`, when the engine's dtype is
not the checkpoint's), `register()` lets the first of those lines through, says that the rest
are the same cast, and drops them; every other warning stays.
"""

from __future__ import annotations

import logging
import os

CAST_ENV = "VOXGATE_ENGINE_INTENDED_CAST"
"""`<from>-><to>`, e.g. `float32->bfloat16`: the weights' cast the server asked for."""
LOADER_LOGGER = "vllm.model_executor.models.utils"


class IntendedCast(logging.Filter):
    """Drops vLLM's per-tensor dtype warnings for one intended cast, after the first."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__()
        self.dtypes = (f"torch.{source}", f"torch.{target}")
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Attempted to load weight") or len(record.args or ()) < 3:
            return True
        assert isinstance(record.args, tuple)
        if tuple(str(dtype) for dtype in record.args[1:3]) != self.dtypes:
            return True
        self.seen += 1
        if self.seen == 1:
            record.msg += " (the server's choice; the same cast of the other weights is not logged)"
        return self.seen == 1


def register() -> None:
    """Install the filter in this vLLM process when the server asked for a cast (idempotent)."""
    cast = os.environ.get(CAST_ENV)
    if not cast or "->" not in cast:
        return
    source, target = cast.split("->", 1)
    loader = logging.getLogger(LOADER_LOGGER)
    if not any(isinstance(existing, IntendedCast) for existing in loader.filters):
        loader.addFilter(IntendedCast(source, target))
