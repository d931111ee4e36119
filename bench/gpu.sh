#!/usr/bin/env bash
# Every GPU figure in one call (bench/gpu.py): GPT tokens/s, SoVITS and sentence RTF, time to first audio at 1/8/32
# concurrent streams, fine-tuning steps/s. Under 8 minutes on one H100; without CUDA it runs the tiny CPU fallback.
#   bash bench/gpu.sh            # NARRATOR_BENCH_SMALL=1 forces the tiny models; PYTHON picks the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
args=("$@")
if [ "${NARRATOR_BENCH_SMALL:-0}" = 1 ]; then args+=(--small); fi
exec timeout "${BENCH_GPU_TIMEOUT_S:-480}" "$PYTHON" -m bench.gpu "${args[@]}"
