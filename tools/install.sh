#!/usr/bin/env bash
# Installs speechbrain-mamba and everything its tests and demos need into a
# virtual environment (default: .venv in the repository), plus the system
# packages espeak-ng and sox. Safe to run again: it only adds what is missing.
#
#   bash tools/install.sh            # CPU machine (torch CPU build)
#   SBMAMBA_EXTRAS=test,cuda bash tools/install.sh   # GPU machine
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SBMAMBA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${SBMAMBA_EXTRAS:-test}"

if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    echo "[install] apt-get install espeak-ng sox"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng sox >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

CONSTRAINTS=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
    CONSTRAINTS=(-c "$ROOT/tools/constraints-cpu.txt")
fi
echo "[install] pip install -e .[$EXTRAS]"
# (the sed drops pip's warnings about this machine's empty local indexes)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "${CONSTRAINTS[@]}" -e "$ROOT[$EXTRAS]" 2>&1 \
    | sed '/is ignored: it is neither a file nor a directory/d'
test "${PIPESTATUS[0]}" -eq 0
echo "[install] done: $VENV"
