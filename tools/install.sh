#!/usr/bin/env bash
# Installs speechbrain-mamba and everything its tests and demos need into a
# virtual environment (default: .venv in the repository), plus the system
# packages espeak-ng, sox and Festival with its voices (recordings of real
# speakers, used by the mini separation corpora). Safe to run again: it only
# adds what is missing.
#
#   bash tools/install.sh            # CPU machine (torch CPU build)
#   SBMAMBA_EXTRAS=test,cuda bash tools/install.sh   # GPU machine
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SBMAMBA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${SBMAMBA_EXTRAS:-test}"

# Festival voices of the mini separation corpora (speechbrain_mamba/data/
# festival.py lists them); the Indian-language NSK voices crash on English.
SYSTEM_PACKAGES=(espeak-ng sox festival festvox-kallpc16k festvox-kdlpc16k
    festvox-us-slt-hts festvox-ca-ona-hts festvox-suopuhe-lj
    festvox-suopuhe-mv festvox-itapc16k festvox-italp16k festvox-ru
    festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph)
MISSING=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || MISSING+=("$pkg")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        echo "[install] apt-get install ${MISSING[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null
    elif ! command -v espeak-ng >/dev/null 2>&1; then
        echo "[install] please install espeak-ng, sox and Festival (no apt-get here)" >&2
        exit 1
    else
        echo "[install] no apt-get: Festival voices missing (${MISSING[*]}); the mini separation corpora use espeak-ng only" >&2
    fi
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
