"""`voxgate serve` over the fake backbone, for tests that need a real server process (signals,
exit status, its log).

    VOXGATE_PORT=8123 VOXGATE_HOME=... python tests/fake_server.py

Answers are 40 words, one every 50 ms (`FAKE_REPLY_WORDS`, `FAKE_CHUNK_DELAY_S` override), so a
test has time to do something while one is being spoken. SIGUSR1 makes the fake's engine die
(`is_healthy` turns False), as a killed EngineCore does to the real one. It starts as
`voxgate serve` does, in the background; `FAKE_START_GATE` (a FIFO) holds the fake's "engine
start" until a line is written to it, and `FAKE_START_FAILS` makes that start fail with its text.

`launch(tmp_path, env)` runs it for a test, on a free port, until the block ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fakes import FakeBackbone

from voxgate.model.startup import StartupStage
from voxgate.server import logs
from voxgate.server.app import create_app
from voxgate.server.draining import serve
from voxgate.server.settings import Settings

START_TIMEOUT_S = 40


def main() -> int:
    settings = Settings(fetch_missing_models=False)
    keys = [k.get_secret_value() for k in (settings.api_key, settings.metrics_key) if k]
    logs.configure(settings.log_level, settings.log_format, secrets=keys)
    fake = FakeBackbone(
        reply=["word "] * int(os.environ.get("FAKE_REPLY_WORDS", "40")),
        chunk_delay_s=float(os.environ.get("FAKE_CHUNK_DELAY_S", "0.05")),
    )

    def engine_dies(signum: int, frame: object) -> None:
        fake.is_healthy = False

    signal.signal(signal.SIGUSR1, engine_dies)

    @asynccontextmanager
    async def start(settings: Settings) -> AsyncIterator[FakeBackbone]:
        app.state.startup.begin(StartupStage.STARTING_ENGINE)  # as the real backbones do
        if gate := os.environ.get("FAKE_START_GATE"):
            await asyncio.to_thread(Path(gate).read_text)  # returns once a line is written
        if failure := os.environ.get("FAKE_START_FAILS"):
            raise RuntimeError(failure)
        yield fake

    app = create_app(settings, backbone_factory=start, start_in_background=True)
    return serve(app, settings)


@dataclass(frozen=True)
class FakeServer:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launch(
    tmp_path: Path, env: dict[str, str], until: str | None = "ready"
) -> Iterator[FakeServer]:
    """This script as a server process with `env` added (and no VOXGATE_API_KEY unless `env`
    sets one), ready to serve (`until="listening"`: answering HTTP, started or not; None: not
    waited for); killed at the end of the block if still running."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    full = {**os.environ, "VOXGATE_PORT": str(port)}
    full.pop("VOXGATE_API_KEY", None)
    full.update(env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while until is not None:
            assert proc.poll() is None, log_path.read_text()
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code
                if status == 200 or until == "listening":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)  # a process we do not control: nothing to wait on but its port
        yield FakeServer(proc, port, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
