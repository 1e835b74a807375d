"""k-means sample size vs compressed quality on scifact (issue #15 question): build with kmeans_sample_tokens 2^18
(the default) and 2^20, report build time (stages) and nDCG@10 exhaustive and with PLAID. Writes
benchmarks/results/kmeans-sample.json.

    python benchmarks/kmeans_sample.py
"""
import json, sys, time, shutil
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import SHARED, WORK
from colbert_retriever import Index, load_model, CodecConfig
from colbert_retriever.evaluation import load_corpus, load_judged, metrics
m = load_model("default")
ids, texts, metas = load_corpus(SHARED / "scifact")
queries, qrels, _ = load_judged(SHARED / "scifact")
qids = [q for q in queries if q in qrels]
out = {}
for tokens in (1 << 18, 1 << 20):
    p = WORK / f"kmeans-{tokens}"
    shutil.rmtree(p, ignore_errors=True)
    t = time.perf_counter()
    idx = Index.build(p, texts, ids=ids, model=m, codec_config=CodecConfig(nbits=2, kmeans_sample_tokens=tokens), show_progress=False)
    bt = time.perf_counter() - t
    res = {"build_s": round(bt, 1), "num_centroids": idx.metadata["codec"]["num_centroids"], "stages": idx.metadata["provenance"]["stages"]}
    for ex in (True, False):
        run = {q: [h.id for h in idx.search(queries[q], k=100, exhaustive=ex)] for q in qids}
        res["exhaustive" if ex else "plaid"] = round(metrics(run, qrels)["ndcg@10"], 4)
    out[tokens] = res
    print(tokens, res, flush=True)
json.dump(out, open(__import__("pathlib").Path(__file__).resolve().parent / "results" / "kmeans-sample.json", "w"), indent=1)
