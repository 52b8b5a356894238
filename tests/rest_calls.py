"""Calls to the REST speech API and checks of its answers, shared by the REST unit tests
(`tests/unit/test_rest.py`, `tests/unit/test_speech_feedback.py`)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient

from voxgate.server.audio_files import decode_upload

FAKE_PIECE_S = 0.3
"""Audio the fake synthesises per call (3 chunks of 0.1 s)."""


def speech(client: TestClient, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/audio/speech", json={"model": "tts-1", "voice": "joe", "input": "Hi there."} | body
    )


def assert_error(response: httpx.Response, status: int, code: str, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param), error
    assert error["message"]
    return error


def sse_events(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.split("\n\n") if line.strip()]
    assert all(line.startswith("data: ") for line in lines), text
    return [json.loads(line.removeprefix("data: ")) for line in lines]


def decoded(data: bytes, fmt: str) -> np.ndarray:
    """Speech in `fmt` as float32: 24 kHz for `pcm`, 16 kHz (the upload decoder's) otherwise."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768
    return decode_upload(io.BytesIO(data), max_seconds=60)


async def until(condition, timeout_s: float = 10.0) -> None:
    """Wait for a condition another task makes true (bounded; the time is not asserted)."""
    async with asyncio.timeout(timeout_s):
        # The server's slot is released by a task of uvicorn's: there is no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
