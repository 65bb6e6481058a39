#!/usr/bin/env bash
# Installs everything (tools/install.sh) and runs the whole test suite:
# style checks, unit tests, doctests and end-to-end recipe runs on the
# built-in mini corpora. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh"
VENV="${SBMAMBA_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q "$@"
