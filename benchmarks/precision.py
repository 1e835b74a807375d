"""``make bench-precision``: documents encoded in bfloat16 vs float32 (queries float32 in both, as the library's
policy has it), on every judged set: nDCG@10 (default search and exhaustive), top-10 overlap of the bf16-built
index with the float32-built one, token-level cosine of the two encodings, and encoding throughput. The rule in
``_device.BF16_DOCUMENTS_ON_BF16_CPUS``: bf16 documents by default on bf16 CPUs only if nDCG@10 moves by at most
0.002 on each set. bf16 runs on any CPU (emulated, slower, without native support): the machine's flags are
recorded.

    python benchmarks/precision.py [--data scifact cranfield cisi]

Writes benchmarks/results/precision.json and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

from colbert_retriever import Index, load_model  # noqa: E402
from colbert_retriever.device import cpu_supports_bf16  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics  # noqa: E402


def evaluate(index: Index, queries: dict, qids: list, qrels: dict, exhaustive: bool) -> tuple[dict, dict]:
    run = {q: [h.id for h in index.search(queries[q], k=100, exhaustive=exhaustive)] for q in qids}
    m = metrics(run, qrels)
    return {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4)}, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="*", default=["scifact", "cranfield", "cisi"])
    args = ap.parse_args(argv)
    out = {"machine": {**machine_info(), "native_bf16": cpu_supports_bf16()}, "sets": {}}
    models = {d: load_model("default", dtype=d) for d in ("float32", "bfloat16")}
    for name in args.data:
        folder = SHARED / name
        ids, texts, metas = load_corpus(folder)
        queries, qrels = load_queries(folder), load_qrels(folder)
        qids = [q for q in queries if q in qrels]
        r = {"documents": len(texts), "queries": len(qids)}
        runs = {}
        for dtype, model in models.items():
            path = WORK / f"precision-{name}-{dtype}"
            t = time.perf_counter()
            index = Index.build(path, texts, ids=ids, metadatas=metas, model=model, if_exists="overwrite",
                                truncate="chunk", show_progress=False)
            build_s = time.perf_counter() - t
            assert index.metadata["provenance"]["precision"]["documents"] == dtype
            enc = index.metadata["provenance"]["stages"]["encode_s"]
            default, runs[dtype] = evaluate(index, queries, qids, qrels, False)
            exhaustive, _ = evaluate(index, queries, qids, qrels, True)
            r[dtype] = {"default": default, "exhaustive": exhaustive, "build_s": round(build_s, 1),
                        "encode_docs_per_s": round(len(texts) / enc, 1)}
            print(name, dtype, json.dumps(r[dtype]), flush=True)
            index.close()
        r["top10_overlap"] = round(sum(len(set(runs["bfloat16"][q][:10]) & set(runs["float32"][q][:10]))
                                       / max(1, min(10, len(runs["float32"][q]))) for q in qids) / len(qids), 4)
        r["ndcg@10_delta"] = round(r["bfloat16"]["default"]["ndcg@10"] - r["float32"]["default"]["ndcg@10"], 4)
        r["ndcg@10_delta_exhaustive"] = round(r["bfloat16"]["exhaustive"]["ndcg@10"]
                                              - r["float32"]["exhaustive"]["ndcg@10"], 4)
        sample = texts[:200]
        a = models["bfloat16"].encode_documents(sample)
        b = models["float32"].encode_documents(sample)
        cos = torch.cat([(x * y).sum(-1) for x, y in zip(a, b)])
        r["token_cosine"] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 6)}
        out["sets"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k not in ("float32", "bfloat16")}), flush=True)
    out["rule"] = "bf16 documents by default on bf16 CPUs only if |nDCG@10 delta| <= 0.002 on every set"
    out["rule_met"] = all(abs(r["ndcg@10_delta"]) <= 0.002 for r in out["sets"].values())
    write_json("precision.json", out)
    from render import render

    render()


if __name__ == "__main__":
    main()
