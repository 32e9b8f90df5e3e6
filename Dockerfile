# syntax=docker/dockerfile:1
# Multi-target image for the translation service (BuildKit; the default builder since Docker 23).
#
#   docker build -t m2m100-ct2:cpu .                       # default target: cpu (the last stage)
#   docker build --target gpu -t m2m100-ct2:gpu .          # CUDA 12, float16 weights
#   docker build --build-arg SOURCE=./checkpoints/my-m2m100 .   # a local checkpoint, see below
#
# The model is converted at build time in a throwaway stage (torch + transformers live only there);
# the run stages carry the run-time dependencies from requirements/runtime.lock (every version pinned,
# every file's hash checked), the project's wheel (--no-deps: the lock already holds its dependencies)
# and the model directory, nothing else. Regenerate the lock with `make lock` after editing runtime.txt.
# The convert and serve commands are the ones `make convert` / `make serve` run
# (tests/test_dockerfile.py keeps them equal).

# Base images are pinned by digest (the multi-platform index), so a rebuild gets the same bytes; the tag
# says what it is. To bump one: `docker buildx imagetools inspect python:3.11-slim-bookworm` (or the
# CUDA tag), copy the "Digest:" line of the index into the ARG below, rebuild, run the tests.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
# CTranslate2 4.8 loads CUDA 12 (libcublas.so.12) and cuDNN 9 at run time.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04@sha256:17e2934e1fa96152b14f78078bfbafd0f00f391df995dc6c641a720fce1202bb
ARG SOURCE=facebook/m2m100_418M

# ---------------------------------------------------------------------------------------------
# converter: build-time dependencies and the conversion code
FROM ${PYTHON_IMAGE} AS converter
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# Only these two: a new runtime.lock must not redo the conversion.
COPY requirements/runtime.txt requirements/convert.txt requirements/
# torch==2.13.0 from PyPI is the CUDA build (GBs of nvidia-* wheels); the CPU index has 2.13.0+cpu,
# which pip prefers. Conversion needs no GPU, even for the GPU image. Not locked: this stage is thrown
# away; what it leaves is the model directory, whose manifest records the tool versions that wrote it.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r requirements/runtime.txt -r requirements/convert.txt --extra-index-url https://download.pytorch.org/whl/cpu
COPY convert/ convert/
# convert writes the manifest through service/model_dir.py. Only that module (stdlib-only) is
# copied: with all of service/ here, every change to the service would redo the conversion.
COPY service/__init__.py service/model_dir.py service/
# Local checkpoints: put the Hugging Face checkpoint directory under checkpoints/ in the build
# context and pass SOURCE=./checkpoints/NAME. The glob lets the build go on when there is no
# checkpoints/ directory (a hub id needs none).
COPY checkpoint[s] checkpoints/

# ---------------------------------------------------------------------------------------------
# model-cpu / model-gpu: the conversion, with each target's default weight type
FROM converter AS model-cpu
ARG SOURCE
ARG QUANTIZATION=int8
RUN --mount=type=cache,target=/root/.cache/huggingface \
    python -m convert "$SOURCE" /models/m2m100 --quantization "$QUANTIZATION"

FROM converter AS model-gpu
ARG SOURCE
# float16: 12% faster than int8_float16 on an H100 (docs/benchmarks.md); int8_float16 halves the
# weights' memory, for small GPUs: --build-arg QUANTIZATION=int8_float16 and MT_COMPUTE_TYPE to match.
ARG QUANTIZATION=float16
RUN --mount=type=cache,target=/root/.cache/huggingface \
    python -m convert "$SOURCE" /models/m2m100 --quantization "$QUANTIZATION"

# ---------------------------------------------------------------------------------------------
# wheel: the project as one pure-Python wheel (console scripts m2m100-serve, m2m100-convert, ...). The
# run stages install it with --no-deps, so they need neither the sources nor a build backend.
FROM ${PYTHON_IMAGE} AS wheel
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml pyproject.toml
COPY requirements/ requirements/
COPY service/ service/
COPY convert/ convert/
COPY loadtest/ loadtest/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------
# gpu: CUDA 12 + cuDNN 9 runtime, Python 3.11 from Ubuntu, runtime requirements only
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3.11 (jammy-updates); apt versions are not pinned, the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MT_MODEL_DIR=/models/m2m100 HF_HUB_OFFLINE=1 \
    MT_DEVICE=cuda MT_COMPUTE_TYPE=float16
WORKDIR /app
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
# The model (hundreds of MB) changes less often than the code: its layer comes first.
COPY --from=model-gpu /models/m2m100 /models/m2m100
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    pip install --no-cache-dir --no-deps /tmp/dist/*.whl
USER 10001:10001
EXPOSE 9527
# No curl in the image: python's urllib. urlopen raises on a 503, which fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MT_PORT', '9527') + '/readyz', timeout=4)"]
CMD ["python", "-m", "service", "--model-dir", "/models/m2m100", "--host", "0.0.0.0", "--port", "9527"]

# ---------------------------------------------------------------------------------------------
# cpu (default target): python slim, runtime requirements only
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MT_MODEL_DIR=/models/m2m100 HF_HUB_OFFLINE=1
WORKDIR /app
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
COPY --from=model-cpu /models/m2m100 /models/m2m100
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    pip install --no-cache-dir --no-deps /tmp/dist/*.whl
USER 10001:10001
EXPOSE 9527
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MT_PORT', '9527') + '/readyz', timeout=4)"]
CMD ["python", "-m", "service", "--model-dir", "/models/m2m100", "--host", "0.0.0.0", "--port", "9527"]
