"""`voxgate serve` over the fake backbone, for tests that need a real server process (signals).

    VOXGATE_PORT=8123 VOXGATE_HOME=... python tests/fake_server.py

Answers are 40 words, one every 50 ms (`FAKE_REPLY_WORDS`, `FAKE_CHUNK_DELAY_S` override), so a
test has time to do something while one is being spoken.
"""

from __future__ import annotations

import os

from fakes import FakeBackbone, backbone_factory

from voxgate.server import logs
from voxgate.server.app import create_app
from voxgate.server.draining import serve
from voxgate.server.settings import Settings


def main() -> None:
    settings = Settings(fetch_missing_models=False)
    logs.configure(settings.log_level, settings.log_format)
    fake = FakeBackbone(
        reply=["word "] * int(os.environ.get("FAKE_REPLY_WORDS", "40")),
        chunk_delay_s=float(os.environ.get("FAKE_CHUNK_DELAY_S", "0.05")),
    )
    serve(create_app(settings, backbone_factory=backbone_factory(fake)), settings)


if __name__ == "__main__":
    main()
