"""``make bench-10m``: an index of 10M token embeddings on this box, built through the embeddings API, with build
time, peak RSS (anonymous vs file-backed), disk, and k=10 p50/p95 + top-10 agreement with exhaustive search at 1M,
3M and 10M tokens, and the latency-vs-size exponent.

Source (say which, the issue asks): the first 1.09M tokens are *real*: our default model's float embeddings of the
5,183 scifact documents (cached by ``benchmarks/fastplaid.py``; encoded here if missing). The rest is a clustered
generator built on them: each synthetic document takes a real document's length, draws each token from one of two
random real documents (half from each, so no synthetic document duplicates a real one), and adds Gaussian noise of
``--sigma`` per dimension before re-normalising (0.02: at 0.03, on a 1.5M-token trial, synthetic tokens sat further
from their nearest centroid than real ones, cosine 0.820 vs 0.853). The JSON reports the statistics that matter for
PLAID side by side, measured on real and synthetic tokens with each index's own codec: cosine to the nearest
centroid (what residual compression and centroid pruning see) and the document length distribution. Queries: 100
real scifact queries (our model's embeddings).

The source lives in one raw float16 file read with ``os.pread`` a document at a time (no memory map), so the build's
RSS is the library's, not the source's. Each build and each search run is its own process.

    python benchmarks/tokens10m.py [--sizes 1000000 3000000 10000000] [--queries 100] [--sigma 0.02]

Writes benchmarks/results/tokens10m.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, PeakRSS, folder_bytes, machine_info, percentiles, write_json  # noqa: E402

DIR = WORK / "tokens10m"
SOURCE, LENGTHS = DIR / "source.f16", DIR / "lengths.npy"
DIM = 128
POOL_FACTOR = 1  # the sizes count stored token embeddings: the rows are indexed as generated


class RawDocs:
    """Document i's rows of the raw float16 source, read with ``os.pread`` (a lazy sequence for
    ``build_from_embeddings``)."""

    def __init__(self, n_docs: int):
        lengths = np.load(LENGTHS)[:n_docs]
        self.off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.fd = os.open(SOURCE, os.O_RDONLY)

    def __len__(self):
        return len(self.off) - 1

    def __getitem__(self, i):
        a, b = int(self.off[i]), int(self.off[i + 1])
        buf = os.pread(self.fd, (b - a) * DIM * 2, a * DIM * 2)
        return np.frombuffer(buf, dtype=np.float16).reshape(b - a, DIM).astype(np.float32)


def generate(total: int, sigma: float) -> dict:
    """Write the source (real scifact tokens first, then synthetic documents) up to ``total`` tokens."""
    from fastplaid import FP, embeddings

    from colbert_retriever.evaluation import load_corpus, load_queries, load_qrels

    ids, texts, _ = load_corpus(SHARED / "scifact")
    queries, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
    qids = [q for q in queries if q in qrels][:300]
    embeddings(texts, [queries[q] for q in qids])  # cached by fastplaid.py (or encoded now)
    real = np.load(FP / "docs.npy")
    rlen = np.load(FP / "lengths.npy").astype(np.int64)
    roff = np.concatenate([[0], np.cumsum(rlen)])
    DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = list(rlen)
    tokens = int(rlen.sum())
    tmp = SOURCE.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(real.tobytes())
        while tokens < total:
            batch_docs = 2000
            a = rng.integers(0, len(rlen), batch_docs)
            b = rng.integers(0, len(rlen), batch_docs)
            rows = []
            for da, db in zip(a, b):
                n = int(rlen[da])
                # each token: position j of doc a or of doc b (wrapping), half each
                pick_b = rng.random(n) < 0.5
                ia = roff[da] + np.arange(n)
                ib = roff[db] + np.arange(n) % rlen[db]
                rows.append(np.where(pick_b, ib, ia))
                lengths.append(n)
            idx = np.concatenate(rows)
            x = real[idx].astype(np.float32)
            x += rng.normal(0.0, sigma, x.shape).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype(np.float16).tobytes())
            tokens += len(idx)
            print(f"\rgenerated {tokens / 1e6:.1f}M tokens", end="", flush=True)
        f.flush()
        os.fsync(f.fileno())
    print()
    os.replace(tmp, SOURCE)
    np.save(LENGTHS, np.array(lengths, dtype=np.int64))
    info = {"real_docs": len(rlen), "real_tokens": int(rlen.sum()), "docs": len(lengths), "tokens": tokens,
            "sigma": sigma}
    (DIR / "source.json").write_text(json.dumps(info))
    return info


def docs_for(size: int) -> int:
    """The smallest number of leading documents with at least ``size`` tokens."""
    cum = np.cumsum(np.load(LENGTHS))
    return int(min(len(cum), np.searchsorted(cum, size) + 1))


class MemPoll(PeakRSS):
    """Peak RssAnon / RssFile (+ shared memory) / their total of one process, from /proc/PID/status."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self.pid, self.peak_split = pid, {"anon_mb": 0.0, "file_mb": 0.0, "total_mb": 0.0}

    def _sample(self) -> None:
        r = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    r[line.split(":")[0]] = int(line.split()[1]) / 1024
        anon, file = r.get("RssAnon", 0), r.get("RssFile", 0) + r.get("RssShmem", 0)
        for key, v in (("anon_mb", anon), ("file_mb", file), ("total_mb", anon + file)):
            self.peak_split[key] = max(self.peak_split[key], round(v, 1))


