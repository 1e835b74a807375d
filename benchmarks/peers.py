"""``make bench-peers``: our search against colbert-ai 0.2.22 on scifact, side by side in one process.

Runs inside the peers virtualenv (``benchmarks/peers/setup.sh``: torch 2.13.0, colbert-ai 0.2.22, transformers
4.57.6, this package). Steps:

1. a colbert-ai-layout checkpoint both libraries load: the default backbone (all-MiniLM-L6-v2) + our 128-d head,
   [MASK] query augmentation, query_maxlen 32, doc_maxlen 180, saved with ``ColBERT.save``;
2. scifact indexed by each library at 2 bits, each build in its own process (build time, peak RSS); documents
   encoded in float32 by both (colbert-ai's CPU path; ours would take bfloat16 on a bf16 CPU by default);
3. the 300 test queries encoded once by colbert-ai (``Searcher.encode``; ours is checked to agree: the run stops
   if our float32 encoding differs by more than 1e-4), then, for
   each knob tuple (ncells, centroid_score_threshold, ndocs) and each library's defaults (and, for each tuple,
   ours with probed scoring, our default stage 2, at comparable work: ``PROBED``), retrieval timed
   excluding query encoding (colbert-ai: ``Searcher.dense_search``; ours: the index's PLAID path without fetching
   texts), queries interleaved between the libraries and the order alternated, so background load hits both;
4. top-10 agreement with each library's own exhaustive MaxSim over its compressed index, nDCG@10, and top-10
   overlap with the float reference (exact MaxSim over uncompressed embeddings, the same for both);
5. query-encoding p50 for both; latency ratio at matched agreement (interpolated on colbert-ai's curve).

Writes benchmarks/results/peers.json and peers.png; ``render.py`` puts them into BENCHMARKS.md.

    benchmarks/work/peers-venv/bin/python benchmarks/peers.py [--queries 300] [--skip-build]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SHARED, WORK, percentiles, plot_latency_vs_agreement, run_with_peak,  # noqa: E402
                    write_json)

DATA = SHARED / "scifact"
PEERS = WORK / "peers"
CKPT = PEERS / "checkpoint"
OURS = PEERS / "ours-scifact"
COLBERT_ROOT = PEERS / "colbert-ai"
KNOBS = [(1, 0.5, 256), (2, 0.45, 1024), (4, 0.4, 4096), (8, 0.4, 8192)]
PROBED = {(1, 0.5, 256): (4, None, 256), (2, 0.45, 1024): (8, None, 1024), (4, 0.4, 4096): (16, None, 4096),
          (8, 0.4, 8192): (32, None, 8192)}
"""Our default stage 2 (probed scoring: no threshold) at comparable work, timed in the same interleaved loop as
each of colbert-ai's knob tuples (library "ours_probed")."""
NBITS, DOC_MAXLEN = 2, 180
POOL_FACTOR = 1  # colbert-ai stores every token: ours unpooled too, like with like


def corpus():
    from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries

    ids, texts, _ = load_corpus(DATA)
    queries, qrels = load_queries(DATA), load_qrels(DATA)
    return ids, texts, queries, qrels


def make_checkpoint():
    from colbert_retriever import ColBERT

    model = ColBERT.default(dtype="float32")
    # colbert-ai always inserts its marker tokens ([unused0] / [unused1]; it has no "no marker" setting), so the
    # checkpoint says so too: both libraries then tokenize, and encode, alike (checked in ``measure``)
    model.set_config(model.config.replace(mask_augmentation=True, query_maxlen=32, doc_maxlen=DOC_MAXLEN,
                                          query_marker="[unused0]", doc_marker="[unused1]"))
    shutil.rmtree(CKPT, ignore_errors=True)
    model.save(CKPT)


