"""``make bench-coldstart``: what a new process pays before its first answer: import, ``Index.open`` (which loads the
model), and the first text search (query encoding + PLAID with the numba kernels), with numba's compiled-code cache
cold (an empty ``NUMBA_CACHE_DIR``: the first search compiles) and warm (the same folder again: the kernels load from
disk), and with the torch kernels for reference. Each case runs ``--repeats`` times, each in a fresh process; the
index is scifact with our default model (the one ``benchmarks/fastplaid.py`` builds, or a 1,000-document one
built here).

    python benchmarks/coldstart.py [--repeats 3]

Writes benchmarks/results/coldstart.json. Target (issue #29): open + first search <= 3 s with a warm cache.
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

QUERY = "Vitamin D deficiency is associated with an increased risk of multiple sclerosis."


def child(path: str, kernels: str) -> None:
    t0 = time.perf_counter()
    from colbert_retriever import Index

    t1 = time.perf_counter()
    index = Index.open(path)
    t2 = time.perf_counter()
    hits = index.search(QUERY, k=10, kernels=kernels)
    t3 = time.perf_counter()
    index.search(QUERY, k=10, kernels=kernels)
    t4 = time.perf_counter()
    assert len(hits) == 10
    print(json.dumps({"import_s": round(t1 - t0, 3), "open_s": round(t2 - t1, 3), "first_search_s": round(t3 - t2, 3),
                      "second_search_s": round(t4 - t3, 4), "open_plus_first_search_s": round(t3 - t1, 3)}))


def index_path() -> Path:
    fp = WORK / "fastplaid" / "ours"
    if (fp / "metadata.json").exists():
        return fp
    path = WORK / "coldstart-scifact"
    if not (path / "metadata.json").exists():
        from colbert_retriever import Index
        from colbert_retriever.evaluation import load_corpus

        ids, texts, _ = load_corpus(SHARED / "scifact")
        Index.build(path, texts[:1000], ids=ids[:1000], if_exists="overwrite")
    return path


def run(path: Path, kernels: str, cache: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "child", str(path), kernels], env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_wall_s": round(wall, 3)}


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    path = index_path()
    out = {"machine": machine_info(), "index": str(path.relative_to(WORK)), "cases": {}}
    cases: dict[str, list] = {"numba, cold cache": [], "numba, warm cache": [], "torch kernels": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cases["numba, cold cache"].append(run(path, "numba", cache))
            cases["numba, warm cache"].append(run(path, "numba", cache))
            cases["torch kernels"].append(run(path, "torch", cache))
    for name, rows in cases.items():
        out["cases"][name] = {key: round(float(np.median([r[key] for r in rows])), 3) for key in rows[0]}
        print(name, json.dumps(out["cases"][name]), flush=True)
    write_json("coldstart.json", out)


if __name__ == "__main__":
    main()
