"""The server's start, stage by stage: the stage under way and since when, and how long each
finished stage took. The lifespan and the backbone's start move it on (`begin`); each finished
stage is logged with its duration, and `/ready` shows where the start is.

    STARTING --ready()--> READY
    STARTING --failed()--> FAILED

A stage begun again later (the lifespan and a backbone both verify model files) adds its new
time to what it took before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from voxgate.model.startup import StartupStage

log = logging.getLogger(__name__)


class StartupState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StartupSnapshot:
    """Where the start was when the snapshot was taken."""

    state: StartupState
    stage: StartupStage | None
    """The stage under way, or the one a failed start stopped in (None: no stage begun yet, or
    the start is over)."""
    stage_elapsed_s: float
    stages_done: Mapping[StartupStage, float]
    """Seconds each finished stage took, in the order they were first begun."""


class StartupTracker:
    """Where the start is; kept in `app.state.startup`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.state = StartupState.STARTING
        self._began = clock()
        self._stage: StartupStage | None = None
        self._stage_began = self._began
        self._done: dict[StartupStage, float] = {}

    def begin(self, stage: StartupStage) -> None:
        """The start has moved on to `stage` (beginning the stage under way changes nothing)."""
        self._expect_starting(f"begin {stage}")
        if stage is self._stage:
            return
        self._end_stage()
        self._stage, self._stage_began = stage, self._clock()

    def ready(self) -> float:
        """The start is over; return how long it took, in seconds."""
        self._expect_starting("become ready")
        self._end_stage()
        self.state = StartupState.READY
        return self._clock() - self._began

    def failed(self) -> None:
        """The start has stopped with an error (the caller lets the error go on); the stage
        under way stays the one it stopped in."""
        self._expect_starting("fail")
        self.state = StartupState.FAILED
        log.error(
            "startup failed during %s, %.1f s after the start began",
            self._stage or "its first stage",
            self._clock() - self._began,
        )

    def snapshot(self) -> StartupSnapshot:
        now = self._clock()
        return StartupSnapshot(
            state=self.state,
            stage=self._stage,
            stage_elapsed_s=0.0 if self._stage is None else now - self._stage_began,
            stages_done=MappingProxyType(dict(self._done)),
        )

    def _end_stage(self) -> None:
        if self._stage is None:
            return
        took = self._clock() - self._stage_began
        self._done[self._stage] = self._done.get(self._stage, 0.0) + took
        log.info("%s in %.1f s", self._stage.done, took)
        self._stage = None

    def _expect_starting(self, what: str) -> None:
        if self.state is not StartupState.STARTING:
            raise RuntimeError(f"the start cannot {what}: it is {self.state}")
