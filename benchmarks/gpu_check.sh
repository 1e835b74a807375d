#!/usr/bin/env bash
# The GPU checks in one go (what a session with a lent CUDA machine runs; see CONTRIBUTING.md):
# the gpu-marked tests (compiled Triton vs the torch twins) and benchmarks/gpu.py. Results under ${OUT:-.}.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_machine.txt"
(grep -m1 "model name" /proc/cpuinfo; for f in avx2 avx512f avx512_bf16 amx_bf16 amx_tile; do grep -qw $f /proc/cpuinfo && echo "cpu flag: $f"; done) >> "$OUT/gpu_machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu_machine.txt"
# the package as users get it (setuptools maps integrations/ and triton_kernels/ under colbert_retriever)
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
python3 -m pytest -m gpu tests/gpu -o addopts="" -p no:cacheprovider -q -rs 2>&1 | tee "$OUT/gpu_tests.log"
timeout 300 python3 benchmarks/gpu.py 2>&1 | tail -20 | tee "$OUT/gpu_bench.log"
cp benchmarks/results/gpu.json "$OUT/" 2>/dev/null || true
