"""``make bench-hybrid``: BM25, ColBERT, hybrid (RRF and min-max fusion) and BM25 + ColBERT rerank on every shared
judged set (issue #16), one index per set with its lexical side, the default model, 2 bits.

Per set and mode: nDCG@10, R@100, Success@5, latency p50/p95 per query (encoding included), and the effect of the
query-id rule (nDCG@10 with a hit whose id equals the query id dropped). Also bm25s (the shared README's baseline:
k1 0.9, b 0.4, lowercase words, English stopwords) next to our FTS5 lexical side. Writes
benchmarks/results/hybrid.json; ``python benchmarks/render.py`` puts the table in BENCHMARKS.md.

    python benchmarks/hybrid.py [--sets scifact cranfield cisi]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, write_json  # noqa: E402

MODES = [("bm25", {"mode": "bm25"}), ("colbert", {"mode": "colbert"}),
         ("hybrid_rrf", {"mode": "hybrid", "fusion": "rrf"}),
         ("hybrid_normalized", {"mode": "hybrid", "fusion": "normalized"}),
         ("bm25_rerank", {"mode": "bm25_rerank"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["scifact", "cranfield", "cisi"])
    args = ap.parse_args()
    from colbert_retriever import Index, load_model
    from colbert_retriever.evaluation import load_corpus, load_judged, metrics

    model = load_model("default")
    out = {"machine": machine_info(), "sets": {}}
    for name in args.sets:
        folder = SHARED / name
        ids, texts, metas = load_corpus(folder)
        queries, qrels, _ = load_judged(folder)
        qids = [q for q in queries if q in qrels]
        path = WORK / f"hybrid-{name}"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        idx = Index.build(path, texts, ids=ids, metadatas=metas, model=model, lexical=True, show_progress=False)
        res = {"documents": len(ids), "queries": len(qids), "build_s": round(time.perf_counter() - t0, 1)}
        for label, kw in MODES:
            idx.search(queries[qids[0]], k=100, **kw)  # warm-up
            run, lat = {}, []
            for q in qids:
                t = time.perf_counter()
                run[q] = [h.id for h in idx.search(queries[q], k=100, **kw)]
                lat.append((time.perf_counter() - t) * 1000)
            m = metrics(run, qrels)
            res[label] = {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
                          "success@5": round(m["success@5"], 4), "latency_ms": percentiles(lat),
                          "ndcg@10_query_id_dropped": round(metrics(run, qrels, drop_query_id=True)["ndcg@10"], 4)}
            print(name, label, res[label], flush=True)
        res["bm25s_baseline"] = _bm25s(texts, ids, queries, qids, qrels, metrics)
        print(name, "bm25s", res["bm25s_baseline"], flush=True)
        out["sets"][name] = res
        idx.close()
    write_json("hybrid.json", out)


def _bm25s(texts, ids, queries, qids, qrels, metrics):
    import bm25s

    r = bm25s.BM25(k1=0.9, b=0.4)
    r.index(bm25s.tokenize([t.lower() for t in texts], stopwords="en", show_progress=False), show_progress=False)
    run = {}
    for q in qids:
        res, _ = r.retrieve(bm25s.tokenize([queries[q].lower()], stopwords="en", show_progress=False),
                            k=min(100, len(texts)), show_progress=False)
        run[q] = [ids[i] for i in res[0]]
    m = metrics(run, qrels)
    return {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
            "ndcg@10_query_id_dropped": round(metrics(run, qrels, drop_query_id=True)["ndcg@10"], 4)}


if __name__ == "__main__":
    main()
