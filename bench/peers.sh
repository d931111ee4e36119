#!/usr/bin/env bash
# The peer engines bench/versus.py measures (bench/adapters/), each in its own virtual environment, pinned:
#   genie-tts 2.0.2, gpt-sovits-cpufast 0.1.0, gsv-tts-lite 0.4.7, each beside CPU torch 2.13.0.
#   bash bench/peers.sh [DIR [NAME ...]]   # default DIR: /work/venvs, NAME: all three; PYTHON: base interpreter
# then, for example:
#   python -m bench.versus --official GPT-SoVITS --official-python PY \
#       --peer genie-tts=DIR/genie-tts/bin/python --peer gpt-sovits-cpufast=DIR/gpt-sovits-cpufast/bin/python \
#       --peer gsv-tts-lite=DIR/gsv-tts-lite/bin/python
# torch is installed first and pinned while the package installs (a pip constraint), so the package cannot pull
# another torch (and gigabytes of CUDA wheels with it). Where pip's index serves CUDA builds of torch (plain PyPI on
# Linux), set TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build. An existing environment is
# reused and brought to the pins. Not installed: torchaudio, which gsv-tts-lite imports but the measured path never
# calls (bench/adapters/gsv_tts_lite.py explains).
set -euo pipefail
DIR="${1:-/work/venvs}"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
declare -A PEERS=([genie-tts]="genie-tts==2.0.2" [gpt-sovits-cpufast]="gpt-sovits-cpufast==0.1.0"
                  [gsv-tts-lite]="gsv-tts-lite==0.4.7")
mkdir -p "$DIR"
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "$TORCH" > "$constraint"
names=("${@:2}")
[ ${#names[@]} -gt 0 ] || names=(genie-tts gpt-sovits-cpufast gsv-tts-lite)
for name in "${names[@]}"; do
    [ -n "${PEERS[$name]:-}" ] || { echo "unknown peer: $name (known: ${!PEERS[*]})" >&2; exit 2; }
    venv="$DIR/$name"
    echo "== $name -> $venv"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q -U pip
    "$venv/bin/pip" install -q "$TORCH" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    "$venv/bin/pip" install -q -c "$constraint" "${PEERS[$name]}"
    "$venv/bin/python" -c "import torch; print('  torch', torch.__version__)"
    "$venv/bin/pip" show "${PEERS[$name]%%==*}" | sed -n 's/^Version: /  version /p'
done
