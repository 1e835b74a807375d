"""``make bench-updates``: what incremental updates cost as the collection grows (issue #13).

Indexes WordNet glosses (../shared/data/wordnet-glosses) at growing sizes and, at each size, in a fresh process:
RSS after ``Index.open`` + searches, 100 single-document ``add`` calls (time per add), RSS after them, search
latency with the segments the adds left, then after ``compact()`` (one segment). Uses only the public API, so the
same script measures an older checkout (``PYTHONPATH=old/checkout python benchmarks/updates.py --tag before``).
Writes benchmarks/results/updates-<tag>.json.

    python benchmarks/updates.py [--sizes 10000 30000 100000] [--adds 100] [--tag after]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, write_json  # noqa: E402


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _mem() -> dict:
    """RSS split into anonymous memory (heap: what a copy in RAM costs) and file-backed pages (memory maps: page
    cache the kernel can drop), from /proc/self/status."""
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "RssAnon", "RssFile")):
            key, val = line.split(":")
            out[key.strip()] = round(int(val.split()[0]) / 1024, 1)
    return out


def measure(path: str, adds: int, queries: list[str], new_texts: list[str]) -> dict:
    """Runs in a fresh process: open, search, many single-document adds, search again, compact."""
    import torch

    from colbert_retriever import ColBERT, Index

    model = ColBERT.default()
    Q = model.encode_queries(queries)
    rss_model = _rss_mb()
    mem_model = _mem()

    def latency(index) -> dict:
        lat = []
        for i in range(Q.shape[0]):
            t = time.perf_counter()
            index.search_embeddings(Q[i : i + 1], 10)
            lat.append((time.perf_counter() - t) * 1000)
        return percentiles(lat)

    t = time.perf_counter()
    index = Index.open(path, model=model)
    open_s = time.perf_counter() - t
    latency(index)  # warm
    out = {"open_s": round(open_s, 3), "rss_model_mb": round(rss_model, 1),
           "live": len(index), "segments_before": len(index.metadata["segments"])}
    out["latency_open_ms"] = latency(index)
    out["rss_after_open_mb"] = round(_rss_mb(), 1)
    out["mem_model"] = mem_model
    out["mem_after_open"] = _mem()
    times = []
    for i in range(adds):
        t = time.perf_counter()
        index.add([new_texts[i]], ids=[f"upd-{len(index)}-{i}"])
        times.append((time.perf_counter() - t) * 1000)
    out["add_ms"] = percentiles(times)
    out["add_ms_mean"] = round(float(np.mean(times)), 2)
    out["segments_after_adds"] = len(index.metadata["segments"])
    out["latency_after_adds_ms"] = latency(index)
    out["rss_after_adds_mb"] = round(_rss_mb(), 1)
    out["mem_after_adds"] = _mem()
    t = time.perf_counter()
    index.compact()
    out["compact_s"] = round(time.perf_counter() - t, 2)
    out["latency_after_compact_ms"] = latency(index)
    # search cost vs segment count: 19 more single-document adds with segment merging off (when the library
    # merges at all), i.e. 20 segments
    for i in range(19):
        index.add([new_texts[i]], ids=[f"seg20-{len(index)}-{i}"], merge=False)
    out["segments_curve"] = len(index.metadata["segments"])
    out["latency_20seg_ms"] = latency(index)
    out["torch_threads"] = torch.get_num_threads()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[10000, 30000, 100000])
    ap.add_argument("--adds", type=int, default=100)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--tag", default="after")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        job = json.loads(Path(args.measure).read_text())
        print(json.dumps(measure(**job)))
        return
    from colbert_retriever import ColBERT, Index
    from colbert_retriever.evaluation import load_corpus

    ids, texts, metas = load_corpus(SHARED / "wordnet-glosses")
    rng = random.Random(0)
    order = list(range(len(texts)))
    rng.shuffle(order)
    queries = [metas[i]["title"].split(",")[0].replace("_", " ") for i in rng.sample(range(len(texts)), args.queries)]
    spare = [texts[i] for i in order[max(args.sizes) :]]
    model = ColBERT.default()
    work = WORK / f"updates-{args.tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "wordnet"
    import colbert_retriever

    out = {"machine": machine_info(), "tag": args.tag, "library_file": colbert_retriever.__file__, "sizes": []}
    have = 0
    for n in args.sizes:
        t = time.perf_counter()
        sel = order[have:n]
        if have == 0:
            Index.build(path, [texts[i] for i in sel], ids=[ids[i] for i in sel], model=model, show_progress=False)
        else:
            Index.open(path, model=model).add([texts[i] for i in sel], ids=[ids[i] for i in sel])
        grow_s = time.perf_counter() - t
        have = n
        job = work / "job.json"
        job.write_text(json.dumps({"path": str(path), "adds": args.adds, "queries": queries,
                                   "new_texts": spare[: args.adds]}))
        spare = spare[args.adds :]
        env = dict(os.environ)
        res = subprocess.run([sys.executable, __file__, "--measure", str(job)], capture_output=True, text=True,
                             env=env, check=True)
        row = {"size": n, "grow_s": round(grow_s, 1), **json.loads(res.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        out["sizes"].append(row)
        write_json(f"updates-{args.tag}.json", out)


if __name__ == "__main__":
    main()
