"""Same-process A/B of search against the previous release's code (issue #25: the house must not slow search
down or change its answers). The previous code (a git revision, default the last commit before this release's
work) is extracted under another package name, both open the same index, and the queries are interleaved between
them (order alternated) with the same query embeddings (this release's encoder): retrieval p50/p95
(``search_embeddings``, k=10, default knobs) and top-10 agreement between the two; then end-to-end
``Index.search(text)`` (each release's own encoder).

    python benchmarks/experiments/ab_release.py [--rev 6009ad5] [--index PATH] [--queries 300] [--out NAME]
                                                [--repeats N]

``--repeats N`` times each query N times per library (interleaved) and keeps each query's fastest: on a VM whose
speed drifts by tens of percent within minutes, the per-query minimum compares code, not the neighbours' load.

Writes benchmarks/results/ab_release.json (or NAME).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, SHARED, WORK, machine_info, percentiles, write_json  # noqa: E402

from colbert_retriever import Index  # noqa: E402
from colbert_retriever.evaluation import load_qrels, load_queries  # noqa: E402


def old_package(rev: str, where: Path):
    subprocess.run(f"git -C {ROOT} archive {rev} colbert_retriever | tar -x -C {where}", shell=True, check=True)
    (where / "colbert_retriever").rename(where / "colbert_retriever_previous")
    for f in (where / "colbert_retriever_previous").rglob("*.py"):  # its lazy absolute imports (kernels) too
        f.write_text(f.read_text().replace("from colbert_retriever.", "from colbert_retriever_previous.")
                     .replace("from colbert_retriever import", "from colbert_retriever_previous import"))
    sys.path.insert(0, str(where))
    return importlib.import_module("colbert_retriever_previous")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="6009ad5")
    ap.add_argument("--index", type=Path, default=WORK / "precision-scifact-bfloat16")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--out", default="ab_release.json", help="results file name under benchmarks/results")
    ap.add_argument("--repeats", type=int, default=1, help="time each query this many times, keep the fastest")
    args = ap.parse_args(argv)
    queries_all, qrels = load_queries(SHARED / args.data), load_qrels(SHARED / args.data)
    texts = [queries_all[q] for q in queries_all if q in qrels][: args.queries]
    with tempfile.TemporaryDirectory() as tmp:
        prev = old_package(args.rev, Path(tmp))
        new = Index.open(args.index)
        old = prev.Index.open(args.index)
        from colbert_retriever.kernels import dispatch

        if hasattr(dispatch, "wait_for_kernels"):  # kernels compiled (or loaded) in the background: wait for them
            dispatch.wait_for_kernels()
        Q = new.model.encode_queries(texts)
        libs = {"previous": old, "this release": new}
        for ix in libs.values():  # warm (compilation, caches)
            for i in range(5):
                ix.search_embeddings(Q[i : i + 1], 10)
        lat = {name: [] for name in libs}
        top = {name: [] for name in libs}
        for i in range(len(texts)):
            best = {name: float("inf") for name in libs}
            for r in range(args.repeats):
                for name in (list(libs) if (i + r) % 2 else list(libs)[::-1]):
                    t = time.perf_counter()
                    hits = libs[name].search_embeddings(Q[i : i + 1], 10)[0]
                    best[name] = min(best[name], (time.perf_counter() - t) * 1000)
                    if r == 0:
                        top[name].append([h.id for h in hits])
            for name in libs:
                lat[name].append(best[name])
        e2e = {name: [] for name in libs}
        e2e_top = {name: [] for name in libs}
        for i in range(len(texts)):
            best = {name: float("inf") for name in libs}
            for r in range(args.repeats):
                for name in (list(libs) if (i + r) % 2 else list(libs)[::-1]):
                    t = time.perf_counter()
                    hits = libs[name].search(texts[i], k=10)
                    best[name] = min(best[name], (time.perf_counter() - t) * 1000)
                    if r == 0:
                        e2e_top[name].append([(h.id, round(h.score, 4)) for h in hits])
            for name in libs:
                e2e[name].append(best[name])
        agree = float(np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(top["previous"],
                                                                                    top["this release"])]))
        same_order = float(np.mean([a == b for a, b in zip(top["previous"], top["this release"])]))
        out = {"machine": machine_info(), "rev": args.rev, "index": str(args.index), "queries": len(texts),
               "repeats": args.repeats,
               "retrieval_ms": {n: percentiles(v) for n, v in lat.items()},
               "end_to_end_ms": {n: percentiles(v) for n, v in e2e.items()},
               "top10_agreement": round(agree, 4), "same_top10_order": round(same_order, 4),
               "end_to_end_same_top10": round(float(np.mean([a == b for a, b in zip(e2e_top["previous"],
                                                                                    e2e_top["this release"])])), 4)}
        out["retrieval_p50_ratio"] = round(out["retrieval_ms"]["this release"]["p50"]
                                           / out["retrieval_ms"]["previous"]["p50"], 3)
        out["end_to_end_p50_ratio"] = round(out["end_to_end_ms"]["this release"]["p50"]
                                            / out["end_to_end_ms"]["previous"]["p50"], 3)
    write_json(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
