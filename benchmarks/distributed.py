"""Distributed build and sharded search on a local Ray cluster: build time with 1 vs 2 workers for 30k WordNet
glosses, and search latency of a single index vs 2 shards. Writes benchmarks/results/distributed.json.

    python benchmarks/distributed.py [--passages 30000] [--queries 100]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, write_json  # noqa: E402

from colbert_retriever import ColBERT, Index  # noqa: E402
from colbert_retriever.distributed.sharded import ShardedIndex, build_sharded  # noqa: E402
from colbert_retriever.evaluation import load_corpus  # noqa: E402


def main(argv=None):
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=30000)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args(argv)
    ids, texts, metas = load_corpus(SHARED / "wordnet-glosses")
    rng = random.Random(0)
    sel = rng.sample(range(len(texts)), args.passages)
    texts, ids = [texts[i] for i in sel], [ids[i] for i in sel]
    queries = [metas[i]["title"].split(",")[0].replace("_", " ") for i in rng.sample(range(len(metas)), args.queries)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {"machine": machine_info(), "passages": args.passages}
    for workers in (1, 2):
        path = WORK / f"sharded-{workers}w"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        build_sharded(path, texts, ids=ids, model="default", num_shards=2, num_workers=workers,
                      threads_per_worker=2 // workers)
        out[f"build_s_{workers}_workers"] = round(time.perf_counter() - t, 1)
        print(out, flush=True)
    model = ColBERT.default()
    single_path = WORK / "sharded-single"
    shutil.rmtree(single_path, ignore_errors=True)
    t = time.perf_counter()
    single = Index.build(single_path, texts, ids=ids, model=model, show_progress=False)
    out["build_s_single_index_in_process"] = round(time.perf_counter() - t, 1)
    sharded = ShardedIndex.open(WORK / "sharded-2w", model=model)
    for name, idx in (("single", single), ("2_shards", sharded)):
        idx.search(queries[0], k=10)
        lat = []
        for q in queries:
            t = time.perf_counter()
            idx.search(q, k=10)
            lat.append((time.perf_counter() - t) * 1000)
        out[f"search_ms_incl_encoding_{name}"] = percentiles(lat)
    agree = []
    for q in queries:
        a = {h.id for h in sharded.search(q, k=10)}
        b = {h.id for h in single.search(q, k=10)}
        agree.append(len(a & b) / 10)
    out["top10_overlap_sharded_vs_single"] = round(float(np.mean(agree)), 4)
    sharded.close()
    print(out)
    write_json("distributed.json", out)


if __name__ == "__main__":
    main()
