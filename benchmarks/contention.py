"""``make bench-contention``: search latency when the machine is shared (an LLM server, other requests).

On the scifact index (default model), k=10, measures retrieval p50/p95 (``search_embeddings`` on encoded
queries) and end-to-end ``Index.search`` p50/p95 (encode + retrieve + fetch texts) in four situations, each with
the search run three ways side by side in one run: the library's default (``threads=None``: the caller's count
while a search runs alone on free cores, 1 thread while other searches of the process run, fewer when other
processes' threads are runnable), always 1 thread, always torch's count:

- idle;
- busy: one CPU-bound process per core running alongside;
- oversubscribed: four CPU-bound processes per core alongside (load ~8.5 on 2 cores);
- concurrent: 4 threads searching at once through one shared ``Index``.

Writes benchmarks/results/contention.json (rendered into BENCHMARKS.md by render.py).

    python benchmarks/contention.py [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, write_json  # noqa: E402

from colbert_retriever import Index, SearchConfig  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries  # noqa: E402

SITUATIONS = {"idle": 0, "busy": 1, "oversubscribed": 4, "concurrent": 0}
"""CPU-bound processes per core running alongside."""


def _spin(stop):
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def index_for(folder: Path, path: Path) -> Index:
    if (path / "metadata.json").exists():
        return Index.open(path)
    ids, texts, _ = load_corpus(folder)
    return Index.build(path, texts, ids=ids, model="default", show_progress=True)


def one_pass(index: Index, queries: list[str], Q: torch.Tensor, threads: int | None, searchers: int = 1) -> dict:
    """Retrieval-only and end-to-end latencies of every query, spread over ``searchers`` threads."""
    lat_r, lat_e = [], []
    lock = threading.Lock()
    cfg = SearchConfig(threads=threads)

    def worker(part):
        for i in part:
            t = time.perf_counter()
            index.search_embeddings(Q[i : i + 1], 10, config=cfg)
            r = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            index.search(queries[i], k=10, threads=threads)
            e = (time.perf_counter() - t) * 1000
            with lock:
                lat_r.append(r)
                lat_e.append(e)

    parts = [list(range(j, len(queries), searchers)) for j in range(searchers)]
    ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"retrieval_ms": percentiles(lat_r), "end_to_end_ms": percentiles(lat_e)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--index", type=Path, help="an existing index of --data built with the default model "
                    "(default: make bench's, else make bench-precision's, else one built here)")
    args = ap.parse_args(argv)
    folder = SHARED / args.data
    built = args.index or next((p for p in (WORK / f"{args.data}-nbits2", WORK / f"precision-{args.data}-bfloat16")
                                if (p / "metadata.json").exists()), WORK / f"{args.data}-nbits2")
    index = index_for(folder, built if (built / "metadata.json").exists() else WORK / f"contention-{args.data}")
    queries_all, qrels = load_queries(folder), load_qrels(folder)
    queries = [queries_all[q] for q in queries_all if q in qrels][: args.queries]
    Q = index.model.encode_queries(queries)
    index.search(queries[0], k=10)  # warm
    cores = torch.get_num_threads()
    out = {"machine": machine_info(), "dataset": args.data, "queries": len(queries), "results": {},
           "busy_processes_per_core": SITUATIONS}
    for situation, per_core in SITUATIONS.items():
        stop = mp.Event()
        procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(per_core * cores)]
        for p in procs:
            p.start()
        if procs:
            time.sleep(1.0)
        try:
            for label, threads in (("default", None), ("1_thread", 1), ("torch_threads", cores)):
                r = one_pass(index, queries, Q, threads, searchers=4 if situation == "concurrent" else 1)
                out["results"].setdefault(situation, {})[label] = r
                print(situation, label, json.dumps(r), flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join()
    write_json("contention.json", out)
    from render import render

    render()


if __name__ == "__main__":
    main()