def build_ours():
    import warnings

    from colbert_retriever import ColBERT, Index

    ids, texts, _, _ = corpus()
    model = ColBERT.from_pretrained(CKPT, dtype="float32")
    shutil.rmtree(OURS, ignore_errors=True)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # texts past doc_maxlen are truncated, as colbert-ai does
        Index.build(OURS, texts, ids=ids, model=model, nbits=NBITS, truncate="warn", show_progress=False,
                    pool_factor=POOL_FACTOR)
    print(json.dumps({"build_s": round(time.perf_counter() - t, 2)}))


def build_colbert():
    from colbert import Indexer
    from colbert.infra import ColBERTConfig, Run, RunConfig

    _, texts, _, _ = corpus()
    shutil.rmtree(COLBERT_ROOT, ignore_errors=True)
    t = time.perf_counter()
    with Run().context(RunConfig(nranks=1, experiment="peers", root=str(COLBERT_ROOT),
                                 index_root=str(COLBERT_ROOT / "indexes"))):
        config = ColBERTConfig(nbits=NBITS, doc_maxlen=DOC_MAXLEN, query_maxlen=32, kmeans_niters=4)
        Indexer(checkpoint=str(CKPT), config=config, verbose=0).index(
            name="scifact", collection=[t.replace("\n", " ") for t in texts], overwrite="force_silent_overwrite")
    print(json.dumps({"build_s": round(time.perf_counter() - t, 2)}))


def colbert_searcher():
    from colbert import Searcher
    from colbert.infra import Run, RunConfig

    with Run().context(RunConfig(nranks=1, experiment="peers", root=str(COLBERT_ROOT),
                                 index_root=str(COLBERT_ROOT / "indexes"))):
        return Searcher(index="scifact", checkpoint=str(CKPT), index_root=str(COLBERT_ROOT / "indexes"), verbose=0)


def colbert_configure(searcher, knobs):
    """colbert-ai's Searcher keeps whatever knobs the first k set: reset them every time."""
    ncells, thr, ndocs = knobs if knobs is not None else (None, None, None)
    searcher.configure(ncells=ncells, centroid_score_threshold=thr, ndocs=ndocs)


def colbert_exhaustive(searcher, Q: torch.Tensor, k: int) -> list[list[int]]:
    """Exact MaxSim over colbert-ai's own decompressed index."""
    from colbert_retriever.kernels.scoring import maxsim_packed
    from colbert_retriever.codec.strided import offsets_from_lengths

    r = searcher.ranker
    embs = r.codec.decompress(r.embeddings).float()
    offsets = offsets_from_lengths(r.doclens)
    scores = maxsim_packed(Q.float(), embs, offsets)  # (n_queries, n_docs)
    return scores.topk(k, dim=1).indices.tolist()


def float_reference(model, texts, Q: torch.Tensor, k: int) -> list[list[int]]:
    """Exact MaxSim over uncompressed document embeddings (the same for both libraries: the encoders agree)."""
    from colbert_retriever.kernels.scoring import maxsim_packed
    from colbert_retriever.codec.strided import offsets_from_lengths

    cache = PEERS / "float-embeddings.pt"  # written by the run that built the checkpoint; reused with --skip-build
    if cache.exists():
        embs, lengths = torch.load(cache, weights_only=True)
    else:
        embs, lengths = model.encode_documents_packed(texts, batch_size=32)
        embs = embs.to(torch.float16)
        torch.save((embs, lengths), cache)
    return maxsim_packed(Q.float(), embs.float(), offsets_from_lengths(lengths)).topk(k, dim=1).indices.tolist()


def agreement(runs: list[list], refs: list[list], k: int = 10) -> float:
    return round(float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(runs, refs)])), 4)


def ndcg(runs_pids: list[list[int]], qids, ids, qrels) -> float:
    from colbert_retriever.evaluation import metrics

    run = {q: [ids[p] for p in pids] for q, pids in zip(qids, runs_pids)}
    return round(float(metrics(run, {q: qrels[q] for q in qids})["ndcg@10"]), 4)


