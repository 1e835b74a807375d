"""``make bench-coldstart``: what a new process pays before its answers: import, ``Index.open`` (which loads the
model, imports numba and starts the kernels' compilation or cache load in a background thread), then the first five text
searches (queries of 4 to 32+ tokens: every padded width the default model's queries take), each timed, with the
kernels each ran (the torch twins until the numba kernels are ready); then the same five once the background
thread is done (and whether any of them compiled: numba's compile events). Cases, each in fresh processes:

- numba's cache empty (a new machine: the background thread compiles every kernel group);
- numba's cache warm (the folder the previous case filled: the thread loads);
- warm-up off (``COLBERT_RETRIEVER_WARM_KERNELS=0``, empty cache: each search compiles what it needs, the behaviour
  before the background thread);
- torch kernels (``kernels="torch"``: no numba at all, the reference for the first searches' speed).

Each case runs ``--repeats`` times; medians. The index is scifact with our default model (``make bench``'s, else
one of 1,000 documents built here).

    python benchmarks/coldstart.py [--repeats 3]

Writes benchmarks/results/coldstart.json. Target (issue #36): with an empty cache the first search returns within
1 s of a warm search's time, and no later search compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, write_json  # noqa: E402

QUERIES = [
    "Vitamin D deficiency",
    "ALDH1 expression is associated with poorer prognosis for breast cancer.",
    "Vitamin D deficiency is associated with an increased risk of multiple sclerosis in adults.",
    "The risk of cancer is lower in individuals with a history of alcohol consumption, smoking and obesity "
    "than in those without them.",
    "Antiretroviral therapy reduces rates of tuberculosis across a broad range of CD4 strata in HIV-infected "
    "adults living in sub-Saharan Africa, according to a large cohort study with long follow-up.",
]
"""Five queries of increasing length: 8, 16 and 32 padded columns with the default model (32 tokens at most)."""


def child(path: str, kernels: str) -> None:
    t0 = time.perf_counter()
    from colbert_retriever import Index
    from colbert_retriever.kernels import dispatch

    t1 = time.perf_counter()
    index = Index.open(path)
    t2 = time.perf_counter()
    first, first_kernels, widths = [], [], []
    for q in QUERIES:
        tr = []
        t = time.perf_counter()
        hits = index.search(q, k=10, kernels=kernels, trace=tr)
        first.append(round((time.perf_counter() - t) * 1000, 1))
        first_kernels.append(tr[0].kernels)
        widths.append(int((index.model.encode_queries([q])[0].abs().sum(-1) > 0).sum()))
        assert len(hits) == 10
    dispatch.wait_for_kernels()
    ready = time.perf_counter() - t2
    from numba.core import event  # (imported here: before Index.open it would move numba's import out of open_s)

    with event.install_recorder("numba:compile") as rec:
        later, later_kernels = [], []
        for q in QUERIES:
            tr = []
            t = time.perf_counter()
            index.search(q, k=10, kernels=kernels, trace=tr)
            later.append(round((time.perf_counter() - t) * 1000, 1))
            later_kernels.append(tr[0].kernels)
    print(json.dumps({"import_s": round(t1 - t0, 3), "open_s": round(t2 - t1, 3), "first_five_ms": first,
                      "first_five_kernels": first_kernels, "query_tokens": widths,
                      "warm_up_done_s": round(ready, 2), "later_five_ms": later, "later_five_kernels": later_kernels,
                      "compilations_after_warm_up": len(rec.buffer),
                      # the keys of the previous version of this benchmark (BENCHMARKS.md's table)
                      "first_search_s": round(first[0] / 1000, 3), "second_search_s": round(first[1] / 1000, 4),
                      "open_plus_first_search_s": round(t2 - t1 + first[0] / 1000, 3)}))


def index_path() -> Path:
    for p in (WORK / "scifact-nbits2", WORK / "fastplaid" / "ours", WORK / "coldstart-scifact"):
        if (p / "metadata.json").exists():
            return p
    path = WORK / "coldstart-scifact"
    from colbert_retriever import Index
    from colbert_retriever.evaluation import load_corpus

    ids, texts, _ = load_corpus(SHARED / "scifact")
    Index.build(path, texts[:1000], ids=ids[:1000], if_exists="overwrite")
    return path


def run(path: Path, kernels: str, cache: str, warm: bool = True) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "COLBERT_RETRIEVER_WARM_KERNELS": "1" if warm else "0"}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "child", str(path), kernels], env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_wall_s": round(wall, 3)}


def _median(rows: list[dict]) -> dict:
    out = {}
    for key, v in rows[0].items():
        if isinstance(v, list) and v and isinstance(v[0], (int, float)):
            out[key] = [round(float(np.median([r[key][i] for r in rows])), 1) for i in range(len(v))]
        elif isinstance(v, (int, float)):
            out[key] = round(float(np.median([r[key] for r in rows])), 3)
        else:
            out[key] = v
    return out


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--index", type=Path, help="an index built with the default model (default: make bench's)")
    args = ap.parse_args(argv)
    path = args.index or index_path()
    name = str(path.relative_to(WORK) if path.is_relative_to(WORK) else path)
    out = {"machine": machine_info(), "index": name, "queries": QUERIES, "cases": {}}
    cases: dict[str, list] = {"numba, empty cache": [], "numba, warm cache": [], "warm-up off, empty cache": [],
                              "torch kernels": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cases["numba, empty cache"].append(run(path, "auto", cache))
            cases["numba, warm cache"].append(run(path, "auto", cache))
        with tempfile.TemporaryDirectory() as cache:
            cases["warm-up off, empty cache"].append(run(path, "auto", cache, warm=False))
            cases["torch kernels"].append(run(path, "torch", cache))
    for name, rows in cases.items():
        out["cases"][name] = _median(rows)
        print(name, json.dumps(out["cases"][name]), flush=True)
    write_json("coldstart.json", out)


if __name__ == "__main__":
    main()
