"""``make bench-100m``: one box to its limit. Indexes of 1M, 3M, 10M, 30M and 100M token embeddings built through
the embeddings API, then updates at scale on the largest: build time by stage, peak RSS (anonymous vs
file-backed), bytes on disk per token, k=10 p50/p95 over 100 real queries, top-10 agreement with exhaustive search,
serving RSS after open, the latency-vs-tokens exponent; then add 1 % more documents, upsert 1,000, delete 1 %,
``compact()``, each timed with its peak RSS and the agreement after it, while a reader process searches throughout
(every search must return 10 hits, none of them a document deleted in a generation the search could see).

Source (the issue asks which): generated deterministically on the fly, nothing written to disk: the same family as
``make bench-10m`` (``tokens10m.py``). Documents 0..5,182 are the real scifact documents (our default model's
float32 token embeddings, cached as float16 by ``fastplaid.py``; encoded here if missing); document i after them
mixes the tokens of two real documents (a_i, b_i drawn once from seed 0; half the tokens from each) with Gaussian
noise of sigma 0.02 per dimension drawn from a generator seeded by (0, i), re-normalised: any document can be made
again alone, in any order (the k-means sample reads documents at random). 100M tokens as float16 would take 25.6 GB
of disk; generating costs ~0.5 ms a document, timed and reported apart from the library's stages ("generate_s",
inside "encode_s"). The real embeddings are memory-mapped: ~280 MB of the build's file-backed RSS are the source's.

Each build, search and update run is its own process (peak RSS of that process, polled from /proc).

    python benchmarks/tokens100m.py [--sizes 1000000 3000000 10000000 30000000 100000000] [--updates-at N ...]
                                    [--agree-queries 100] [--agree-queries-large 25] [--reuse]

Writes benchmarks/results/tokens100m.json (merging sizes already there unless --fresh) and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, folder_bytes, machine_info, percentiles, write_json  # noqa: E402
from tokens10m import MemPoll  # noqa: E402

DIR = WORK / "tokens100m"
DIM, SEED, SIGMA = 128, 0, 0.02
LARGE = 10_000_000
POOL_FACTOR = 1  # the sizes count stored token embeddings: the rows are indexed as generated
"""From this many tokens on, agreement with exhaustive search is measured on ``--agree-queries-large`` queries
(exhaustive search reads every token: ~2.5 s a query at 100M)."""


def fp_cache() -> Path:
    """The real scifact embeddings (``fastplaid.embeddings``), encoded once if missing."""
    from fastplaid import FP, embeddings

    if not (FP / "docs.npy").exists():
        from colbert_retriever.evaluation import load_corpus, load_qrels, load_queries

        _, texts, _ = load_corpus(SHARED / "scifact")
        queries, qrels = load_queries(SHARED / "scifact"), load_qrels(SHARED / "scifact")
        embeddings(texts, [queries[q] for q in queries if q in qrels][:300])
    return FP


class Source:
    """The deterministic document source (see the module docstring). ``doc(i)``: (n_i, 128) float32."""

    def __init__(self, max_tokens: int):
        fp = fp_cache()
        self.real = np.load(fp / "docs.npy", mmap_mode="r")
        self.rlen = np.load(fp / "lengths.npy").astype(np.int64)
        self.roff = np.concatenate([[0], np.cumsum(self.rlen)])
        r = len(self.rlen)
        m = max(0, int(max_tokens / self.rlen.mean() * 1.05) + 2000 - r)  # + room for the updates
        rng = np.random.default_rng(SEED)
        self.a, self.b = rng.integers(0, r, m), rng.integers(0, r, m)
        self.lengths = np.concatenate([self.rlen, self.rlen[self.a]])
        self.cum = np.cumsum(self.lengths)
        self.generate_s = 0.0

    @property
    def real_docs(self) -> int:
        return len(self.rlen)

    def docs_for(self, tokens: int, start: int = 0) -> int:
        """The number of documents from ``start`` on that hold at least ``tokens`` tokens."""
        before = int(self.cum[start - 1]) if start else 0
        end = int(np.searchsorted(self.cum, before + tokens)) + 1
        if end > len(self.cum):
            raise SystemExit(f"the source plan holds {int(self.cum[-1]):,} tokens; {before + tokens:,} asked")
        return end - start

    def doc(self, i: int) -> np.ndarray:
        t = time.perf_counter()
        r = len(self.rlen)
        if i < r:
            x = np.asarray(self.real[self.roff[i] : self.roff[i + 1]], dtype=np.float32)
        else:
            a, b = int(self.a[i - r]), int(self.b[i - r])
            n = int(self.rlen[a])
            rng = np.random.default_rng((SEED, i))
            pick_b = rng.random(n) < 0.5
            idx = np.where(pick_b, self.roff[b] + np.arange(n) % self.rlen[b], self.roff[a] + np.arange(n))
            x = self.real[idx].astype(np.float32)
            x += SIGMA * rng.standard_normal(x.shape, dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        self.generate_s += time.perf_counter() - t
        return x


class Docs:
    """Documents [lo, hi) of the source: the lazy sequence ``build_from_embeddings`` / ``add_embeddings`` read."""

    def __init__(self, src: Source, lo: int, hi: int):
        self.src, self.lo, self.hi = src, lo, hi

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, j):
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.src.doc(self.lo + j)


def index_path(size: int) -> Path:
    return DIR / f"index-{size}"


def queries(n: int):
    import torch

    fp = fp_cache()
    q = torch.from_numpy(np.load(fp / "queries.npy").astype(np.float32))
    return list(torch.split(q, np.load(fp / "qlengths.npy").tolist()))[:n]


def rss_now() -> dict:
    r = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                r[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"anon": round(r.get("RssAnon", 0), 1), "file": round(r.get("RssFile", 0) + r.get("RssShmem", 0), 1)}


class SelfPeak:
    """This process's peak RSS (anonymous, file-backed) since the last ``take``, polled every 20 ms."""

    def __init__(self):
        self.peak = {"anon": 0.0, "file": 0.0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            now = rss_now()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], now[k])
            time.sleep(0.02)

    def take(self) -> dict:
        out, self.peak = dict(self.peak), rss_now()
        return {"anon_mb": out["anon"], "file_mb": out["file"], "total_mb": round(out["anon"] + out["file"], 1)}

    def stop(self):
        self._stop.set()
        self._t.join()


