"""One real voxgate server (real vLLM engine, real models) for the whole test session.

The engine takes ~40 s to start on these machines, so it starts once: a `voxgate serve`
subprocess on a free port (engine_server.py), in its own process group so teardown also ends the
engine's processes. Every test here talks to it only through the wire protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_server import RunningServer, launch, unified_env


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The embedded CPU default (cascade backbone)."""
    with launch(tmp_path_factory, "cascade", {}) as running:
        yield running


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Step-Audio-2 checkpoint in the published layout."""
    from voxgate.model.stepaudio2.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-stepaudio2") / "model")


@pytest.fixture(scope="session")
def unified_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[RunningServer]:
    """The unified backbone: the tiny Step-Audio-2 on one vLLM engine (n-gram speculation on)."""
    with launch(tmp_path_factory, "stepaudio2", unified_env(tiny_model)) as running:
        yield running
