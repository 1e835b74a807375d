#!/usr/bin/env bash
# fast-plaid's own virtualenv for benchmarks/fastplaid.py: fast-plaid 1.7.0.2110 pins torch 2.11.0 (pip brings
# that wheel and its CUDA libraries from PyPI: ~4.8 GB installed), so it cannot share ours (torch 2.13).
# Usage: benchmarks/peers/setup_fastplaid.sh [VENV]   (default benchmarks/work/fastplaid-venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/benchmarks/work/fastplaid-venv}"
STAMP="$VENV/.fastplaid-installed"
if [[ -f "$STAMP" ]]; then exit 0; fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "fast-plaid==1.7.0.2110" numpy
touch "$STAMP"
