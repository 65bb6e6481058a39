#!/usr/bin/env bash
# Installs everything (tools/install.sh), then runs the main job end to end on
# built-in data: builds a mini WSJ0-2mix corpus (Festival and espeak-ng
# voices), separates its held-out mixtures (unseen speakers) with the shipped
# Mamba-TasNet S, prints SI-SNRi / SDRi / PESQ / STOI, writes the wavs and a
# spectrogram, then trains a small Mamba-TasNet from scratch for a minute.
# Extra arguments go to the demo (e.g. --num-test 48, --out DIR, --smoke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh"
VENV="${SBMAMBA_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/python" -m speechbrain_mamba.demo.separation "$@"
