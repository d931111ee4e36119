#!/usr/bin/env bash
# Sets up everything Narrator needs on a fresh Debian/Ubuntu machine: system tools and a virtual environment.
# Idempotent: a second run only checks. Called by `make` targets; safe to run by hand.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
for tool in espeak-ng ffmpeg sox redis-server; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
# PostgreSQL for the `services` tests (and a registry/audit store at scale); Debian keeps it off PATH.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[setup] error: ${need_apt[*]} missing and no root/sudo to install them; install them with your package manager" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.narrator-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "[setup] creating virtual environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
# torch first, pinned: the CPU build; anything else pulls gigabytes of CUDA wheels.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
touch "$stamp"
echo "[setup] done"