def agreement(index, Q) -> float:
    from colbert_retriever import SearchConfig

    agree = []
    for q in Q:
        got = {h.id for h in index.search_embeddings([q], 10)[0]}
        ref = {h.id for h in index.search_embeddings([q], 10, config=SearchConfig(exhaustive=True))[0]}
        agree.append(len(ref & got) / max(1, len(ref)))
    return round(float(np.mean(agree)), 4)


# ====================================================================== child steps
def step_build(size: int) -> None:
    from colbert_retriever import Index

    src = Source(size)
    n = src.docs_for(size)
    path = index_path(size)
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    index = Index.build_from_embeddings(path, Docs(src, 0, n), ids=[f"d{i}" for i in range(n)],
                                        name="scifact-synthetic", show_progress=False, pool_factor=POOL_FACTOR)
    build_s = time.perf_counter() - t
    meta = index.metadata
    tokens = meta["counts"]["embeddings"]
    disk = folder_bytes(path)
    print(json.dumps({"docs": n, "tokens": tokens, "build_s": round(build_s, 1),
                      "stages": {**meta["provenance"].get("stages", {}), "generate_s": round(src.generate_s, 1)},
                      "num_centroids": meta["codec"]["num_centroids"], "disk_bytes": disk,
                      "bytes_per_token": round(disk / tokens, 2)}))


def step_search(size: int, n_queries: int, n_agree: int) -> None:
    from colbert_retriever import Index, SearchConfig

    Q = queries(n_queries)
    t = time.perf_counter()
    index = Index.open(index_path(size))
    open_s = time.perf_counter() - t
    after_open = rss_now()
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
    after_search = rss_now()
    ex_lat, agree = [], []
    for q, g in list(zip(Q, got))[:n_agree]:
        t = time.perf_counter()
        ref = {h.id for h in index.search_embeddings([q], 10, config=SearchConfig(exhaustive=True))[0]}
        ex_lat.append((time.perf_counter() - t) * 1000)
        agree.append(len(ref & g) / max(1, len(ref)))
    print(json.dumps({"latency_ms": percentiles(lat), "first_query_ms": round(first_ms, 1), "open_s": round(open_s, 2),
                      "agreement@10": round(float(np.mean(agree)), 4), "agreement_queries": len(agree),
                      "exhaustive_ms": percentiles(ex_lat), "rss_after_open_mb": after_open,
                      "rss_after_search_mb": after_search}))


