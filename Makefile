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

.PHONY: setup demo test test-all notebooks bench bench-scale bench-updates bench-single-adds bench-hybrid bench-contention bench-query-path bench-peers bench-fastplaid bench-colbert-ai bench-precision bench-coldstart bench-10m bench-distributed bench-serve clean

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

# the linter, the suite (numba kernels where numba imports), then the search tests once more on the torch kernels
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(PY) -m pytest -q --kernels torch tests/test_search.py tests/test_index.py tests/test_format.py \
		tests/test_hybrid.py tests/test_lifecycle.py

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

# a sharded index on local Ray (2 shards, builds with 1 and 2 workers) against one index with the same codec
bench-distributed: setup
	$(PY) benchmarks/distributed.py

# the HTTP server on 127.0.0.1: QPS and p50/p99 at 1, 4, 16, 64 clients, batched vs unbatched (bounded runs)
bench-serve: setup
	$(PY) benchmarks/serve.py

clean:
	rm -rf .demo_index build *.egg-info
