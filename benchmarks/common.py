"""Helpers shared by the benchmark scripts (not collected by pytest)."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(os.environ.get("BENCH_WORKDIR", ROOT / "benchmarks" / "work"))


def wordnet_sample(metas: list, n_queries: int) -> tuple[list[int], list[str]]:
    """The scale benchmark's WordNet draw (seed 0): a shuffled order of the glosses (its first n are the n-passage
    collection) and ``n_queries`` queries, each a sampled gloss's first lemma."""
    rng = random.Random(0)
    order = list(range(len(metas)))
    rng.shuffle(order)
    return order, [metas[i]["title"].split(",")[0].replace("_", " ") for i in rng.sample(range(len(metas)), n_queries)]


def machine_info() -> dict:
    import torch

    import colbert_retriever
    from colbert_retriever.indexing.pooling import DEFAULT_POOL_FACTOR

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "colbert_retriever": colbert_retriever.__version__, "pool_factor_default": DEFAULT_POOL_FACTOR,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


class PeakRSS:
    """Polls a process's RSS (its own by default) in a thread; ``peak_mb`` after the ``with`` block."""

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        """One poll (subclasses track other figures)."""
        rss = self.proc.memory_info().rss
        for c in self.proc.children(recursive=True):
            rss += c.memory_info().rss
        self.peak = max(self.peak, rss)

    def _run(self):
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:
                break
            time.sleep(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def run_with_peak(cmd: list[str]) -> tuple[str, float, float]:
    """Run a command; return (stdout, seconds, peak RSS MB of the child)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(p.pid) as peak:
        out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return out, time.perf_counter() - t, peak.peak_mb


def percentiles(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2)}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=1))
    return path


def plot_latency_vs_agreement(out: dict, names: dict, starred: tuple, title: str, path: Path,
                              fontsize: int = 8) -> None:
    """Two panels (each k of ``out["runs"]``): retrieval p50 against top-10 agreement with the library's own
    exhaustive search, one line per library of ``names`` ({library: (label, style)}), each library of ``starred``
    at its defaults as a star. Used by the peer benchmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k in zip(axes, sorted({r["k"] for r in runs})):
        for lib, (label, style) in names.items():
            pts = sorted((r["agreement@10"], r["latency_ms"]["p50"]) for r in runs
                         if r["library"] == lib and r["k"] == k and r["knobs"] != "defaults")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        for lib in starred:
            d = [r for r in runs if r["library"] == lib and r["k"] == k and r["knobs"] == "defaults"]
            if d:
                ax.plot(d[0]["agreement@10"], d[0]["latency_ms"]["p50"], "*", ms=12, label=f"{lib} defaults")
        ax.set_xlabel("top-10 agreement with own exhaustive search")
        ax.set_ylabel("retrieval p50 ms (excl. encoding)")
        ax.set_yscale("log")
        ax.set_title(title.format(k=k))
        ax.legend(fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
