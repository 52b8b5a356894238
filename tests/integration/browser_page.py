"""Driving the browser client (`clients/web/`) in headless Chromium, shared by the browser
tests: Debian's `chromium` driven by Playwright (the Python package, pointed at that binary: no
browser is downloaded), screenshots saved under `$VOXGATE_ARTIFACTS` (default `artifacts/` in
the repository), and a microphone the test speaks into on cue.

Nothing is installed here: without Chromium or Playwright a test fails with the command that
installs them (`deploy/install.sh --test` does, as root).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
INSTALL = "deploy/install.sh --test (as root), or: apt-get install -y chromium"


def _chromium() -> str:
    path = os.environ.get("VOXGATE_CHROMIUM") or shutil.which("chromium")
    if path is None or not Path(path).exists():
        pytest.fail(f"Debian's chromium is not installed; install it with: {INSTALL}")
    return path


def artifacts_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "artifacts"
    path = Path(os.environ.get("VOXGATE_ARTIFACTS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium(*args: str) -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright."""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the Python package playwright is not installed; install it with: {INSTALL}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=[*CHROMIUM_FLAGS, *args]
        )
        try:
            yield browser
        finally:
            browser.close()


def watch_problems(page: Any) -> list[str]:
    """The page's uncaught errors and console errors, appended as they happen."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda message: problems.append(f"console: {message.text}")
        if message.type == "error"
        else None,
    )
    return problems


def save_screenshot(page: Any, name: str) -> None:
    path = artifacts_dir() / name
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot of the browser client: {path}")


SCRIPTED_MIC = """
// The page's microphone, played on cue: getUserMedia answers with a stream that carries
// silence, and `window.say(base64 pcm16, rate)` speaks into it. The page's own path (its
// AudioWorklet capture, resampling, appends) is unchanged.
navigator.mediaDevices.getUserMedia = async () => {
  const context = new AudioContext();
  const mic = context.createMediaStreamDestination();
  const hum = context.createConstantSource();  // keeps the track running between utterances
  hum.offset.value = 0;
  hum.connect(mic);
  hum.start();
  window.say = (data, rate) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer);
    const buffer = context.createBuffer(1, pcm.length, rate);
    buffer.copyToChannel(Float32Array.from(pcm, (v) => v / 32768), 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(mic);
    source.start();
  };
  await context.resume();
  return mic.stream;
};
"""


def say(page: Any, speech: np.ndarray) -> None:
    pcm = (np.clip(0.7 * speech / np.abs(speech).max(), -1, 1) * 32767).astype("<i2")
    page.evaluate("([data, rate]) => say(data, rate)", [base64.b64encode(pcm).decode(), 16000])