def ratio_at(agree_ours: float, lat_ours: float, curve: list[tuple[float, float]]):
    """Our latency over colbert-ai's at the same agreement, colbert-ai's latency interpolated linearly between
    its measured points (None outside its measured range)."""
    pts = sorted(curve)
    for (a0, l0), (a1, l1) in zip(pts, pts[1:]):
        if a0 <= agree_ours <= a1:
            lat = l0 if a1 == a0 else l0 + (l1 - l0) * (agree_ours - a0) / (a1 - a0)
            return round(lat_ours / lat, 3), round(lat, 2)
    if pts and abs(agree_ours - pts[-1][0]) < 1e-9:
        return round(lat_ours / pts[-1][1], 3), pts[-1][1]
    return None, None


def measure(args) -> dict:
    from colbert_retriever import ColBERT, Index, SearchConfig
    from colbert_retriever.search import retrieval

    ids, texts, queries, qrels = corpus()
    qids = [q for q in queries if q in qrels][: args.queries]
    qtexts = [queries[q] for q in qids]
    searcher = colbert_searcher()
    model = ColBERT.from_pretrained(CKPT, dtype="float32")
    index = Index.open(OURS, model=model)
    snap = index.snapshot()
    out: dict = {"queries": len(qids), "documents": len(texts)}

    def colbert_top(snap, rows, k, cfg):
        # the ColBERT stage alone (no text lookups), as Index.search_embeddings runs it
        return retrieval.colbert(snap, rows, k, retrieval.Request.make(k, config=cfg), index.model.precision, None)

    # query encoding: the same embeddings for both libraries' searches (checked to agree: float32 weights exactly,
    # our default float16 query weights to ~2e-4)
    Q = searcher.encode(qtexts).float()
    exact = model.with_precision(fp16_query_weights=False)
    out["encoders_max_abs_diff"] = float((Q - exact.encode_queries(qtexts).float()).abs().max())
    half = model.with_precision(fp16_query_weights=True)
    out["encoders_max_abs_diff_fp16_query_weights"] = float((Q - half.encode_queries(qtexts).float()).abs().max())
    if out["encoders_max_abs_diff"] > 1e-4:
        raise SystemExit(f"the two encoders disagree (max abs {out['encoders_max_abs_diff']:.2e}) on {CKPT}: "
                         "rebuild the checkpoint (run without --skip-build)")
    enc_c, enc_o = [], []
    for i, q in enumerate(qtexts[:100]):
        for which in ((0, 1) if i % 2 else (1, 0)):
            t = time.perf_counter()
            searcher.encode([q]) if which == 0 else model.encode_queries([q])
            (enc_c if which == 0 else enc_o).append((time.perf_counter() - t) * 1000)
    out["query_encoding_ms"] = {"colbert_ai": percentiles(enc_c), "ours": percentiles(enc_o)}
    print("encoding", json.dumps(out["query_encoding_ms"]), flush=True)

    # references
    exh_c = colbert_exhaustive(searcher, Q, 100)
    with torch.inference_mode():
        exh_o = [p for p, _ in colbert_top(snap, list(Q), 100, SearchConfig(exhaustive=True))]
    ref = float_reference(model, [t for t in texts], Q, 10)
    out["exhaustive"] = {
        "colbert_ai": {"ndcg@10": ndcg(exh_c, qids, ids, qrels), "float_overlap@10": agreement(exh_c, ref)},
        "ours": {"ndcg@10": ndcg(exh_o, qids, ids, qrels), "float_overlap@10": agreement(exh_o, ref)},
        "float": {"ndcg@10": ndcg(ref, qids, ids, qrels)},
    }
    print("exhaustive", json.dumps(out["exhaustive"]), flush=True)

    def run_ours(qi, k, knobs):
        cfg = SearchConfig() if knobs is None else SearchConfig(ncells=knobs[0], centroid_score_threshold=knobs[1],
                                                                ndocs=knobs[2])
        return colbert_top(snap, [Q[qi]], k, cfg)[0][0]

    def run_colbert(qi, k, knobs):
        colbert_configure(searcher, knobs)
        pids = searcher.dense_search(Q[qi : qi + 1], k)[0]  # (pids, ranks, scores)
        return list(pids)

    rows = []
    for k in args.k:
        for knobs in [None, *KNOBS]:
            libs = ["colbert_ai", "ours"] + (["ours_probed"] if knobs in PROBED else [])
            lat = {lib: [] for lib in libs}
            res = {lib: [] for lib in libs}
            for qi in range(len(qids)):
                for lib in (libs if qi % 2 else libs[::-1]):
                    fn = run_colbert if lib == "colbert_ai" else run_ours
                    kn = PROBED[knobs] if lib == "ours_probed" else knobs
                    t = time.perf_counter()
                    pids = fn(qi, k, kn)
                    lat[lib].append((time.perf_counter() - t) * 1000)
                    res[lib].append(pids)
            for lib in libs:
                exh = exh_c if lib == "colbert_ai" else exh_o
                kn = PROBED[knobs] if lib == "ours_probed" else knobs
                row = {"library": lib, "k": k, "knobs": "defaults" if kn is None else list(kn),
                       "latency_ms": percentiles(lat[lib][1:]), "agreement@10": agreement(res[lib], exh),
                       "ndcg@10": ndcg(res[lib], qids, ids, qrels), "float_overlap@10": agreement(res[lib], ref)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out["runs"] = rows
    # latency ratio at matched agreement, k=10
    curve = [(r["agreement@10"], r["latency_ms"]["p50"]) for r in rows if r["library"] == "colbert_ai" and r["k"] == 10]
    out["ratios_k10"] = []
    for r in rows:
        if r["library"] in ("ours", "ours_probed") and r["k"] == 10:
            ratio, c_lat = ratio_at(r["agreement@10"], r["latency_ms"]["p50"], curve)
            out["ratios_k10"].append({"knobs": r["knobs"], "agreement@10": r["agreement@10"],
                                      "ours_p50": r["latency_ms"]["p50"], "colbert_ai_p50_interpolated": c_lat,
                                      "ratio": ratio})
    return out


def plot(out: dict) -> None:
    plot_latency_vs_agreement(out, {"colbert_ai": ("colbert-ai", "o--"), "ours": ("ours, pruned (same knobs)", "s-"),
                                    "ours_probed": ("ours, probed scoring (default stage 2)", "^-")},
                              ("colbert_ai", "ours", "ours_probed"), "scifact, k={k}", RESULTS / "peers.png")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "build-ours", "build-colbert"])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, nargs="*", default=[10, 100])
    ap.add_argument("--skip-build", action="store_true", help="reuse the indexes of an earlier run")
    args = ap.parse_args(argv)
    if args.step == "build-ours":
        return build_ours()
    if args.step == "build-colbert":
        return build_colbert()
    import colbert_retriever

    PEERS.mkdir(parents=True, exist_ok=True)
    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "colbert_retriever": colbert_retriever.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        import importlib.metadata as md

        info["colbert_ai"] = md.version("colbert-ai")
        info["transformers"] = md.version("transformers")
    except Exception:
        pass
    builds = {}
    if not args.skip_build:
        (PEERS / "float-embeddings.pt").unlink(missing_ok=True)
        make_checkpoint()
        for lib, step in (("ours", "build-ours"), ("colbert_ai", "build-colbert")):
            stdout, wall, peak = run_with_peak([sys.executable, __file__, step])
            builds[lib] = {"wall_s": round(wall, 1), "peak_rss_mb": peak,
                           **json.loads(stdout.strip().splitlines()[-1])}
            print(lib, "build", json.dumps(builds[lib]), flush=True)
        (PEERS / "builds.json").write_text(json.dumps(builds))
    elif (PEERS / "builds.json").exists():
        builds = json.loads((PEERS / "builds.json").read_text())
    out = {"machine": info, "pool_factor": POOL_FACTOR, "builds": builds, **measure(args)}
    write_json("peers.json", out)
    plot(out)
    print(json.dumps(out["ratios_k10"], indent=1))
    print(f"wrote {RESULTS / 'peers.json'} and {RESULTS / 'peers.png'}")


if __name__ == "__main__":
    main()
