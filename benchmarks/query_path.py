"""``make bench-query-path``: where one query's time goes and what the float16 switches buy, side by side in one
process (queries interleaved, so the VM's drift hits every variant alike).

For each index (``make bench``'s scifact passages at 2 bits; ``make bench-scale``'s 100k WordNet glosses when
present): query encoding p50 with the linear layers' float32 weights vs packed float16 weights
(``Precision.fp16_query_weights``), the query-centroid product in float32 vs on the packed float16 centroids
(``Precision.half_centroid_scores``), retrieval p50 (``search_embeddings``, k=10) and end-to-end ``Index.search``
p50 with both off vs both on (the default), top-10 agreement of each with exhaustive search, and, for judged sets,
nDCG@10 / Recall@100 with either query encoding.

    python benchmarks/query_path.py [--queries 300]

Writes benchmarks/results/query_path.json and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, wordnet_sample, write_json  # noqa: E402

from colbert_retriever import Index, SearchConfig  # noqa: E402
from colbert_retriever.evaluation import evaluate, load_corpus, load_queries  # noqa: E402


def measure(index: Index, queries: list[str], k: int = 10) -> dict:
    """``index`` runs with the default precision (both float16 paths on); a second handle on the same folder runs
    with both off (a view of the model with another ``Precision``: nothing is switched in place)."""
    handles = {"float16": index, "float32": Index.open(index.path, model=index.model.with_precision(
        fp16_query_weights=False, half_centroid_scores=False))}
    codec = {s: h.snapshot().arrays.codec for s, h in handles.items()}
    off = handles["float32"]
    Q32 = [off.model.encode_queries([q]) for q in queries]
    ref = [[h.id for h in off.search_embeddings(Q, k, config=SearchConfig(exhaustive=True))[0]] for Q in Q32]
    times = {f"{part}_{state}": [] for part in ("encoding", "centroid_product", "retrieval", "end_to_end")
             for state in ("float32", "float16")}
    agree = {"float32": 0.0, "float16": 0.0}
    Q16 = [None] * len(queries)  # the default (float16) encodings from the timed loop
    for Q in Q32[:10]:  # warm-up (the packed weights are made at first use)
        for h in handles.values():
            h.search_embeddings(Q, k)
    for i, (q, Q) in enumerate(zip(queries, Q32)):
        for state in (("float32", "float16") if i % 2 else ("float16", "float32")):
            h = handles[state]
            t = time.perf_counter()
            Qe = h.model.encode_queries([q])
            times[f"encoding_{state}"].append((time.perf_counter() - t) * 1000)
            if state == "float16":
                Q16[i] = Qe
            real = Qe[0][Qe[0].abs().sum(-1) > 0]
            t = time.perf_counter()
            codec[state].centroid_scores(real, half=state == "float16")
            times[f"centroid_product_{state}"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            hits = h.search_embeddings(Qe, k)[0]
            times[f"retrieval_{state}"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            h.search(q, k)
            times[f"end_to_end_{state}"].append((time.perf_counter() - t) * 1000)
            agree[state] += len({h.id for h in hits} & set(ref[i])) / max(1, len(ref[i]))
    off.close()
    out = {name: percentiles(v) for name, v in times.items()}
    for part in ("encoding", "centroid_product", "retrieval", "end_to_end"):
        out[f"{part}_ratio_p50"] = round(out[f"{part}_float16"]["p50"] / out[f"{part}_float32"]["p50"], 3)
    out["agreement_top10"] = {s: round(a / len(queries), 4) for s, a in agree.items()}
    Qa, Qb = torch.cat(Q32), torch.cat(Q16)
    real = Qa.norm(dim=-1) > 0
    out["query_embeddings_min_cosine"] = round(float((Qa * Qb).sum(-1)[real].min()), 7)
    out["query_embeddings_max_abs_diff"] = float((Qa - Qb).abs().max())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args(argv)
    out = {"machine": machine_info(), "k": 10, "indexes": {}}
    scifact = WORK / "scifact-nbits2"
    if not scifact.exists():
        sys.exit(f"{scifact} is missing: run `make bench` first (it builds the scifact index this reuses)")
    jobs = [("scifact", scifact, [q for q in load_queries(SHARED / "scifact").values()][: args.queries])]
    wordnet = WORK / "wordnet-100000"
    if wordnet.exists():
        metas = load_corpus(SHARED / "wordnet-glosses")[2]
        jobs.append(("wordnet-100000", wordnet, wordnet_sample(metas, min(args.queries, 200))[1]))  # scale.py's
    for name, path, queries in jobs:
        index = Index.open(path)
        r = {"queries": len(queries), **measure(index, queries)}
        if (SHARED / name / "qrels").exists():
            for on in (False, True):
                h = index if on else Index.open(path, model=index.model.with_precision(fp16_query_weights=False))
                e = evaluate(h, SHARED / name, k=100)
                r[f"quality_{'float16' if on else 'float32'}_query_weights"] = {
                    m: round(e[m], 4) for m in ("ndcg@10", "recall@100")}
        out["indexes"][name] = r
        print(name, json.dumps(r), flush=True)
        index.close()
    write_json("query_path.json", out)
    from render import render

    print(render())


if __name__ == "__main__":
    main()
