# voxgate GPU image: the unified backbone (Step-Audio-2) on vLLM's CUDA build, one engine per
# container. The CPU image (the embedded cascade default) is deploy/Dockerfile.cpu.
#
# Build (from the repository root):  docker build -t voxgate:gpu .
# Run (NVIDIA container toolkit; the weights in a host folder, mounted read-only):
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro \
#     -e VOXGATE_API_KEY=<16+ characters> voxgate:gpu
#
# The speech model is never baked in nor downloaded: voxgate does not contact a model hub. Put
# Step-Audio-2-mini (with token2wav/ and voices/, see README) in the mounted folder, or point
# VOXGATE_MODEL elsewhere. The VAD (silero, 2 MB, from the package registry, sha256-checked) is
# baked in. CUDA itself comes with the PyPI wheels of torch and vLLM; the base image brings the
# OS side of the NVIDIA runtime, and the host's driver must be new enough for those wheels.
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-base-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 voxgate \
 && python3.11 -m venv /opt/voxgate
ENV PATH=/opt/voxgate/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY server server
COPY model model
COPY streaming streaming
COPY clients clients
RUN pip install ".[gpu]"

USER voxgate
ENV VOXGATE_HOME=/home/voxgate/.cache/voxgate \
    VOXGATE_HOST=0.0.0.0 \
    VOXGATE_PORT=8000 \
    VOXGATE_FETCH_MISSING_MODELS=false \
    VOXGATE_LOG_FORMAT=json \
    VOXGATE_BACKBONE=stepaudio2 \
    VOXGATE_MODEL=/models/Step-Audio-2-mini \
    VOXGATE_ENGINE__ENFORCE_EAGER=false \
    VOXGATE_ENGINE__KV_CACHE_GIB=16 \
    VOXGATE_STEPAUDIO2__VOCODER_DEVICE=cuda
RUN python -c "from voxgate.model import artifacts as a; a.fetch(a.SILERO_VAD, a.default_home())"
EXPOSE 8000
# SIGTERM drains: live turns finish (up to VOXGATE_DRAIN_DEADLINE_S), then sessions close with
# 1001. Give the container more than that to stop (docker stop -t, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --start-period=600s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready')"
CMD ["voxgate", "serve"]
