#!/usr/bin/env bash
# The one prepared run of the unified backbone on a GPU machine (issue 16): bench/gpu_capacity.py
# at Step-Audio-2-mini's published sizes, random weights made on the GPU, results under $OUT.
#
#   bash bench/gpu_run.sh prepare   # here, with network: .gpu_carry/ (wheels, speech, VAD model)
#   bash bench/gpu_run.sh           # there: the device tool's run, carry [".gpu_carry"]
#
# The GPU machine has python3 (3.12) with torch, transformers, safetensors, tokenizers, numpy,
# httpx, onnxruntime and matplotlib, no network, and takes at most 64 MiB of carried files a
# call. What voxgate needs beyond that is small and travels as wheels in .gpu_carry/wheels;
# vLLM does not fit (its CUDA wheel is 336 MB and pins its own torch): it must already be
# importable there, or be installable from a local wheelhouse named by VOXGATE_GPU_WHEELHOUSE.
# Without it the run measures what needs no engine (the checkpoint written on the GPU and read
# back, the vocoder at the published sizes), writes $OUT/BLOCKED.txt and exits 3.
#
# Time: GPU_BUDGET_S (default 500 s) bounds gpu_capacity.py; with the machine's start the whole
# call stays inside one 10-minute command. Levels, turns and the rest: GPU_CAPACITY_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY=.gpu_carry
# The versions tested here (this checkout's venv), as Python 3.12 manylinux wheels: voxgate's
# core dependencies the GPU image does not have, and those it may have too old.
WHEELS=(
    fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
    annotated-types annotated-doc typing-extensions uvicorn websockets soxr soundfile cffi
    pycparser av python-multipart jsonschema jsonschema-specifications referencing rpds-py
)
VLLM_PIN=vllm==0.33.0

prepare() {
    local venv=.venv/bin/python
    grep -qx "/$CARRY/" "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
        || echo "/$CARRY/" >>"$(git rev-parse --git-path info/exclude)"
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
    local name version
    for name in "${WHEELS[@]}"; do
        version=$($venv -c "import importlib.metadata as m; print(m.version('$name'))")
        $venv -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            -d "$CARRY/wheels" "$name==$version"
    done
    # Recorded speech (Debian's pocketsphinx-testdata) and the VAD model (voxgate fetch-models).
    cp -r /usr/share/pocketsphinx/test/data "$CARRY/speech"
    local vad="${VOXGATE_HOME:-$HOME/.cache/voxgate}/models/silero-vad"
    mkdir -p "$CARRY/home/models" && cp -r "$vad" "$CARRY/home/models/"
    du -sh "$CARRY" "$CARRY"/*
}

# --- on the GPU machine -------------------------------------------------------------------

install() {
    # voxgate's folders as the package `voxgate`, with the vLLM plugin's entry point, without
    # pip install -e (the project pins Python 3.11; the image has 3.12).
    local site=/tmp/voxgate-site dist=/tmp/voxgate-site/voxgate-0.1.0.dist-info
    mkdir -p "$site/voxgate" "$dist"
    for folder in server model streaming clients; do ln -sfn "$PWD/$folder" "$site/voxgate/$folder"; done
    printf 'Metadata-Version: 2.1\nName: voxgate\nVersion: 0.1.0\n' >"$dist/METADATA"
    printf '[vllm.general_plugins]\nvoxgate_stepaudio2 = voxgate.model.stepaudio2:register\n' \
        >"$dist/entry_points.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/voxgate-deps \
        "$CARRY"/wheels/*.whl
    export PYTHONPATH=/tmp/voxgate-site:/tmp/voxgate-deps:$PWD/bench
    export VOXGATE_HOME=$PWD/$CARRY/home VOXGATE_FETCH_MISSING_MODELS=false
    if ! python3 -c "import vllm" 2>/dev/null && [ -d "${VOXGATE_GPU_WHEELHOUSE:-}" ]; then
        python3 -m pip install -q --no-index --find-links "$VOXGATE_GPU_WHEELHOUSE" "$VLLM_PIN"
    fi
}

measure_without_engine() {
    # What needs no vLLM: the writer at full size on the GPU, the shards read back onto the GPU
    # and checked against the index, the vocoder of that checkpoint.
    local model=/tmp/mini
    python3 -m voxgate.server.cli make-tiny-model "$model" --size mini --device cuda
    python3 - "$model" <<'EOF'
import json
import math
import sys
import time
from pathlib import Path

from safetensors import safe_open

from voxgate.model.stepaudio2.published_size import MINI_CONFIG, tensor_specs

model = Path(sys.argv[1])
index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
shapes = {s.name: s.shape for s in tensor_specs(MINI_CONFIG)}
assert index.keys() == shapes.keys()
started, size = time.perf_counter(), 0
for name in sorted(set(index.values())):
    with safe_open(model / name, framework="pt", device="cuda") as shard:
        for key in shard.keys():
            tensor = shard.get_tensor(key)
            assert tuple(tensor.shape) == shapes[key] and index[key] == name, key
            size += tensor.numel() * tensor.element_size()
assert size == 2 * sum(math.prod(s) for s in shapes.values())
seconds = time.perf_counter() - started
print(f"read back onto the GPU: {size / 1e9:.2f} GB in {seconds:.1f} s "
      f"({size / 1e9 / seconds:.2f} GB/s), every tensor where and as the index says")
EOF
    python3 bench/vocoder_rtf.py --model "$model" --device cuda --runs 3
}

run() {
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_run.log") 2>&1
    export PYTHONUNBUFFERED=1
    echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
    if [ ! -d "$CARRY/wheels" ]; then
        echo "no $CARRY/wheels: run 'bash bench/gpu_run.sh prepare' first and carry $CARRY" >&2
        exit 2
    fi
    install
    if ! python3 -c "import vllm; print('vllm', vllm.__version__)"; then
        {
            echo "BLOCKED: vLLM is not importable on this machine and cannot be installed here."
            echo "The image has no vllm; $VLLM_PIN (the CUDA build voxgate's engine code is"
            echo "written against) is a 336 MB wheel that pins torch==2.14.0 (this image: $(python3 -c 'import torch; print(torch.__version__)'))"
            echo "and flashinfer, xgrammar and others; one call carries at most 64 MiB and the"
            echo "machine reaches no registry. Set VOXGATE_GPU_WHEELHOUSE to a folder of those"
            echo "wheels, or use an image with vLLM. Measured instead: what needs no engine."
        } | tee "$OUT/BLOCKED.txt"
        measure_without_engine
        exit 3
    fi
    # shellcheck disable=SC2086  # GPU_CAPACITY_ARGS is a list of words
    timeout --signal=INT "$(( ${GPU_BUDGET_S:-500} + 30 ))" python3 bench/gpu_capacity.py \
        --speech "$CARRY/speech" --budget-s "${GPU_BUDGET_S:-500}" --logs "$OUT/logs" \
        --reserve-s 150 --json "$OUT/gpu_capacity.json" --plot "$OUT/gpu_capacity.png" \
        ${GPU_CAPACITY_ARGS:-}
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/gpu_run.sh [prepare|run]" >&2; exit 2 ;;
esac
