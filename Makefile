# The README's commands. Each sets itself up on a fresh machine: a .venv (unless a virtualenv is active),
# torch 2.13.0 first (the CPU wheel; a looser spec pulls a multi-GB CUDA build), then this package, editable.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
STAMP := $(VIRTUAL_ENV)/.colbert-retriever-installed
else
PY := .venv/bin/python
STAMP := .venv/.colbert-retriever-installed
endif
TORCH := torch==2.13.0
EXTRAS := default-model,langchain,llama-index,triton,bench,distributed,serve,dev
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-isa test-all notebooks bench bench-scale bench-updates bench-single-adds bench-hybrid bench-contention bench-query-path bench-peers bench-fastplaid bench-colbert-ai bench-precision bench-coldstart bench-10m bench-100m bench-pooling bench-encode bench-distributed bench-serve clean

$(PY):
	python3 -m venv .venv

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH)"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m colbert_retriever.cli.demo

# The instruction-set passes (tests/isa.py; each starts by checking that torch, oneDNN, MKL and numba run capped):
# AVX2 (what an AVX2-only CPU runs; NUMBA_CPU_FEATURES= drops the host's AVX-512 flags that NUMBA_CPU_NAME keeps),
# and ATen's scalar kernels.
ISA_AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 NUMBA_CPU_NAME=haswell \
	NUMBA_CPU_FEATURES= COLBERT_RETRIEVER_CPU_BF16=0
ISA_DEFAULT := ATEN_CPU_CAPABILITY=default
# the AVX2 pass runs the suite but what cannot depend on the instruction set or repeats the suite's calls: the
# notebooks and README blocks, static checks, SIGKILL and lock tests (files and processes), Ray and Serve, the
# metrics checked against ranx (rank arithmetic; ranx's numba functions would recompile for haswell), and the kernel
# determinism and fallback tests (their children already compile for haswell and skylake-avx512 in the native pass)
ISA_AVX2_SKIP := --ignore=tests/test_readme.py --ignore=tests/test_layering.py --ignore=tests/test_deprecations.py \
	--ignore=tests/test_crash.py --ignore=tests/test_concurrency.py --ignore=tests/distributed --ignore=tests/serve \
	--ignore=tests/test_evaluation.py --ignore=tests/test_kernels_determinism.py --ignore=tests/test_kernels_fallback.py
# the scalar pass: the tests that compare two computations (encode paths, codecs, dtypes, kernels, PLAID and
# exhaustive search), and the encoder's
ISA_DEFAULT_TESTS := tests/test_isa.py tests/test_embedded.py tests/test_encoder.py tests/test_precision.py \
	tests/test_codec.py tests/test_scoring.py tests/test_search.py tests/test_lifecycle.py tests/test_hybrid.py

# the linter, the suite (numba kernels where numba imports), the search tests once more on the torch kernels, then
# the instruction-set passes
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --isa native
	$(PY) -m pytest -q --isa native --kernels torch tests/test_search.py tests/test_index.py tests/test_format.py \
		tests/test_hybrid.py tests/test_lifecycle.py
	$(MAKE) --no-print-directory test-isa

# the suite capped to AVX2, then a short pass on ATen's scalar kernels (CONTRIBUTING.md: by hand, one test)
test-isa: setup
	env $(ISA_AVX2) $(PY) -m pytest -q --isa avx2 tests $(ISA_AVX2_SKIP)
	env $(ISA_DEFAULT) $(PY) -m pytest -q --isa default $(ISA_DEFAULT_TESTS)

test-all: setup
	$(PY) -m pytest -q -m "not gpu"

notebooks: setup
	$(PY) notebooks/execute.py

bench: setup
	$(PY) benchmarks/run.py

bench-scale: setup
	$(PY) benchmarks/scale.py

bench-updates: setup
	$(PY) benchmarks/updates.py

bench-single-adds: setup
	$(PY) benchmarks/single_adds.py

bench-hybrid: setup
	$(PY) benchmarks/hybrid.py

bench-contention: setup
	$(PY) benchmarks/contention.py

bench-query-path: setup
	$(PY) benchmarks/query_path.py

# the peers, each in its own virtualenv: fast-plaid 1.7 (pins torch 2.11) fed our model's embeddings, and colbert-ai
# 0.2.22 (wants transformers 4.57; compiles its C++ extensions at first use)
PEERS_VENV := benchmarks/work/peers-venv
bench-peers: bench-fastplaid bench-colbert-ai

bench-fastplaid: setup
	bash benchmarks/peers/setup_fastplaid.sh
	$(PY) benchmarks/fastplaid.py

bench-colbert-ai:
	bash benchmarks/peers/setup.sh $(PEERS_VENV)
	$(PEERS_VENV)/bin/python benchmarks/peers.py

bench-precision: setup
	$(PY) benchmarks/precision.py

bench-coldstart: setup
	$(PY) benchmarks/coldstart.py

# 10M token embeddings built through the embeddings API (about an hour on 2 cores, ~3 GB of disk under
# benchmarks/work)
bench-10m: setup
	$(PY) benchmarks/tokens10m.py

# 1M -> 100M token embeddings through the embeddings API, then updates at scale on the 100M index with a reader
# searching throughout (about an hour on 2 quiet cores; ~9 GB of disk under benchmarks/work at the peak)
bench-100m: setup
	$(PY) benchmarks/tokens100m.py

# token pooling at factors 1-4 on scifact, cranfield, cisi (each corpus encoded once, cached)
bench-pooling: setup
	$(PY) benchmarks/pooling.py

# document encoding throughput in float32 on this CPU and capped to AVX2 (tokens/s, fraction of the FMA peak)
bench-encode: setup
	$(PY) benchmarks/encode.py

# a sharded index on local Ray (2 shards, builds with 1 and 2 workers) against one index with the same codec
bench-distributed: setup
	$(PY) benchmarks/distributed.py

# the HTTP server on 127.0.0.1: QPS and p50/p99 at 1, 4, 16, 64 clients, batched vs unbatched (bounded runs)
bench-serve: setup
	$(PY) benchmarks/serve.py

clean:
	rm -rf .demo_index build *.egg-info
