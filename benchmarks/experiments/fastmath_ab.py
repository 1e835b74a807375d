"""Same-process A/B of the numba kernels compiled as they ship (no fast-math: every sum in the order written) against
the same kernels compiled with numba's ``fastmath=True`` (what they were compiled with before issue #36), on the
scifact index with the default model: per kernel (the query's tables, probed scoring, centroid interaction over
512 candidates, the exact stage over 128; one thread) and whole searches (``search_embeddings``, k=10, default
knobs), each query timed ``--repeats`` times per variant, interleaved and the order alternated, each query's
fastest kept. The fast-math set is compiled without numba's cache (its cache entries would share names with the
shipped kernels').

    python benchmarks/experiments/fastmath_ab.py [--queries 300] [--repeats 5] [--index PATH]

Writes benchmarks/results/fastmath_ab.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

from colbert_retriever import Index  # noqa: E402
from colbert_retriever.evaluation import load_qrels, load_queries  # noqa: E402
from colbert_retriever.kernels import dispatch, numba_drivers  # noqa: E402
from colbert_retriever.kernels.numba_kernels import KernelSet  # noqa: E402


def fast_jit(**opts):
    return numba.njit(**dict(opts, cache=False, fastmath=True))


def kernel_times(ks, arrays, Q, code, pids_ci, pids_ex) -> dict:
    """ms of each kernel for one query on one thread."""
    out = {}
    t = time.perf_counter()
    tab = numba_drivers.Tables.from_query(ks, Q, arrays.codec, code, 1)
    out["tables"] = time.perf_counter() - t
    t = time.perf_counter()
    numba_drivers.probed_scores(ks, tab.rows, tab.K, 8, 0.8, arrays)
    out["probed"] = time.perf_counter() - t
    t = time.perf_counter()
    numba_drivers.centroid_interaction(tab, arrays, pids_ci)
    out["centroid_interaction_512"] = time.perf_counter() - t
    tab.lut()
    t = time.perf_counter()
    numba_drivers.exact_scores(tab, arrays, pids_ex)
    out["exact_128"] = time.perf_counter() - t
    return {k: v * 1000 for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=WORK / "scifact-nbits2")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    index = Index.open(args.index)
    queries_all, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
    texts = [queries_all[q] for q in queries_all if q in qrels][: args.queries]
    Q = index.model.encode_queries(texts)
    rows = [q[q.abs().sum(1) > 0].contiguous() for q in Q]
    arrays = index.snapshot().arrays
    code = dispatch.numba_code_name(arrays.codes.parts[0])
    shipped, fast = dispatch.numba_kernel_set(), KernelSet(jit=fast_jit)
    widths = sorted({numba_drivers.kernel_width(numba_drivers.padded_width(len(r))) for r in rows},
                    key=lambda w: w or 0)
    for ks in (shipped, fast):
        ks.ensure(dispatch.numba_groups(code, widths, parallel=True))
    sets = {"no fast-math (shipped)": shipped, "fast-math": fast}
    g = torch.Generator().manual_seed(0)
    kernel = {name: [] for name in sets}
    search = {name: [] for name in sets}
    agree = 0
    for i, q in enumerate(rows):
        pids = torch.randperm(arrays.num_docs, generator=g)[:512].sort().values
        best_k = {name: None for name in sets}
        best_s = {name: float("inf") for name in sets}
        top = {}
        for r in range(args.repeats):
            for name in (list(sets) if (i + r) % 2 else list(sets)[::-1]):
                ks = sets[name]
                kt = kernel_times(ks, arrays, q, code, pids, pids[::4].contiguous())
                best_k[name] = kt if best_k[name] is None else {k: min(v, kt[k]) for k, v in best_k[name].items()}
                with dispatch.using_numba_kernels(ks):
                    tr = []
                    t = time.perf_counter()
                    hits = index.search_embeddings(q[None], 10, trace=tr)[0]
                    best_s[name] = min(best_s[name], (time.perf_counter() - t) * 1000)
                assert tr[0].kernels == "numba", tr[0]
                top[name] = [h.id for h in hits]
        for name in sets:
            kernel[name].append(best_k[name])
            search[name].append(best_s[name])
        agree += top["fast-math"] == top["no fast-math (shipped)"]
    out = {"machine": machine_info(), "index": str(args.index), "queries": len(rows), "repeats": args.repeats,
           "note": "shared 2-core VM: ratios within this run only", "kernels_p50_ms": {}, "search_ms": {},
           "top10_identical_share": round(agree / len(rows), 4)}
    for name in sets:
        out["kernels_p50_ms"][name] = {k: round(float(np.median([d[k] for d in kernel[name]])), 4)
                                       for k in kernel[name][0]}
        out["search_ms"][name] = {p: round(float(np.percentile(search[name], int(p[1:]))), 3)
                                  for p in ("p50", "p95")}
    a, b = out["kernels_p50_ms"]["no fast-math (shipped)"], out["kernels_p50_ms"]["fast-math"]
    out["ratio_shipped_over_fastmath"] = {k: round(a[k] / b[k], 3) for k in a}
    out["ratio_shipped_over_fastmath"]["search_p50"] = round(
        out["search_ms"]["no fast-math (shipped)"]["p50"] / out["search_ms"]["fast-math"]["p50"], 3)
    print(json.dumps(out, indent=1))
    write_json("fastmath_ab.json", out)


if __name__ == "__main__":
    main()
