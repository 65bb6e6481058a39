#!/usr/bin/env bash
# Installs everything (tools/install.sh), then runs the main job end to end on
# built-in data: builds the espeak-ng mini WSJ0-2mix corpus, trains a small
# Mamba-TasNet on CPU for a few minutes, separates the held-out mixtures,
# prints SI-SNRi / SDRi and writes the separated wavs.
# Extra arguments go to the demo (e.g. --minutes 1, --out DIR, --smoke).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh"
VENV="${SBMAMBA_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/python" -m speechbrain_mamba.demo.separation "$@"
