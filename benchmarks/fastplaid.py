"""``make bench-peers`` (second half): our search against fast-plaid 1.7 (PyLate's multi-vector backend, a Rust wheel
pinned to torch 2.11, so it runs in its own virtualenv: ``benchmarks/peers/setup_fastplaid.sh``) on scifact.

fast-plaid takes embeddings, not text, so both libraries index the *same* float embeddings: our default model's
scifact documents (float32), at 2 bits each; ours through the embeddings API (``Index.build_from_embeddings``),
fast-plaid through ``FastPlaid.create``, each build in its own process (build time, peak RSS). Queries: our model's
float32 query embeddings, the same for both. Retrieval is timed one query at a time, queries interleaved between
the libraries (fast-plaid answers in its own process; each side times its own call), the order alternated, over a
knob sweep: ours (ncells, threshold, ndocs) = (1, 0.5, 256), (2, 0.45, 1024), (4, 0.4, 4096), (8, 0.4, 8192) and
fast-plaid (n_ivf_probe, n_full_scores) = (ncells, ndocs // 4): both then score the same number of documents
exactly; each library's defaults; our default stage 2 (probed scoring) at comparable work; and fast-plaid's batched
mode (all queries in one call, the way its CPU path is meant to be used). Measured for k=10 and k=100: top-10
agreement with each library's own exhaustive search and with exact float MaxSim over the uncompressed embeddings,
nDCG@10, and our p50 over fast-plaid's at matched agreement (interpolated on its curve).

    python benchmarks/fastplaid.py [--queries 300] [--skip-build | --rebuild-ours]

Writes benchmarks/results/fastplaid.json and fastplaid.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, ROOT, SHARED, WORK, PeakRSS, machine_info, percentiles,  # noqa: E402
                    plot_latency_vs_agreement, write_json)

from colbert_retriever import Index, SearchConfig, load_model  # noqa: E402
from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries, metrics  # noqa: E402
from colbert_retriever.kernels.scoring import maxsim_packed  # noqa: E402
from colbert_retriever.codec.strided import offsets_from_lengths  # noqa: E402

FP = WORK / "fastplaid"
FP_VENV = WORK / "fastplaid-venv"
KNOBS = [(1, 0.5, 256), (2, 0.45, 1024), (4, 0.4, 4096), (8, 0.4, 8192)]
PROBED = {(1, 0.5, 256): (4, None, 256), (2, 0.45, 1024): (8, None, 1024), (4, 0.4, 4096): (16, None, 4096),
          (8, 0.4, 8192): (32, None, 8192)}
FP_DEFAULTS = (8, 4096)
NBITS = 2
POOL_FACTOR = 1  # fast-plaid is given every token: ours unpooled too, like with like


class FastPlaidWorker:
    def __init__(self):
        py = FP_VENV / "bin" / "python"
        if not py.exists():
            sys.exit(f"{py} is missing: run benchmarks/peers/setup_fastplaid.sh first (make bench-peers does)")
        self.proc = subprocess.Popen([str(py), str(ROOT / "benchmarks" / "peers" / "fastplaid_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def __call__(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fast-plaid worker died (see its stderr above)")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def close(self):
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(60)


def embeddings(texts: list[str], qtexts: list[str]):
    """Our model's float32 document and query embeddings, cached (packed float16 on disk: the values the float32
    encoder produced, rounded once, the same input for both libraries)."""
    FP.mkdir(parents=True, exist_ok=True)
    files = [FP / n for n in ("docs.npy", "lengths.npy", "queries.npy", "qlengths.npy")]
    if not all(f.exists() for f in files):
        model = load_model("default", dtype="float32")
        embs, lengths = model.encode_documents_packed(texts, batch_size=32, show_progress=True)
        np.save(files[0], embs.numpy().astype(np.float16))
        np.save(files[1], lengths.numpy())
        Q = model.encode_queries(qtexts)
        qs = [q[q.abs().sum(-1) > 0] for q in Q]
        np.save(files[2], torch.cat(qs).numpy().astype(np.float16))
        np.save(files[3], np.array([q.shape[0] for q in qs]))
    docs = torch.from_numpy(np.load(files[0]).astype(np.float32))
    lengths = torch.from_numpy(np.load(files[1]))
    qs = torch.split(torch.from_numpy(np.load(files[2]).astype(np.float32)), np.load(files[3]).tolist())
    return docs, lengths, list(qs)


class PackedDocs:
    """Document i's rows of the packed embeddings (a lazy sequence for ``build_from_embeddings``)."""

    def __init__(self, embs: np.ndarray, lengths: np.ndarray):
        self.embs, self.off = embs, np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self):
        return len(self.off) - 1

    def __getitem__(self, i):
        return np.asarray(self.embs[self.off[i] : self.off[i + 1]], dtype=np.float32)


