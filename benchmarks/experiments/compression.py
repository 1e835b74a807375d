"""Where does 2-bit compression lose fidelity? (issue #29's question: fast-plaid's 2-bit index stayed closer to
exact float MaxSim than ours on scifact.) Builds our index from the *same* cached float embeddings that
``benchmarks/fastplaid.py`` feeds both libraries, once per codec variant, and measures each against exact float
MaxSim over the uncompressed embeddings: top-10 overlap of exhaustive search, exhaustive nDCG@10, and the mean cosine
between a token and its reconstruction. Variants: the k-means sample (2^18 tokens, our default; 2^19; every token,
fast-plaid's choice at this size) and k-means iterations (4, our default and fast-plaid's; 10).

    python benchmarks/fastplaid.py            # once: caches the embeddings in benchmarks/work/fastplaid/
    python benchmarks/experiments/compression.py

Writes benchmarks/results/compression.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402
from fastplaid import FP, PackedDocs, agreement, embeddings  # noqa: E402

from colbert_retriever import CodecConfig, Index, SearchConfig, retrieval  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics  # noqa: E402
from colbert_retriever.scoring import maxsim_packed  # noqa: E402
from colbert_retriever.strided import offsets_from_lengths  # noqa: E402

VARIANTS = {
    "default (2^18 sample, 4 iters)": CodecConfig(nbits=2),
    "2^19 sample, 4 iters": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 19),
    "every token, 4 iters": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 22),
    "2^18 sample, 10 iters": CodecConfig(nbits=2, kmeans_niters=10),
    "every token, 10 iters": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 22, kmeans_niters=10),
}


def main():
    if not (FP / "docs.npy").exists():
        sys.exit("run benchmarks/fastplaid.py first: it caches the embeddings this experiment reads")
    ids, texts, _ = load_corpus(SHARED / "scifact")
    queries, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
    qids = [q for q in queries if q in qrels][:300]
    docs, lengths, Q = embeddings(texts, [queries[q] for q in qids])
    ref = maxsim_packed(torch.nn.utils.rnn.pad_sequence(Q, batch_first=True), docs,
                        offsets_from_lengths(lengths)).topk(10, dim=1).indices.tolist()
    sample = torch.nn.functional.normalize(docs[torch.randperm(docs.shape[0], generator=torch.Generator().manual_seed(
        0))[:100_000]], dim=-1)

    def ndcg(runs):
        return round(metrics({q: [ids[p] for p in r] for q, r in zip(qids, runs)}, {q: qrels[q] for q in qids})[
            "ndcg@10"], 4)

    out = {"machine": machine_info(), "queries": len(qids), "tokens": int(lengths.sum()),
           "float": {"ndcg@10": ndcg(ref)}, "variants": {}}
    embs = np.load(FP / "docs.npy", mmap_mode="r")
    path = WORK / "compression"
    for name, cfg in VARIANTS.items():
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        index = Index.build_from_embeddings(path, PackedDocs(embs, lengths.numpy()), ids=ids, name="scifact-float",
                                            codec_config=cfg, show_progress=False)
        build_s = time.perf_counter() - t
        snap = index._current()
        req = retrieval.Request.make(10, config=SearchConfig(exhaustive=True))
        runs = [r[0] for r in retrieval.colbert(snap, Q, 10, req, None, None)]
        codec = snap.arrays.codec
        with torch.inference_mode():
            codes, packed = codec.compress(sample)
            cos = float((torch.nn.functional.normalize(codec.decompress(codes, packed).float(), dim=-1) * sample)
                        .sum(-1).mean())
        row = {"build_s": round(build_s, 1), "kmeans_s": index.metadata["provenance"]["stages"].get("kmeans_s"),
               "num_centroids": index.metadata["codec"]["num_centroids"],
               "float_overlap@10": agreement(runs, ref), "ndcg@10": ndcg(runs), "mean_token_cosine": round(cos, 5)}
        out["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        index.close()
    shutil.rmtree(path, ignore_errors=True)
    write_json("compression.json", out)


if __name__ == "__main__":
    main()
