#!/usr/bin/env bash
# The official GPT-SoVITS code that bench/versus.py measures against, at the pinned commit, with an interpreter
# holding just what its inference classes import (CPU torch 2.13.0 first, so pip pulls no CUDA wheels):
#   bash bench/official.sh [DIR]     # default DIR: ./official-gpt-sovits (checkout in DIR/src, venv in DIR/venv)
# then:
#   python -m bench.versus --official DIR/src --official-python DIR/venv/bin/python
# A measuring stick only: the product never imports it. Set TORCH_INDEX=https://download.pytorch.org/whl/cpu where
# pip's index would serve a CUDA build of torch.
set -euo pipefail
DIR="${1:-official-gpt-sovits}"
COMMIT=48b1a016
PYTHON="${PYTHON:-python3}"
mkdir -p "$DIR"
if [ ! -d "$DIR/src/.git" ]; then
    git clone --quiet https://github.com/RVC-Boss/GPT-SoVITS "$DIR/src"
fi
git -C "$DIR/src" checkout --quiet "$COMMIT"
[ -x "$DIR/venv/bin/python" ] || "$PYTHON" -m venv "$DIR/venv"
pip=("$DIR/venv/bin/python" -m pip install -q)
[ -z "${TORCH_INDEX:-}" ] || pip+=(--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple)
"${pip[@]}" torch==2.13.0
"$DIR/venv/bin/python" -m pip install -q torchmetrics==1.9.0 x-transformers==2.31.10 einops==0.8.2 librosa==0.11.0 \
    tqdm numpy scipy
echo "official GPT-SoVITS $COMMIT in $DIR/src; interpreter $DIR/venv/bin/python"
