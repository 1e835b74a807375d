"""``make bench-pooling``: token pooling (``pool_factor``) at factors 1, 2, 3, 4 on scifact, cranfield and cisi:
nDCG@10 and Recall@100 (default search), tokens stored, index bytes, build time, k=10 p50/p95 (retrieval, query
encoding excluded).

To save CPU each corpus is encoded once (the default model, its default precision; long texts split into
passages exactly as ``Index.build``'s ``truncate="chunk"`` does) and cached under benchmarks/work/pooling; each
factor is then built from those embeddings through the embeddings API (``Index.build_from_embeddings(...,
model=the default model, pool_factor=f)``: the library's own pooling path, and text queries work). Each passage is
one row with its own id; a query's ranking keeps each document's best passage, as a chunked text index does. The
build time is the embeddings build (pooling, k-means, compression, writing); the encoding time, the same for
every factor, is reported once per set.

    python benchmarks/pooling.py [--data scifact cranfield cisi] [--factors 1 2 3 4]

Writes benchmarks/results/pooling.json and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, folder_bytes, machine_info, percentiles, write_json  # noqa: E402

from colbert_retriever import Index, load_model  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics  # noqa: E402
from colbert_retriever.indexing.ingest import prepare_rows  # noqa: E402

DIR = WORK / "pooling"
RULE = "pooling on by default only if factor 2 moves nDCG@10 by at most 0.005 on every set"


def encoded(name: str, model) -> tuple[list[str], list[torch.Tensor], float]:
    """(document id of each passage row, each row's embeddings, encoding seconds), cached per set and precision."""
    ids, texts, metas = load_corpus(SHARED / name)
    rows = prepare_rows(model, ids, texts, metas, "chunk")
    tag = f"{name}-{model.precision.to_dict()['documents']}"
    cache, meta = DIR / f"{tag}.npy", DIR / f"{tag}.json"
    if cache.exists() and meta.exists():
        m = json.loads(meta.read_text())
        embs = torch.from_numpy(np.load(cache))
    else:
        t = time.perf_counter()
        embs, lengths = model.encode_documents_packed(rows.texts, show_progress=True)
        m = {"lengths": lengths.tolist(), "encode_s": round(time.perf_counter() - t, 1)}
        DIR.mkdir(parents=True, exist_ok=True)
        np.save(cache, embs.numpy())
        meta.write_text(json.dumps(m))
    return rows.ids, list(torch.split(embs, m["lengths"])), m["encode_s"]


def run_set(name: str, model, factors: list[int]) -> dict:
    folder = SHARED / name
    row_doc, docs, encode_s = encoded(name, model)
    queries, qrels = load_queries(folder), load_qrels(folder)
    qids = [q for q in queries if q in qrels]
    Q = model.encode_queries([queries[q] for q in qids])
    out = {"documents": len(set(row_doc)), "passages": len(docs), "queries": len(qids),
           "tokens": int(sum(d.shape[0] for d in docs)), "encode_s": encode_s, "factors": {}}
    row_ids = [f"r{i}" for i in range(len(docs))]
    for f in factors:
        path = DIR / f"{name}-f{f}"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        index = Index.build_from_embeddings(path, docs, row_ids, model=model, pool_factor=f, show_progress=False)
        build_s = time.perf_counter() - t
        run = {}
        for i, q in enumerate(qids):  # a document's best passage stands for it, as in a chunked text index
            seen = dict.fromkeys(row_doc[int(h.id[1:])] for h in index.search_embeddings(Q[i : i + 1], 150)[0])
            run[q] = list(seen)[:100]
        m = metrics(run, qrels)
        for q in Q[:5]:
            index.search_embeddings(q[None], 10)
        lat = []
        for q in Q:
            t = time.perf_counter()
            index.search_embeddings(q[None], 10)
            lat.append((time.perf_counter() - t) * 1000)
        meta = index.metadata
        assert meta["pooling"]["pool_factor"] == f
        out["factors"][str(f)] = {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
                                  "tokens": meta["counts"]["embeddings"], "index_bytes": folder_bytes(path),
                                  "build_s": round(build_s, 1), "stages": meta["provenance"]["stages"],
                                  "num_centroids": meta["codec"]["num_centroids"], "latency_ms": percentiles(lat)}
        print(name, f, json.dumps(out["factors"][str(f)]), flush=True)
        index.close()
        shutil.rmtree(path, ignore_errors=True)
    base = out["factors"].get("1")
    if base:
        for r in out["factors"].values():
            r["ndcg@10_delta"] = round(r["ndcg@10"] - base["ndcg@10"], 4)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="*", default=["scifact", "cranfield", "cisi"])
    ap.add_argument("--factors", nargs="*", type=int, default=[1, 2, 3, 4])
    args = ap.parse_args(argv)
    model = load_model("default")
    out = {"machine": {**machine_info(), "documents_dtype": model.precision.to_dict()["documents"]}, "rule": RULE,
           "sets": {}}
    for name in args.data:
        out["sets"][name] = run_set(name, model, args.factors)
    deltas = [r["factors"]["2"]["ndcg@10_delta"] for r in out["sets"].values() if "2" in r["factors"]]
    out["rule_met"] = bool(deltas) and all(abs(d) <= 0.005 for d in deltas)
    write_json("pooling.json", out)
    from render import render

    render()
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