def build_ours_step(path: str):
    """Subprocess: our index from the cached embeddings (peak RSS measured by the parent)."""
    ids, texts, _ = load_corpus(SHARED / "scifact")
    embs = np.load(FP / "docs.npy", mmap_mode="r")
    t = time.perf_counter()
    Index.build_from_embeddings(path, PackedDocs(embs, np.load(FP / "lengths.npy")), ids=ids, texts=texts,
                                model=load_model("default", dtype="float32"), nbits=NBITS, if_exists="overwrite",
                                show_progress=False, pool_factor=POOL_FACTOR)
    print(json.dumps({"build_s": round(time.perf_counter() - t, 2)}))


def sizes(ours: Path, fast_plaid: Path, tokens: int) -> dict:
    """Bytes per token on disk, by part: the compressed tokens (centroid ids + residuals), everything but the
    stored texts, and the whole folder (ours also holds the texts and metadata in SQLite; fast-plaid stores none)."""
    def total(folder, pred=lambda name: True):
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and pred(f.name))

    def per_token(n):
        return round(n / tokens, 1)

    return {"ours_codes_residuals": per_token(total(ours, lambda n: n.endswith((".codes.npy", ".residuals.npy")))),
            "ours_inverse_norms": per_token(total(ours, lambda n: n.endswith(".invnorms.npy"))),
            "ours_without_texts": per_token(total(ours, lambda n: not n.endswith(".sqlite"))),
            "ours_bytes_per_token": per_token(total(ours)),
            "fast_plaid_codes_residuals": per_token(total(fast_plaid, lambda n: n.startswith(("merged_codes.npy",
                                                                                              "merged_residuals.npy")))),
            "fast_plaid_bytes_per_token": per_token(total(fast_plaid)),
            "ours_kmeans_sample_tokens": json.loads((ours / "metadata.json").read_text())["codec"]["config"][
                "kmeans_sample_tokens"]}


def agreement(runs, refs, k=10) -> float:
    return round(float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(runs, refs)])), 4)


