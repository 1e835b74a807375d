"""fast-plaid's side of ``benchmarks/fastplaid.py``: runs in fast-plaid's own virtualenv (it pins torch 2.11) and
answers one JSON command per line on stdin with one JSON line on stdout. Timings are taken here, around
fast-plaid's own calls, so process boundaries cost neither library anything.

Commands: {"cmd": "build", "dir", "docs", "lengths", "nbits"}; {"cmd": "open", "dir", "queries", "qlengths"};
{"cmd": "search", "i", "k", "probe", "full"} (one query); {"cmd": "batch", "k", "probe", "full"} (every query in
one call); {"cmd": "quit"}.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fast_plaid import search  # noqa: E402


def packed(path_embs: str, path_lengths: str) -> list[torch.Tensor]:
    embs = np.load(path_embs, mmap_mode="r")
    lengths = np.load(path_lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [torch.from_numpy(np.asarray(embs[a:b], dtype=np.float32)) for a, b in zip(offsets, offsets[1:])]


def main():
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    fp, queries = None, None
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        if cmd == "build":
            docs = packed(msg["docs"], msg["lengths"])
            t = time.perf_counter()
            fp = search.FastPlaid(index=msg["dir"], device="cpu")
            fp.create(documents_embeddings=docs, nbits=msg["nbits"])
            out = {"build_s": round(time.perf_counter() - t, 2)}
            del docs
        elif cmd == "open":
            fp = search.FastPlaid(index=msg["dir"], device="cpu")
            queries = packed(msg["queries"], msg["qlengths"])
            meta = {}
            for name in ("metadata.json", "plan.json"):
                p = os.path.join(msg["dir"], name)
                if os.path.exists(p):
                    meta = json.load(open(p))
                    break
            size = sum(os.path.getsize(os.path.join(msg["dir"], f)) for f in os.listdir(msg["dir"])
                       if os.path.isfile(os.path.join(msg["dir"], f)))
            out = {"num_partitions": meta.get("num_partitions"), "bytes": size, "meta": meta}
        elif cmd == "search":
            q = queries[msg["i"]][None]
            t = time.perf_counter()
            res = fp.search(q, top_k=msg["k"], n_ivf_probe=msg["probe"], n_full_scores=msg["full"],
                            show_progress=False)[0]
            out = {"ms": (time.perf_counter() - t) * 1000, "pids": [int(p) for p, _ in res],
                   "scores": [float(s) for _, s in res]}
        elif cmd == "batch":
            t = time.perf_counter()
            res = fp.search(queries, top_k=msg["k"], n_ivf_probe=msg["probe"], n_full_scores=msg["full"],
                            show_progress=False)
            out = {"ms_per_query": (time.perf_counter() - t) * 1000 / len(queries),
                   "pids": [[int(p) for p, _ in r] for r in res]}
        else:
            out = {"error": f"unknown command {cmd}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
