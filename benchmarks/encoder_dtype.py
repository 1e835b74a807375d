"""Encoder dtype check: nDCG@10 and build speed of the default model in float32 vs bfloat16 (exhaustive search),
plus encoder throughput (documents/s at ~160-180 tokens, queries/s batched, single-query latency).

    python benchmarks/encoder_dtype.py [cisi cranfield ...]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

from colbert_retriever import ColBERT, Index  # noqa: E402
from colbert_retriever.evaluation import evaluate, load_corpus  # noqa: E402


def main(names):
    res = {"machine": machine_info(), "quality": {}}
    for dt in ("float32", "bfloat16"):
        m = ColBERT.default(dtype=dt)
        for name in names:
            ids, texts, _ = load_corpus(SHARED / name)
            p = WORK / f"dtype-{name}-{dt}"
            shutil.rmtree(p, ignore_errors=True)
            t = time.perf_counter()
            idx = Index.build(p, texts, ids=ids, model=m, show_progress=False)
            b = time.perf_counter() - t
            r = evaluate(idx, SHARED / name, k=100, exhaustive=True)
            res["quality"][f"{name}-{dt}"] = {"ndcg@10": round(r["ndcg@10"], 4), "recall@100": round(r["recall@100"], 4),
                                              "build_s": round(b, 1), "docs_per_s": round(len(texts) / b, 1)}
            print(res["quality"][f"{name}-{dt}"], flush=True)
    _, texts, _ = load_corpus(SHARED / "scifact")
    long = [t for t in texts if len(t) > 1200][:320]
    qs = [f"what is the effect of protein {i} on cell growth" for i in range(256)]
    for dt in ("bfloat16", "float32"):
        m = ColBERT.default(dtype=dt)
        t = time.perf_counter()
        _, lengths = m.encode_documents_packed(long, batch_size=32)
        res[f"docs_per_s_{dt}"] = round(len(long) / (time.perf_counter() - t), 1)
        res["avg_doc_tokens"] = round(float(lengths.float().mean()), 1)
        t = time.perf_counter()
        m.encode_queries(qs, batch_size=64)
        res[f"queries_per_s_batched_{dt}"] = round(len(qs) / (time.perf_counter() - t), 1)
        lat = []
        for q in qs[:50]:
            t = time.perf_counter()
            m.encode_queries([q])
            lat.append((time.perf_counter() - t) * 1000)
        res[f"single_query_ms_p50_{dt}"] = round(sorted(lat)[25], 2)
    print(res)
    write_json("encoder_dtype.json", res)


if __name__ == "__main__":
    main(sys.argv[1:] or ["cisi", "cranfield"])
