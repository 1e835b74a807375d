"""``make bench-contention``: search latency when the machine is shared (an LLM server, other requests).

On the scifact index (default model), k=10, measures retrieval (``search_embeddings`` on encoded queries, one query
per call) and end-to-end ``Index.search`` (encode + retrieve + fetch texts) p50/p95/p99 in four situations, with
the search run three ways interleaved query by query (order rotated): the library's default (``threads=None``: the
caller's count while a search runs alone on free cores, 1 thread while other searches of the process run or other
threads are runnable), always 1 thread, always 2 (the kernels' parallel variants):

- quiet: nothing else running (on a shared box: whatever else runs; say so);
- loaded: one CPU-bound process per core alongside (``python -c "while True: pass"``);
- oversubscribed: four per core;
- concurrent: 4 threads searching at once through one shared ``Index``.

Target (issue #37): loaded p95 and p99 of retrieval with the default within 3x of the quiet p95.

    python benchmarks/contention.py [--queries 300]

Writes benchmarks/results/contention.json (rendered into BENCHMARKS.md by render.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

from colbert_retriever import Index, SearchConfig  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries  # noqa: E402
from colbert_retriever.kernels import dispatch  # noqa: E402
from colbert_retriever.search import parallel  # noqa: E402

SITUATIONS = {"quiet": 0, "loaded": 1, "oversubscribed": 4, "concurrent": 0}
"""CPU-bound processes per core running alongside."""
POLICIES = {"default": None, "1_thread": 1, "2_threads": 2}


def percentiles(ms: list[float]) -> dict:
    return {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)} | {"max": round(max(ms), 2)}


def index_for(folder: Path, path: Path) -> Index:
    if (path / "metadata.json").exists():
        return Index.open(path)
    ids, texts, _ = load_corpus(folder)
    return Index.build(path, texts, ids=ids, model="default", show_progress=True)


def one_pass(index: Index, queries: list[str], Q: torch.Tensor, searchers: int = 1) -> dict:
    """Per policy, retrieval-only and end-to-end latencies of every query, the policies interleaved query by query
    (order rotated), spread over ``searchers`` threads; and how many threads the default chose."""
    lat = {name: {"retrieval": [], "end_to_end": []} for name in POLICIES}
    chose: dict[int, int] = {}
    lock = threading.Lock()

    def worker(part):
        for i in part:
            names = list(POLICIES)
            names = names[i % 3:] + names[: i % 3]
            for name in names:
                threads = POLICIES[name]
                tr = []
                t = time.perf_counter()
                index.search_embeddings(Q[i : i + 1], 10, config=SearchConfig(threads=threads), trace=tr)
                r = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                index.search(queries[i], k=10, threads=threads)
                e = (time.perf_counter() - t) * 1000
                with lock:
                    lat[name]["retrieval"].append(r)
                    lat[name]["end_to_end"].append(e)
                    if threads is None:
                        chose[tr[0].threads] = chose.get(tr[0].threads, 0) + 1

    parts = [list(range(j, len(queries), searchers)) for j in range(searchers)]
    ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out = {name: {"retrieval_ms": percentiles(v["retrieval"]), "end_to_end_ms": percentiles(v["end_to_end"])}
           for name, v in lat.items()}
    out["default"]["threads_chosen"] = {str(k): v for k, v in sorted(chose.items())}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--situations", default=",".join(SITUATIONS))
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
    dispatch.wait_for_kernels()  # the background compilation done: every search runs the numba kernels
    for i in range(10):  # warm (caches, pools)
        index.search(queries[i], k=10)
    cores = parallel.cpu_count()
    meta = index.metadata
    out = {"machine": machine_info(), "dataset": args.data, "queries": len(queries), "results": {},
           "index": {"folder": Path(index.path).name, "entries": len(index), "embeddings": meta["counts"]["embeddings"],
                     "pool_factor": meta.get("pooling", {}).get("pool_factor", 1)},
           "busy_processes_per_core": SITUATIONS, "runnable_at_start": {}}
    for situation in args.situations.split(","):
        per_core = SITUATIONS[situation]
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(per_core * cores)]
        try:
            if procs:
                time.sleep(1.0)
            out["runnable_at_start"][situation] = parallel.runnable_elsewhere()
            r = one_pass(index, queries, Q, searchers=4 if situation == "concurrent" else 1)
            out["results"][situation] = r
            print(situation, json.dumps(r), flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    res = out["results"]
    if "quiet" in res and "loaded" in res:
        quiet95 = res["quiet"]["default"]["retrieval_ms"]["p95"]
        loaded = res["loaded"]["default"]["retrieval_ms"]
        out["target"] = {"quiet_p95_ms": quiet95, "loaded_p95_x": round(loaded["p95"] / quiet95, 2),
                         "loaded_p99_x": round(loaded["p99"] / quiet95, 2),
                         "met": loaded["p95"] <= 3 * quiet95 and loaded["p99"] <= 3 * quiet95}
        print("target", json.dumps(out["target"]))
    write_json("contention.json", out)
    from render import render

    render()


if __name__ == "__main__":
    main()
