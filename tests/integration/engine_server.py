"""A real `voxgate serve` subprocess for the integration tests: launched on a free port with
its own environment, waited for until ready, stopped with its whole process group (the engine's
processes too), and its /metrics and log read back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from voxgate.model import artifacts

START_TIMEOUT_S = 420
API_KEY = "test-key-0123456789"


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    ws_url: str
    api_key: str
    log_path: Path
    proc: subprocess.Popen

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample from /metrics over series matching `labels`."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        text = httpx.get(f"{self.base_url}/metrics", headers=headers, timeout=10).text
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
                found = True
        if not found:
            raise KeyError(f"{name}{labels} not in /metrics")
        return total

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        return _tail(self.log_path, lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launch(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]
) -> Iterator[RunningServer]:
    """A `voxgate serve` subprocess with `env` on a free port, until the block ends."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp(name) / "voxgate.log"
    env = {
        **os.environ,
        "VOXGATE_HOME": str(artifacts.default_home()),
        "VOXGATE_PORT": str(port),
        "VOXGATE_API_KEY": API_KEY,
        "VOXGATE_FETCH_MISSING_MODELS": "false",
        "VOXGATE_REALTIME__MAX_SESSIONS": "4",
        **env,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxgate.server.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base_url, log_path)
        ws_url = f"ws://127.0.0.1:{port}/v1/realtime"
        yield RunningServer(base_url, ws_url, API_KEY, log_path, proc)
    finally:
        _stop(proc)


def unified_env(model: Path, speculative: str = "ngram") -> dict[str, str]:
    return {
        "VOXGATE_BACKBONE": "stepaudio2",
        "VOXGATE_MODEL": str(model),
        "VOXGATE_STEPAUDIO2__SPECULATIVE": speculative,
        # The tiny model writes its think markers as text, as Step-Audio-2-mini-Think does;
        # its folder name cannot say it reasons.
        "VOXGATE_STEPAUDIO2__THINK": "on",
        # One request at a time: the engine's priority order becomes observable.
        "VOXGATE_ENGINE__MAX_NUM_SEQS": "1",
        "VOXGATE_ENGINE__KV_CACHE_GIB": "0.5",
        # The tiny model writes hundreds of tokens a second: long answers keep it busy long
        # enough to be interrupted.
        "VOXGATE_REALTIME__SESSION__MAX_OUTPUT_TOKENS": "3800",
        "VOXGATE_STEPAUDIO2__CONTEXT_TOKENS": "4096",
        "VOXGATE_REST__MAX_CONCURRENT_REQUESTS": "8",
        # Long syntheses stop at 25 s of speech, ~790 tokens (~1-3 s of engine time here).
        "VOXGATE_STEPAUDIO2__MAX_TTS_S": "25",
    }


def _wait_ready(proc: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"voxgate exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)  # polling a process we do not control; there is no event to wait on
    pytest.fail(f"voxgate not ready after {START_TIMEOUT_S} s:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # graceful: the lifespan shuts the engine down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the engine is left
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