def step_reader(size: int) -> None:
    """Search the index until the stop file appears; one JSON line per search (generation seen before it, ids,
    ms) in the log; a summary on stdout."""
    from colbert_retriever import Index

    Q = queries(100)
    log, stop = DIR / f"reader-{size}.jsonl", DIR / f"reader-{size}.stop"
    index = Index.open(index_path(size))
    n = errors = 0
    with open(log, "w") as f:
        while not stop.exists():
            q = Q[n % len(Q)]
            gen = index.generation
            t = time.perf_counter()
            try:
                ids = [h.id for h in index.search_embeddings([q], 10)[0]]
                rec = {"gen": gen, "ids": ids, "ms": round((time.perf_counter() - t) * 1000, 2)}
            except Exception as e:  # counted, never hidden: any failed search fails the benchmark's check
                errors += 1
                rec = {"gen": gen, "error": repr(e)[:300]}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            n += 1
    print(json.dumps({"searches": n, "errors": errors}))


def step_updates(size: int, n_agree: int) -> None:
    from colbert_retriever import Index

    rng = np.random.default_rng(1)
    path = index_path(size)
    index = Index.open(path)
    n = len(index)
    src = Source(int(size * 1.03))
    Q = queries(n_agree)
    stop = DIR / f"reader-{size}.stop"
    stop.unlink(missing_ok=True)
    log = DIR / f"reader-{size}.jsonl"
    log.unlink(missing_ok=True)
    reader = subprocess.Popen([sys.executable, __file__, "reader", "--size", str(size)], stdout=subprocess.PIPE,
                              text=True)
    while not (log.exists() and log.stat().st_size):  # the reader has searched once
        if reader.poll() is not None:
            raise SystemExit("the reader process ended before its first search")
        time.sleep(0.2)
    try:
        mem = SelfPeak()
        out = {"before": {"docs": n, "tokens": index.metadata["counts"]["embeddings"],
                          "agreement@10": agreement(index, Q), "rss_mb": rss_now()}}
        m = src.docs_for(size // 100, start=n)

        def op(name, fn):
            mem.take()
            g0 = src.generate_s
            t = time.perf_counter()
            extra = fn() or {}
            s = time.perf_counter() - t
            meta = index.metadata
            out[name] = {"s": round(s, 2), "generate_s": round(src.generate_s - g0, 2), "peak_rss": mem.take(),
                         "generation": meta["generation"], "segments": len(meta["segments"]),
                         "tokens": meta["counts"]["embeddings"], "live": meta["counts"]["live"],
                         "agreement@10": agreement(index, Q), **extra}
            print(name, json.dumps(out[name]), file=sys.stderr, flush=True)

        def add():
            index.add_embeddings(Docs(src, n, n + m), ids=[f"d{i}" for i in range(n, n + m)])
            return {"docs_added": m, "tokens_added": int(src.cum[n + m - 1] - src.cum[n - 1])}

        upserted = sorted(rng.choice(n, min(1000, n // 2), replace=False).tolist())  # 1,000 (fewer in a tiny index)

        def upsert():  # live documents get new embeddings (new synthetic documents' rows)
            k = len(upserted)
            index.add_embeddings(Docs(src, n + m, n + m + k), ids=[f"d{i}" for i in upserted], on_conflict="replace")
            return {"upserted": k}

        doomed = [f"d{i}" for i in sorted(rng.choice(n + m, (n + m) // 100, replace=False).tolist())]

        op("add_1pct", add)
        op("upsert_1000", upsert)
        op("delete_1pct", lambda: {"deleted": index.delete(doomed)})
        delete_gen = out["delete_1pct"]["generation"]
        op("compact", lambda: index.compact())
    finally:  # the reader stops however the updates end
        stop.touch()
    summary = json.loads(reader.communicate()[0].strip().splitlines()[-1])
    mem.stop()
    doomed_set, wrong, short, lat = set(doomed), 0, 0, []
    for line in open(log):
        rec = json.loads(line)
        if "error" in rec:
            continue
        lat.append(rec["ms"])
        short += len(rec["ids"]) != 10
        wrong += rec["gen"] >= delete_gen and bool(doomed_set.intersection(rec["ids"]))
    out["reader"] = {**summary, "short_results": short, "searches_returning_deleted": wrong,
                     "latency_ms_during_updates": percentiles(lat) if lat else None}
    stop.unlink(missing_ok=True)
    print(json.dumps(out))


# ====================================================================== driver
def child(args: list[str]) -> dict:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    with MemPoll(p.pid) as mem:
        stdout, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{args} failed (exit {p.returncode})")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss": mem.peak_split}


def fit_exponent(rows: list[dict]):
    pts = sorted((r["build"]["tokens"], r["search"]["latency_ms"]["p50"]) for r in rows if "build" in r and
                 "search" in r)
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "build", "search", "updates", "reader"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 3_000_000, 10_000_000, 30_000_000,
                                                              100_000_000])
    ap.add_argument("--size", type=int)
    ap.add_argument("--updates-at", nargs="*", type=int, help="sizes to run the updates on (default: the largest)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--agree-queries", type=int, default=100)
    ap.add_argument("--agree-queries-large", type=int, default=25)
    ap.add_argument("--reuse", action="store_true", help="search existing indexes instead of rebuilding them")
    ap.add_argument("--fresh", action="store_true", help="drop the sizes results/tokens100m.json already holds")
    args = ap.parse_args(argv)

    def agree(size):
        return args.agree_queries if size < LARGE else args.agree_queries_large

    if args.step == "build":
        return step_build(args.size)
    if args.step == "search":
        return step_search(args.size, args.queries, agree(args.size))
    if args.step == "reader":
        return step_reader(args.size)
    if args.step == "updates":
        return step_updates(args.size, agree(args.size))
    DIR.mkdir(parents=True, exist_ok=True)
    fp_cache()
    prev = Path(__file__).resolve().parent / "results" / "tokens100m.json"
    out = json.loads(prev.read_text()) if prev.exists() and not args.fresh else {}
    rows = {r["size"]: r for r in out.get("sizes", [])}
    src = Source(max(args.sizes))
    real, syn = src.lengths[: src.real_docs], src.lengths[src.real_docs :]
    out.update({"machine": machine_info(), "pool_factor": POOL_FACTOR,
                "source": {"generator": "on the fly (see tokens100m.py)", "sigma": SIGMA, "seed": SEED,
                           "real_docs": src.real_docs, "real_tokens": int(real.sum()),
                           "length_percentiles": {k: [int(v) for v in np.percentile(x, [10, 50, 90])]
                                                  for k, x in (("real", real), ("synthetic", syn)) if len(x)}}})
    updates_at = args.updates_at if args.updates_at is not None else [max(args.sizes)]
    for size in args.sizes:
        row = {"size": size}
        meta = index_path(size) / "metadata.json"
        reusable = args.reuse and meta.exists() and "build" in rows.get(size, {})
        if reusable and size in updates_at:  # the updates need the index as built (generation 1)
            reusable = json.loads(meta.read_text())["generation"] == 1
        if not reusable:
            row["build"] = child(["build", "--size", str(size)])
            print("build", size, json.dumps(row["build"]), flush=True)
        else:
            row["build"] = rows[size]["build"]
        row["search"] = child(["search", "--size", str(size), "--queries", str(args.queries),
                               "--agree-queries", str(args.agree_queries),
                               "--agree-queries-large", str(args.agree_queries_large)])
        print("search", size, json.dumps(row["search"]), flush=True)
        if size in updates_at:
            row["updates"] = child(["updates", "--size", str(size), "--agree-queries", str(args.agree_queries),
                                    "--agree-queries-large", str(args.agree_queries_large)])
            print("updates", size, json.dumps(row["updates"]), flush=True)
        elif "updates" in rows.get(size, {}) and args.reuse:
            row["updates"] = rows[size]["updates"]
        rows[size] = row
        out["sizes"] = [rows[s] for s in sorted(rows)]
        out["latency_exponent"] = fit_exponent(out["sizes"])
        write_json("tokens100m.json", out)  # after every size: a long run keeps what it measured
    from render import render

    render()
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
