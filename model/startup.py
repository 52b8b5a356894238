"""Startup stages: what a server's start is doing, named once.

A start goes through some of these, in the order its backbone does them (the cascade starts
its engine before it loads Whisper and Piper; Step-Audio-2 loads its vocoder first). The
backbones' `start()` report each move to a `StartupStages`; the server's tracker
(`server/startup.py`) logs how long each stage took and `/ready` names the one under way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class StartupStage(StrEnum):
    VERIFYING_MODELS = "verifying_models"
    """Model files checked against their sha256 (fetched first where that is allowed); the
    small VAD and noise-suppression models loaded."""
    LOADING_MODELS = "loading_models"
    """Weights that live outside the engine loaded: tokenizer, vocoder, Whisper, Piper."""
    STARTING_ENGINE = "starting_engine"
    """The vLLM engine: its process started, the LM's weights loaded, the KV cache sized."""
    WARMING_UP = "warming_up"
    """One request per regime, so that the first user does not pay for lazy initialisation."""

    @property
    def done(self) -> str:
        """What the log says once the stage is over ("engine ready in 38.2 s")."""
        match self:
            case StartupStage.VERIFYING_MODELS:
                return "models verified"
            case StartupStage.LOADING_MODELS:
                return "models loaded"
            case StartupStage.STARTING_ENGINE:
                return "engine ready"
            case StartupStage.WARMING_UP:
                return "warm-up done"


class StartupStages(Protocol):
    def begin(self, stage: StartupStage) -> None:
        """The start has moved on to `stage`: the stage before it is over."""
        ...


class _Unreported:
    def begin(self, stage: StartupStage) -> None:
        pass


UNREPORTED: StartupStages = _Unreported()
"""For a start nobody watches (benchmarks, scripts)."""