def child(args: list[str]) -> dict:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    with MemPoll(p.pid) as mem:
        stdout, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{args} failed (exit {p.returncode})")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss": mem.peak_split}


def step_build(size: int) -> None:
    from colbert_retriever import Index

    n = docs_for(size)
    path = DIR / f"index-{size}"
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    index = Index.build_from_embeddings(path, RawDocs(n), ids=[f"d{i}" for i in range(n)], name="scifact-synthetic",
                                        show_progress=False, pool_factor=POOL_FACTOR)
    build_s = time.perf_counter() - t
    meta = index.metadata
    print(json.dumps({"docs": n, "tokens": meta["counts"]["embeddings"], "build_s": round(build_s, 1),
                      "stages": meta["provenance"].get("stages"), "num_centroids": meta["codec"]["num_centroids"],
                      "disk_bytes": folder_bytes(path)}))


def step_search(size: int, n_queries: int) -> None:
    import torch

    from fastplaid import FP

    from colbert_retriever import Index, SearchConfig

    q = np.load(FP / "queries.npy").astype(np.float32)
    Q = torch.split(torch.from_numpy(q), np.load(FP / "qlengths.npy").tolist())[:n_queries]
    index = Index.open(DIR / f"index-{size}")
    t = time.perf_counter()
    index.search_embeddings([Q[0]], 10)
    first_ms = (time.perf_counter() - t) * 1000
    for q in Q[1:6]:
        index.search_embeddings([q], 10)
    lat, got = [], []
    for q in Q:
        t = time.perf_counter()
        hits = index.search_embeddings([q], 10)[0]
        lat.append((time.perf_counter() - t) * 1000)
        got.append({h.id for h in hits})
    status = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open("/proc/self/status")
              if line.startswith(("RssAnon:", "RssFile:"))}
    ex_lat, agree = [], []
    for q, g in zip(Q, got):
        t = time.perf_counter()
        ref = {h.id for h in index.search_embeddings([q], 10, config=SearchConfig(exhaustive=True))[0]}
        ex_lat.append((time.perf_counter() - t) * 1000)
        agree.append(len(ref & g) / max(1, len(ref)))
    # statistics of real vs synthetic tokens under this index's codec: cosine to the nearest centroid
    codec = index.snapshot().arrays.codec
    src = RawDocs(docs_for(size))
    real_tokens = json.loads((DIR / "source.json").read_text())["real_tokens"]
    rng = np.random.default_rng(1)

    def cos_to_centroid(lo, hi):
        if hi <= lo:
            return None
        rows = np.sort(rng.integers(lo, hi, 20000))
        x = torch.from_numpy(np.stack([np.frombuffer(os.pread(src.fd, DIM * 2, int(r) * DIM * 2), dtype=np.float16)
                                       for r in rows]).astype(np.float32))
        c = codec.centroids.float()
        return round(float((x @ c.T).max(1).values.mean()), 4)

    total = int(src.off[-1])
    print(json.dumps({"latency_ms": percentiles(lat), "first_query_ms": round(first_ms, 1),
                      "agreement@10": round(float(np.mean(agree)), 4), "exhaustive_ms": percentiles(ex_lat),
                      "rss_after_search_mb": {"anon": round(status.get("RssAnon", 0), 1),
                                              "file": round(status.get("RssFile", 0), 1)},
                      "cos_to_centroid": {"real": cos_to_centroid(0, min(real_tokens, total)),
                                          "synthetic": cos_to_centroid(real_tokens, total)}}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "build", "search"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 3_000_000, 10_000_000])
    ap.add_argument("--size", type=int)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--reuse", action="store_true", help="keep an existing source file and indexes")
    args = ap.parse_args(argv)
    if args.step == "build":
        return step_build(args.size)
    if args.step == "search":
        return step_search(args.size, args.queries)
    src_info = DIR / "source.json"
    if args.reuse and src_info.exists() and json.loads(src_info.read_text())["tokens"] >= max(args.sizes):
        source = json.loads(src_info.read_text())
    else:
        source = generate(max(args.sizes), args.sigma)
    lengths = np.load(LENGTHS)
    real = lengths[: source["real_docs"]]
    syn = lengths[source["real_docs"]:]
    source["length_percentiles"] = {name: [int(v) for v in np.percentile(x, [10, 50, 90])] for name, x in
                                    (("real", real), ("synthetic", syn)) if len(x)}
    out = {"machine": machine_info(), "pool_factor": POOL_FACTOR, "source": source, "sizes": []}
    for size in args.sizes:
        row = {"size": size}
        if not (args.reuse and (DIR / f"index-{size}").exists()):
            row["build"] = child(["build", "--size", str(size)])
            print("build", json.dumps(row["build"]), flush=True)
        row["search"] = child(["search", "--size", str(size), "--queries", str(args.queries)])
        print("search", json.dumps(row["search"]), flush=True)
        out["sizes"].append(row)
    pts = [(r["build"]["tokens"] if "build" in r else r["size"], r["search"]["latency_ms"]["p50"])
           for r in out["sizes"]]
    if len(pts) >= 2:
        x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        out["latency_exponent"] = round(float(np.polyfit(x, y, 1)[0]), 3)
    write_json("tokens10m.json", out)
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
