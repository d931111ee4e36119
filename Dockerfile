# The project image: every pipeline step (Kubeflow components, DVC stages) and the service run from it, as
# `narrator SUBCOMMAND ...`. CUDA runtime base (the host needs only the NVIDIA driver and container toolkit); the
# steps fall back to the CPU when no GPU is given. Linted by tests/test_dockerfile.py (no Docker engine needed).
#   docker build -t narrator:0.1.0 .
#   docker build --build-arg TORCHAUDIO=X.Y.Z -t narrator:0.1.0 .   # add torchaudio==X.Y.Z matching torch
#   docker run --rm --gpus all -v "$PWD/data:/work/data" narrator:0.1.0 validate data/narrator --out data/validated
#   docker run --rm --gpus all -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY narrator:0.1.0 \
#       prepare s3://voices/runs/alice/validated --out s3://voices/runs/alice/prepared
# Runs happen in /work (the working directory, writable by the non-root user 1000): ./params.yaml, the s3://
# cache (.narrator-cache) and mlflow.db live there; mount a volume on /work to keep them.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BENTOML_DO_NOT_TRACK=true

# Python 3.11 (Ubuntu 22.04's python3.11 packages) as `python` in a virtual environment, and the tools the steps
# call: espeak-ng (demo speech), ffmpeg and sox (audio formats), git (lineage); libgomp1 is the OpenMP runtime
# of numba's thread-safe pool, which the compiled CPU decoding step runs on (models/kernels.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv espeak-ng ffmpeg sox git ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

# torch first and pinned (on Linux its PyPI wheel brings its CUDA libraries), then the pinned set.
RUN pip install pip==26.3 \
 && pip install torch==2.13.0
# torchaudio is optional (its PyPI wheels are CUDA-only and versioned apart from torch); every code path has a
# CPU implementation without it. --build-arg TORCHAUDIO=X.Y.Z installs torchaudio==X.Y.Z (match torch 2.13.0).
ARG TORCHAUDIO=""
RUN if [ -n "$TORCHAUDIO" ]; then pip install "torchaudio==${TORCHAUDIO}"; fi
WORKDIR /opt/narrator
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The project, installed editable from /opt/narrator (its data files, e.g. models/text/symbols_v2.json, are read
# from the source tree); dependencies are all installed above.
COPY pyproject.toml README.md params.yaml dvc.yaml ./
COPY narrator ./narrator
COPY components ./components
COPY models ./models
COPY pipelines ./pipelines
COPY serving ./serving
COPY cli ./cli
RUN pip install --no-deps --no-build-isolation -e . \
 && narrator --help > /dev/null

# A non-root user with a fixed uid (numeric below, so Kubernetes runAsNonRoot can verify it) owning /work.
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/narrator --shell /bin/bash narrator \
 && mkdir -p /work \
 && cp /opt/narrator/params.yaml /work/params.yaml \
 && chown -R 1000:1000 /work
# GOMP_SPINCOUNT: torch's idle OpenMP workers spin briefly, then sleep, so a shared node's other processes do not
# collapse the decode (narrator/threads.py; the narrator command and the service set the same when it is unset)
ENV HOME=/home/narrator \
    GOMP_SPINCOUNT=2000
WORKDIR /work
USER 1000:1000

ENTRYPOINT ["narrator"]
CMD ["--help"]
