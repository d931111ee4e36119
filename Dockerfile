# The project image: every pipeline step (Kubeflow components, DVC stages) and the service run from it.
# PyPI's Linux torch wheels bundle the CUDA runtime, so this image runs on GPU nodes (NVIDIA container runtime;
# the host needs only the driver) and falls back to the CPU elsewhere.
#   docker build -t narrator:latest .
#   docker run --rm --gpus all -v $PWD/data:/data narrator:latest validate /data/narrator --out /data/validated
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BENTOML_DO_NOT_TRACK=true

RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ffmpeg sox git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first and pinned (the same version the CPU tests use), then the pinned set.
RUN pip install torch==2.13.0
# torchaudio is optional (its PyPI wheels are CUDA-only and versioned apart from torch); every code path has a
# CPU implementation without it. Build with --build-arg TORCHAUDIO="torchaudio==X.Y.Z" to add a matching one.
ARG TORCHAUDIO=""
RUN if [ -n "$TORCHAUDIO" ]; then pip install "$TORCHAUDIO"; fi
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md params.yaml dvc.yaml ./
COPY narrator ./narrator
COPY components ./components
COPY models ./models
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-deps --no-build-isolation -e . && narrator --help > /dev/null

ENTRYPOINT ["narrator"]
CMD ["--help"]
