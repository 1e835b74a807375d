"""``make bench-single-adds``: a LangChain ``ColBERTVectorStore`` that starts empty and receives one document per
``add_documents`` call, N times (issue #14) — the pattern of a chat app that indexes what users upload.

Reports the time per add (p50/p95, and the calls that re-trained the centroids), the total, the index's segments
at the end, and quality against a store built in one call from the same documents: top-10 overlap of their
answers on 50 queries (the documents' own titles), each one's overlap with exact MaxSim over float embeddings, and
PLAID-vs-exhaustive agreement of the grown store.
Writes benchmarks/results/single-adds.json.

    python benchmarks/single_adds.py [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine_info, percentiles, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    from langchain_core.documents import Document

    from colbert_retriever import load_model
    from colbert_retriever.integrations.langchain import ColBERTVectorStore

    rows = [json.loads(line) for line in open(ROOT / "examples" / "stdlib_docs.jsonl")][: args.n]
    docs = [Document(page_content=f"{r['title']}. {r['text']}", metadata={"module": r["module"]}, id=r["_id"])
            for r in rows]
    model = load_model("default")
    grown_path, bulk_path = WORK / "single-adds-grown", WORK / "single-adds-bulk"
    for p in (grown_path, bulk_path):
        shutil.rmtree(p, ignore_errors=True)
    store = ColBERTVectorStore(grown_path, model=model, show_progress=False)
    times, reclusters = [], []
    t_all = time.perf_counter()
    for i, d in enumerate(docs):
        gen_before = store.index.generation if store.index is not None else 0
        t0 = time.perf_counter()
        store.add_documents([d])
        times.append((time.perf_counter() - t0) * 1000)
        if store.index.generation - gen_before > 1:  # an add that also re-trained the centroids (compact)
            reclusters.append(i + 1)
        if (i + 1) % 100 == 0:
            print(f"{i + 1} adds, {sum(times) / 1000:.1f} s, last 100 p50 {percentiles(times[-100:])['p50']:.0f} ms",
                  flush=True)
    total_s = time.perf_counter() - t_all
    t0 = time.perf_counter()
    bulk = ColBERTVectorStore.from_documents(docs, index_path=bulk_path, model=model, show_progress=False)
    bulk_s = time.perf_counter() - t0
    queries = [r["title"].replace(".", " ").replace("_", " ") for r in rows[:: max(1, len(rows) // 50)]][:50]
    overlap = agree = exact_g = exact_b = 0.0
    import torch

    from colbert_retriever.kernels.scoring import maxsim_packed

    ids = [d.id for d in docs]
    embs, lengths = model.encode_documents_packed([d.page_content for d in docs])  # float, once
    offsets = torch.zeros(len(docs) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    for q in queries:
        g = [d.id for d in store.similarity_search(q, k=10)]
        b = [d.id for d in bulk.similarity_search(q, k=10)]
        e = [d.id for d in store.similarity_search(q, k=10, exhaustive=True)]
        scores = maxsim_packed(model.encode_queries([q])[0], embs, offsets.to(embs.device))
        ref = {ids[i] for i in torch.topk(scores, 10).indices.tolist()}  # exact MaxSim over float embeddings
        overlap += len(set(g) & set(b)) / 10
        agree += len(set(g) & set(e)) / 10
        exact_g += len(set(g) & ref) / 10
        exact_b += len(set(b) & ref) / 10
    meta = store.index.metadata
    out = {"machine": machine_info(), "n": len(docs), "total_s": round(total_s, 2),
           "per_add_ms": percentiles(times), "mean_ms": round(sum(times) / len(times), 1),
           "recluster_at": reclusters, "recluster_count": len(reclusters),
           "final_segments": len(meta["segments"]), "num_centroids": meta["codec"]["num_centroids"],
           "bulk_build_s": round(bulk_s, 2), "bulk_num_centroids": bulk.index.metadata["codec"]["num_centroids"],
           "top10_overlap_with_bulk": round(overlap / len(queries), 3),
           "top10_agreement_plaid_vs_exhaustive": round(agree / len(queries), 3),
           "top10_overlap_with_float_exact": {"grown": round(exact_g / len(queries), 3),
                                              "bulk": round(exact_b / len(queries), 3)}}
    print(json.dumps(out, indent=1))
    write_json("single-adds.json", out)


if __name__ == "__main__":
    main()
