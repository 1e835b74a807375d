"""Sharded index on one box (local Ray): the streaming build with 1 and 2 encoder workers, and search over 2 shards
against one index with the same codec and documents: latency, the fan-out overhead (the driver's time for a
search less the slowest shard's own time for it), and whether the answers are the same. Writes
benchmarks/results/distributed.json.

    python benchmarks/distributed.py [--passages 10000] [--queries 200]

WordNet glosses (the scale benchmark's draw), the default model; the collection is streamed from a JSONL file; the
driver encodes the codec's sample (--sample-documents) and the encoder pool the rest.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, wordnet_sample, write_json  # noqa: E402

from colbert_retriever import Index, SearchConfig, load_model  # noqa: E402
from colbert_retriever.distributed import ShardedIndex, build_sharded  # noqa: E402
from colbert_retriever.distributed import manifest as mf  # noqa: E402
from colbert_retriever.evaluation import load_corpus  # noqa: E402
from colbert_retriever.search.retrieval import Request, query_rows  # noqa: E402

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback (127.0.0.1) only


def pct(xs) -> dict:
    return {"p50": round(float(np.percentile(xs, 50)), 3), "p95": round(float(np.percentile(xs, 95)), 3),
            "p99": round(float(np.percentile(xs, 99)), 3), "mean": round(float(np.mean(xs)), 3)}


def fan_out(sh: ShardedIndex, single: Index, Q, rounds: int) -> dict:
    """Per query, alternating sharded and single (same query embeddings): the driver's wall time of a sharded
    search, the slowest shard's own time for it (measured in the shard), and the single index's time."""
    import ray

    req = Request.make(10)
    names = [s["name"] for s in sh.metadata["shards"]]
    wall, slowest, single_ms, overhead = [], [], [], []
    for r in range(rounds):
        for q in Q:
            rows = query_rows(q[None], sh.model.config.dim, q.device)
            order = ("sharded", "single") if r % 2 == 0 else ("single", "sharded")
            for which in order:
                t = time.perf_counter()
                if which == "single":
                    single.search_embeddings(q[None], 10)
                    single_ms.append((time.perf_counter() - t) * 1000)
                    continue
                futures = [sh._actor(n).colbert_hits.remote(rows, req, False) for n in names]
                answers = ray.get(futures)
                merged = sorted((h for _, (hits, _, _) in answers for h in hits[0]), key=lambda h: -h.score)[:10]
                ms = (time.perf_counter() - t) * 1000
                assert len(merged) == 10
                own = max(a[1][2] for a in answers) * 1000
                wall.append(ms)
                slowest.append(own)
                overhead.append(ms - own)
    return {"sharded_ms": pct(wall), "slowest_shard_ms": pct(slowest), "fan_out_overhead_ms": pct(overhead),
            "single_index_ms": pct(single_ms), "searches": len(wall)}


def same_answers(sh: ShardedIndex, single: Index, queries: list, **kw) -> dict:
    got, want = sh.search(queries, k=10, **kw), single.search(queries, k=10, **kw)
    ids_same = sum([h.id for h in a] == [h.id for h in b] for a, b in zip(got, want))
    sets_same = sum({h.id for h in a} == {h.id for h in b} for a, b in zip(got, want))
    diff = max(abs(x.score - y.score) for a, b in zip(got, want) for x, y in zip(a, b))
    return {"queries": len(queries), "same_top10_order": ids_same, "same_top10_set": sets_same,
            "max_score_difference": float(diff)}


def main(argv=None):
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32",
                    help="documents' precision on both sides (float32: the same embeddings whatever the batch; "
                         "bfloat16, the bf16-CPU default, changes them with the batch's shape)")
    ap.add_argument("--sample-documents", type=int, default=2048,
                    help="documents the driver encodes for the codec (the encoder pool encodes the rest)")
    args = ap.parse_args(argv)
    ids, texts, metas = load_corpus(SHARED / "wordnet-glosses")
    order, queries = wordnet_sample(metas, args.queries)
    keep = order[: args.passages]
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"wordnet-{args.passages}.jsonl"
    data.write_text("".join(json.dumps({"_id": ids[i], "text": texts[i]}) + "\n" for i in keep))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=400 * 2**20)
    out = {"machine": machine_info(), "pool_factor": 1, "passages": args.passages, "queries": args.queries, "shards": 2,
           "sample_documents": args.sample_documents, "dtype": args.dtype,
           "note": "One box shared with other engineers' jobs while measured; the lead reruns on a quiet box."}
    for workers in (1, 2):
        path = WORK / f"sharded-{workers}w"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        build_sharded(path, data, num_shards=2, num_workers=workers, threads_per_worker=2 // workers,
                      sample_documents=args.sample_documents, dtype=args.dtype, show_progress=False)
        out[f"build_s_{workers}_workers"] = round(time.perf_counter() - t, 1)
        print({k: v for k, v in out.items() if k.startswith("build")}, flush=True)
    root = WORK / "sharded-2w"
    m = mf.read(root)
    model = load_model("default", dtype=args.dtype)
    single_path = WORK / "sharded-single"
    shutil.rmtree(single_path, ignore_errors=True)
    t = time.perf_counter()
    single = Index.build(single_path, [texts[i] for i in keep], ids=[ids[i] for i in keep], model=model,
                         codec=mf.load_codec(root, m.codec), codec_config=mf.codec_config(m.codec),
                         show_progress=False, pool_factor=1)  # as the shards (a sharded index is not pooled)
    out["build_s_single_index_in_process_same_codec"] = round(time.perf_counter() - t, 1)
    with ShardedIndex.open(root, model=model) as sh:
        Q = model.encode_queries(queries)
        fan_out(sh, single, Q[:10], 1)  # warm-up: numba in every shard, the caches
        out["search_k10"] = fan_out(sh, single, Q, args.rounds)
        out["answers_default_plaid"] = same_answers(sh, single, queries)
        out["answers_exhaustive"] = same_answers(sh, single, queries, exhaustive=True)
        t = time.perf_counter()
        sh.search(queries, k=10)
        out["batched_search_ms_per_query_incl_encoding"] = round((time.perf_counter() - t) * 1000 / len(queries), 3)
        out["exhaustive_config"] = SearchConfig(exhaustive=True).to_dict()
    single.close()
    print(json.dumps(out, indent=1))
    write_json("distributed.json" if args.dtype == "float32" else f"distributed_{args.dtype}.json", out)
    ray.shutdown()


if __name__ == "__main__":
    main()