def ratio_at(agree: float, lat: float, curve: list) -> tuple:
    pts = sorted(curve)
    for (a0, l0), (a1, l1) in zip(pts, pts[1:]):
        if a0 <= agree <= a1:
            other = l0 if a1 == a0 else l0 + (l1 - l0) * (agree - a0) / (a1 - a0)
            return round(lat / other, 3), round(other, 2)
    if pts and agree >= pts[-1][0] - 1e-9 and agree <= pts[-1][0] + 1e-9:
        return round(lat / pts[-1][1], 3), pts[-1][1]
    return None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "build-ours", "sizes"],
                    help="sizes: re-measure the size breakdown of the indexes on disk into the existing JSON")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, nargs="*", default=[10, 100])
    ap.add_argument("--skip-build", action="store_true", help="reuse both indexes of an earlier run")
    ap.add_argument("--rebuild-ours", action="store_true",
                    help="rebuild our index only (e.g. after a codec change) and reuse fast-plaid's earlier build")
    args = ap.parse_args(argv)
    ours_path = FP / "ours"
    if args.step == "build-ours":
        return build_ours_step(str(ours_path))
    if args.step == "sizes":
        out = json.loads((RESULTS / "fastplaid.json").read_text())
        out["sizes"] = {**out["sizes"], **sizes(ours_path, FP / "fast-plaid", out["tokens"])}
        write_json("fastplaid.json", out)
        return print(json.dumps(out["sizes"]))
    ids, texts, _ = load_corpus(SHARED / "scifact")
    queries, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
    qids = [q for q in queries if q in qrels][: args.queries]
    docs, lengths, Q = embeddings(texts, [queries[q] for q in qids])
    worker = FastPlaidWorker()
    out = {"machine": machine_info(), "pool_factor": POOL_FACTOR, "queries": len(qids), "documents": len(texts),
           "tokens": int(lengths.sum()), "nbits": NBITS, "builds": {}}
    builds_file = FP / "builds.json"
    reuse_fp = (args.skip_build or args.rebuild_ours) and builds_file.exists()
    if reuse_fp:
        out["builds"] = json.loads(builds_file.read_text())
    if not (args.skip_build and reuse_fp):
        p = subprocess.Popen([sys.executable, __file__, "build-ours"], stdout=subprocess.PIPE, text=True)
        with PeakRSS(p.pid) as peak:
            stdout, _ = p.communicate()
        out["builds"]["ours"] = {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": peak.peak_mb,
                                 "date": machine_info()["date"]}
        builds_file.write_text(json.dumps(out["builds"]))
    if not reuse_fp:
        with PeakRSS(worker.proc.pid) as peak:
            r = worker(cmd="build", dir=str(FP / "fast-plaid"), docs=str(FP / "docs.npy"),
                       lengths=str(FP / "lengths.npy"), nbits=NBITS)
        out["builds"]["fast_plaid"] = {**r, "peak_rss_mb": peak.peak_mb, "date": machine_info()["date"]}
        builds_file.write_text(json.dumps(out["builds"]))
    print("builds", json.dumps(out["builds"]), flush=True)
    info = worker(cmd="open", dir=str(FP / "fast-plaid"), queries=str(FP / "queries.npy"),
                  qlengths=str(FP / "qlengths.npy"))
    index = Index.open(ours_path)
    from colbert_retriever.search import retrieval

    snap = index.snapshot()
    K_fp = info["num_partitions"] or 1 << 16
    out["sizes"] = {**sizes(ours_path, FP / "fast-plaid", out["tokens"]),
                    "ours_centroids": index.metadata["codec"]["num_centroids"], "fast_plaid_centroids": K_fp}

    def ours(i, k, knobs):
        cfg = SearchConfig() if knobs is None else SearchConfig(*knobs)
        req = retrieval.Request.make(k, config=cfg)
        with torch.inference_mode():
            return retrieval.colbert(snap, [Q[i]], k, req, index.model.precision, None)[0][0]

    def fp(i, k, knobs):
        probe, full = knobs
        r = worker(cmd="search", i=i, k=k, probe=probe, full=full)
        return r["pids"], r["ms"]

    # references: each library's own exhaustive search, and exact float MaxSim over the uncompressed embeddings
    kmax = max(args.k)
    ref_float = maxsim_packed(torch.nn.utils.rnn.pad_sequence(Q, batch_first=True), docs,
                              offsets_from_lengths(lengths)).topk(kmax, dim=1).indices.tolist()
    exh = {"ours": [ours(i, kmax, (None, None, None, True)) for i in range(len(qids))],
           "fast_plaid": [fp(i, kmax, (K_fp, len(texts)))[0] for i in range(len(qids))]}

    def ndcg(runs):
        return round(metrics({q: [ids[p] for p in r] for q, r in zip(qids, runs)}, {q: qrels[q] for q in qids})[
            "ndcg@10"], 4)

    out["exhaustive"] = {lib: {"ndcg@10": ndcg(r), "float_overlap@10": agreement(r, ref_float)}
                         for lib, r in exh.items()}
    out["exhaustive"]["float"] = {"ndcg@10": ndcg(ref_float)}
    print("exhaustive", json.dumps(out["exhaustive"]), flush=True)
    rows = []
    for k in args.k:
        for knobs in [None, *KNOBS]:
            plan = {"ours": knobs, "fast_plaid": FP_DEFAULTS if knobs is None else (knobs[0], knobs[2] // 4)}
            if knobs is not None:
                plan["ours_probed"] = PROBED[knobs]
            lat = {lib: [] for lib in plan}
            res = {lib: [] for lib in plan}
            for i in range(len(qids)):
                for lib in (list(plan) if i % 2 else list(plan)[::-1]):
                    if lib == "fast_plaid":
                        pids, ms = fp(i, k, plan[lib])
                    else:
                        t = time.perf_counter()
                        pids = ours(i, k, plan[lib])
                        ms = (time.perf_counter() - t) * 1000
                    lat[lib].append(ms)
                    res[lib].append(pids)
            for lib in plan:
                ref = exh["fast_plaid" if lib == "fast_plaid" else "ours"]
                row = {"library": lib, "k": k, "knobs": "defaults" if plan[lib] is None else list(plan[lib]),
                       "latency_ms": percentiles(lat[lib][1:]), "agreement@10": agreement(res[lib], ref),
                       "float_overlap@10": agreement(res[lib], ref_float), "ndcg@10": ndcg(res[lib])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for probe, full in [FP_DEFAULTS, *((kn[0], kn[2] // 4) for kn in KNOBS)]:
            b = worker(cmd="batch", k=k, probe=probe, full=full)
            rows.append({"library": "fast_plaid_batched", "k": k, "knobs": [probe, full],
                         "latency_ms": {"p50": round(b["ms_per_query"], 2), "p95": None},
                         "agreement@10": agreement(b["pids"], exh["fast_plaid"]),
                         "float_overlap@10": agreement(b["pids"], ref_float), "ndcg@10": ndcg(b["pids"])})
            print(json.dumps(rows[-1]), flush=True)
    worker.close()
    out["runs"] = rows
    out["ratios"] = []
    for k in args.k:
        curve = [(r["agreement@10"], r["latency_ms"]["p50"]) for r in rows if r["library"] == "fast_plaid"
                 and r["k"] == k]
        for r in rows:
            if r["library"] in ("ours", "ours_probed") and r["k"] == k:
                ratio, other = ratio_at(r["agreement@10"], r["latency_ms"]["p50"], curve)
                out["ratios"].append({"k": k, "library": r["library"], "knobs": r["knobs"],
                                      "agreement@10": r["agreement@10"], "ours_p50": r["latency_ms"]["p50"],
                                      "fast_plaid_p50_interpolated": other, "ratio": ratio})
    write_json("fastplaid.json", out)
    plot(out)
    print(json.dumps(out["ratios"], indent=1))


def plot(out: dict) -> None:
    names = {"fast_plaid": ("fast-plaid, one query per call", "o--"), "fast_plaid_batched":
             ("fast-plaid, all queries in one call (per query)", "x:"), "ours": ("ours, pruned (same knobs)", "s-"),
             "ours_probed": ("ours, probed scoring (default stage 2)", "^-")}
    plot_latency_vs_agreement(out, names, ("ours", "fast_plaid"), "scifact, k={k}, same embeddings, 2 bits",
                              RESULTS / "fastplaid.png", fontsize=7)


if __name__ == "__main__":
    main()
