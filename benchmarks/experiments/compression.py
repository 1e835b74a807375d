"""Where does 2-bit compression lose fidelity? (issue #29's question: fast-plaid's 2-bit index stayed closer to
exact float MaxSim than ours on scifact.) Builds our index from the *same* cached float embeddings that
``benchmarks/fastplaid.py`` feeds both libraries, once per codec variant, and measures each against exact float
MaxSim over the uncompressed embeddings: top-10 overlap of exhaustive search, exhaustive nDCG@10, and the mean cosine
between a token and its reconstruction. Variants: the k-means sample (2^18 tokens, the default before 0.2.0; 2^19;
2^20, the default since; every token, fast-plaid's choice at this size) and the k-means itself (two-level, the
default; flat, ``CodecConfig(kmeans="flat")``).

Part two isolates the centroids: every token compressed in memory with one set of buckets and each set of
centroids (and, once, fast-plaid's centroids with ColBERTv2's quantile-midpoint decoding levels instead of our
bucket means), decompressed in float32 and scored by exact MaxSim (no index, no search path): fast-plaid's own
centroids (read from its index), our two-level k-means over every token, and a flat faiss k-means over every token
(4 iterations, at most 256 points per centroid: what fast-plaid runs).

    python benchmarks/fastplaid.py            # once: caches the embeddings in benchmarks/work/fastplaid/
    python benchmarks/experiments/compression.py [--variants NAME ...]

Writes benchmarks/results/compression.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, SHARED, WORK, machine_info, write_json  # noqa: E402
from fastplaid import FP, PackedDocs, agreement, embeddings  # noqa: E402

from colbert_retriever import CodecConfig, Index, SearchConfig  # noqa: E402
from colbert_retriever.search import retrieval  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics  # noqa: E402
from colbert_retriever.kernels.scoring import maxsim_packed  # noqa: E402
from colbert_retriever.codec.strided import offsets_from_lengths  # noqa: E402

VARIANTS = {
    "2^18 sample": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 18),
    "2^19 sample": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 19),
    "2^20 sample (default)": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 20),
    "every token": CodecConfig(nbits=2, kmeans_sample_tokens=1 << 22),
    "2^20 sample, flat k-means": CodecConfig(nbits=2, kmeans="flat"),
}
"""(The two-level k-means runs at least 10 iterations per level, so ``kmeans_niters`` 4 vs 10 changes nothing at
this size: measured identical, not repeated here.)"""


def _heldout_residuals(codec, docs: torch.Tensor) -> np.ndarray:
    """Residual values of 50k tokens (not the k-means sample's order) under ``codec``'s centroids."""
    rows = docs[torch.randperm(len(docs), generator=torch.Generator().manual_seed(2))[:50_000]]
    return (rows - codec.centroids[codec.assign(rows)]).flatten().double().numpy()


def centroid_sources(docs: torch.Tensor, offsets: torch.Tensor, Q, ref) -> dict:
    """Part two: the same buckets, three sets of centroids, exact float32 scoring of the reconstructions."""
    import faiss

    from colbert_retriever.codec.residual import ResidualCodec
    from colbert_retriever.codec.kmeans import train_centroids

    docs = torch.nn.functional.normalize(docs, dim=-1)
    x = docs.numpy()
    base = ResidualCodec.fit(docs[torch.randperm(len(docs), generator=torch.Generator().manual_seed(1))[: 1 << 18]],
                             CodecConfig(nbits=2), len(docs))
    Qp = torch.nn.utils.rnn.pad_sequence(Q, batch_first=True)
    out = {}

    # the decoding levels ColBERTv2 uses (and we did before 0.2.0): the midpoint quantile of each bucket
    res_q = (np.arange(4) + 0.5) / 4
    midpoints = torch.tensor(np.quantile(_heldout_residuals(base, docs), res_q), dtype=torch.float32)

    def score(name, cents, seconds, levels=base.bucket_weights):
        c = ResidualCodec(torch.nn.functional.normalize(torch.as_tensor(cents).float(), dim=-1), base.bucket_cutoffs,
                          levels, 2)
        codes, packed = c.compress(docs)
        dec = torch.nn.functional.normalize(c.decompress(codes, packed).float(), dim=-1)
        runs = maxsim_packed(Qp, dec, offsets).topk(10, dim=1).indices.tolist()
        out[name] = {"kmeans_s": seconds, "float_overlap@10": agreement(runs, ref),
                     "mean_token_cosine": round(float((dec * docs).sum(-1).mean()), 5)}
        print(name, json.dumps(out[name]), flush=True)

    fp_cents = np.load(FP / "fast-plaid" / "centroids.npy").astype(np.float32)
    score("fast-plaid's centroids", fp_cents, None)
    score("fast-plaid's centroids, quantile-midpoint levels (before 0.2.0)", fp_cents, None, midpoints)
    t = time.perf_counter()
    cents = train_centroids(x, 16384, 4, 12345)
    score("ours: two-level, every token", cents, round(time.perf_counter() - t, 1))
    t = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], 16384, niter=4, seed=12345, spherical=True, max_points_per_centroid=256,
                      verbose=False)
    km.train(x)
    score("flat k-means, every token, 4 iterations", km.centroids, round(time.perf_counter() - t, 1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                    help="measure only these (merged into an existing compression.json; part two is skipped)")
    args = ap.parse_args(argv)
    if not (FP / "docs.npy").exists():
        sys.exit("run benchmarks/fastplaid.py first: it caches the embeddings this experiment reads")
    ids, texts, _ = load_corpus(SHARED / "scifact")
    queries, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
    qids = [q for q in queries if q in qrels][:300]
    docs, lengths, Q = embeddings(texts, [queries[q] for q in qids])
    offsets = offsets_from_lengths(lengths)
    ref = maxsim_packed(torch.nn.utils.rnn.pad_sequence(Q, batch_first=True), docs, offsets).topk(10, dim=1).indices
    ref = ref.tolist()
    sample = torch.nn.functional.normalize(docs[torch.randperm(docs.shape[0], generator=torch.Generator().manual_seed(
        0))[:100_000]], dim=-1)

    def ndcg(runs):
        return round(metrics({q: [ids[p] for p in r] for q, r in zip(qids, runs)}, {q: qrels[q] for q in qids})[
            "ndcg@10"], 4)

    out = {"machine": machine_info(), "pool_factor": 1, "queries": len(qids), "tokens": int(lengths.sum()),
           "float": {"ndcg@10": ndcg(ref)}, "variants": {}}
    if args.variants and (RESULTS / "compression.json").exists():
        out = {**json.loads((RESULTS / "compression.json").read_text()), "machine_partial_rerun": machine_info()}
    embs = np.load(FP / "docs.npy", mmap_mode="r")
    path = WORK / "compression"
    for name, cfg in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        index = Index.build_from_embeddings(path, PackedDocs(embs, lengths.numpy()), ids=ids, name="scifact-float",
                                            codec_config=cfg, show_progress=False,
                                            pool_factor=1)  # fidelity is against MaxSim over the unpooled rows
        build_s = time.perf_counter() - t
        snap = index.snapshot()
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
    if not args.variants:
        out["centroids"] = centroid_sources(docs, offsets, Q, ref)
    write_json("compression.json", out)


if __name__ == "__main__":
    main()
