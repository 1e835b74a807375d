"""``make bench-scale``: index 10k, 30k and 100k WordNet glosses (../shared/data/wordnet-glosses, unjudged) and
report build time, index size and search latency at each size, plus a latency-vs-agreement curve over PLAID knobs
on the largest index. Writes benchmarks/results/scale.json, two PNG plots and BENCHMARKS.md.

    python benchmarks/scale.py [--sizes 10000 30000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import gc
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SHARED, WORK, PeakRSS, folder_bytes, machine_info, percentiles,  # noqa: E402
                    wordnet_sample, write_json)

from colbert_retriever import ColBERT, Index, SearchConfig  # noqa: E402
from colbert_retriever.evaluation import load_corpus  # noqa: E402

CURVE = [(None, None, None), (1, 0.5, 256), (2, 0.45, 512), (4, 0.4, 1024), (8, 0.4, 2048), (12, 0.4, 2048),
         (12, 0.4, 4096), (16, 0.4, 4096), (16, 0.4, 8192), (8, None, 512), (24, None, 2048), (24, None, 4096)]
"""(ncells, centroid_score_threshold, ndocs); all None: the adaptive default (colbert_retriever.search.plaid.plan); a
threshold of None with other knobs set: probed scoring (the default stage 2) at those knobs."""


def timed_searches(index, Q, k: int, cfg: SearchConfig = SearchConfig()) -> tuple[list[set], list[float]]:
    """One query per call over the rows of Q: each query's hit ids and its latency in ms."""
    got, ms = [], []
    for i in range(Q.shape[0]):
        t = time.perf_counter()
        hits = index.search_embeddings(Q[i : i + 1], k, config=cfg)[0]
        ms.append((time.perf_counter() - t) * 1000)
        got.append({h.id for h in hits})
    return got, ms


def agreement(index, Q, cfg: SearchConfig, ref) -> tuple[float, float]:
    got, lat = timed_searches(index, Q, 10, cfg)
    agree = [len(g & r) / max(1, len(r)) for g, r in zip(got, ref)]
    return round(float(np.mean(agree)), 4), round(float(np.percentile(lat, 50)), 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[10000, 30000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--reuse", action="store_true",
                    help="search the indexes an earlier run left in benchmarks/work (its build figures are kept "
                         "from the previous scale.json); re-measures the query side only")
    args = ap.parse_args(argv)
    previous, previous_date = {}, "an earlier run"
    if args.reuse and (RESULTS / "scale.json").exists():
        prev_run = json.loads((RESULTS / "scale.json").read_text())
        previous = {r["passages"]: r for r in prev_run["sizes"]}
        previous_date = prev_run.get("machine", {}).get("date", previous_date)
    ids, texts, metas = load_corpus(SHARED / "wordnet-glosses")
    order, queries = wordnet_sample(metas, args.queries)
    model = ColBERT.default()
    Q = model.encode_queries(queries)
    WORK.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine_info(), "sizes": [], "queries": len(queries)}
    index = None
    for n in args.sizes:
        sel = order[:n]
        path = WORK / f"wordnet-{n}"
        index = None
        gc.collect()
        reused = args.reuse and n in previous and (path / "metadata.json").exists()
        if reused:
            index = Index.open(path, model=model)
        else:
            shutil.rmtree(path, ignore_errors=True)
            with PeakRSS() as peak:
                t = time.perf_counter()
                index = Index.build(path, [texts[i] for i in sel], ids=[ids[i] for i in sel], model=model,
                                    show_progress=False)
                build = time.perf_counter() - t
        meta = index.metadata
        # the first pass after open (or after the build) pays first-touch page faults of the memory-mapped arrays
        # and the kernels' first calls: reported apart; the table's latencies are the passes after it
        first = timed_searches(index, Q, 10)[1]
        lat = {str(k): percentiles(timed_searches(index, Q, k)[1]) for k in (10, 100, 1000)}
        t = time.perf_counter()
        for s in range(0, Q.shape[0], 32):
            index.search_embeddings(Q[s : s + 32], 10)
        batch = (time.perf_counter() - t) * 1000 / Q.shape[0]
        ref = [{h.id for h in index.search_embeddings(Q[i : i + 1], 10, config=SearchConfig(exhaustive=True))[0]}
               for i in range(min(100, Q.shape[0]))]
        agree, _ = agreement(index, Q[: len(ref)], SearchConfig(), ref)
        seg = sum((path / f"{s['name']}.{p}.npy").stat().st_size - 128 for s in meta["segments"]
                  for p in ("codes", "residuals"))
        if reused:
            kept = {key: previous[n][key] for key in ("build_s", "docs_per_s", "peak_rss_mb_build")}
            kept["build_reused_from"] = previous[n].get("build_reused_from", previous_date)
        else:
            kept = {"build_s": round(build, 2), "docs_per_s": round(n / build, 1), "peak_rss_mb_build": peak.peak_mb}
        row = {"passages": n, "embeddings": meta["counts"]["embeddings"], **kept,
               "build_stages_s": meta["provenance"]["stages"],
               "num_centroids": meta["codec"]["num_centroids"], "index_bytes": folder_bytes(path),
               "bytes_per_token": round(seg / meta["counts"]["embeddings"], 2),
               "latency_ms_excl_encoding": lat, "k10_first_pass_ms": percentiles(first),
               "batch32_ms_per_query": round(batch, 2), "agreement_at_10": agree}
        out["sizes"].append(row)
        print(row, flush=True)
    # latency-vs-agreement curve on the largest index
    ref = [{h.id for h in index.search_embeddings(Q[i : i + 1], 10, config=SearchConfig(exhaustive=True))[0]}
           for i in range(min(100, Q.shape[0]))]
    out["curve_passages"] = args.sizes[-1]
    out["curve"] = []
    for nc, thr, nd in CURVE:
        a, p50 = agreement(index, Q[: len(ref)], SearchConfig(nc, thr, nd), ref)
        probed = nc is not None and thr is None
        out["curve"].append({"ncells": nc or "default", "threshold": "none (probed)" if probed else thr or "default",
                             "ndocs": nd or "default",
                             "agreement": a, "p50_ms": p50})
        print(out["curve"][-1], flush=True)
    write_json("scale.json", out)
    plot(out)
    from render import render

    render()


def plot(out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sizes = [r["passages"] for r in out["sizes"]]
    for k in ("10", "100", "1000"):
        ax.plot(sizes, [r["latency_ms_excl_encoding"][k]["p50"] for r in out["sizes"]], "o-", label=f"k={k}")
    ax.set_xscale("log")
    ax.set_xlabel("passages")
    ax.set_ylabel("p50 latency, ms (excl. encoding)")
    ax.legend()
    ax.set_title("PLAID latency vs collection size")
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_vs_size.png", dpi=110)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["p50_ms"] for c in out["curve"]], [c["agreement"] for c in out["curve"]], "o")
    for c in out["curve"]:
        label = "default" if c["ncells"] == "default" else f"{c['ncells']}/{c['threshold']}/{c['ndocs']}"
        ax.annotate(label, (c["p50_ms"], c["agreement"]), fontsize=6)
    ax.set_xlabel("p50 latency, ms (excl. encoding)")
    ax.set_ylabel("top-10 agreement with exhaustive")
    ax.set_title(f"latency vs agreement, {out['curve_passages']} passages")
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_vs_agreement.png", dpi=110)


if __name__ == "__main__":
    main()
