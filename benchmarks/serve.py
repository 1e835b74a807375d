"""Serving over HTTP on loopback (Ray Serve, 127.0.0.1): throughput and p50/p99 latency at 1, 4, 16 and 64
concurrent clients, batched (up to 32 searches encoded in one forward pass, 5 ms wait) against unbatched (batches
of one), the two deployments side by side behind one proxy and measured alternately, level by level. Bounded: each
measurement stops after --requests searches or --seconds, whichever comes first. Writes
benchmarks/results/serve.json.

    python benchmarks/serve.py [--passages 10000] [--requests 400] [--seconds 20]

WordNet glosses (the scale benchmark's draw) indexed with the default model; queries are gloss lemmas (k=10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, wordnet_sample, write_json  # noqa: E402

from colbert_retriever import Index  # noqa: E402
from colbert_retriever.evaluation import load_corpus  # noqa: E402
from colbert_retriever.serve import RemoteIndex  # noqa: E402

LEVELS = (1, 4, 16, 64)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback (127.0.0.1) only


def load(url: str, queries: list, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads, each with its own keep-alive connection, searching back to back until ``requests``
    searches are done or ``seconds`` passed."""
    remote = RemoteIndex(url, timeout=120)
    lat: list = []
    lock, stop = threading.Lock(), threading.Event()
    count = [0]

    def client(i):
        n = i
        while not stop.is_set():
            with lock:
                if count[0] >= requests:
                    return
                count[0] += 1
            t = time.perf_counter()
            remote.search(queries[n % len(queries)], k=10)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                lat.append(ms)
            n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    [t.join() for t in threads]
    timer.cancel()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2), "qps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def main(argv=None):
    import ray
    from ray import serve

    from colbert_retriever.serve.app import application

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args(argv)
    ids, texts, metas = load_corpus(SHARED / "wordnet-glosses")
    order, queries = wordnet_sample(metas, 500)
    keep = order[: args.passages]
    path = WORK / f"serve-{args.passages}"
    if not (path / "metadata.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        Index.build(path, [texts[i] for i in keep], ids=[ids[i] for i in keep], show_progress=False).close()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    base = f"http://127.0.0.1:{args.port}"
    apps = {"batched": 32, "unbatched": 1}
    for name, size in apps.items():
        serve.run(application(path, max_batch_size=size, batch_wait_ms=5.0), name=name, route_prefix=f"/{name}")
    out = {"machine": machine_info(), "passages": args.passages, "k": 10, "max_batch_size": apps,
           "batch_wait_ms": 5.0, "replicas": 1, "bound": {"requests": args.requests, "seconds": args.seconds},
           "note": "Client threads, proxy and replicas share the box's 2 cores; the box was shared with other "
                   "engineers' jobs while measured; the lead reruns on a quiet box.", "runs": []}
    for name in apps:  # warm-up: the first searches compile numba's kernels in each replica
        load(f"{base}/{name}", queries, 4, 40, 60)
    for r in range(args.rounds):
        for clients in LEVELS:
            for name in (apps if r % 2 == 0 else reversed(list(apps))):  # alternate which goes first
                before = RemoteIndex(f"{base}/{name}").health()
                res = load(f"{base}/{name}", queries, clients, args.requests, args.seconds)
                after = RemoteIndex(f"{base}/{name}").health()
                res.update(deployment=name, round=r, queries_per_forward_pass=round(
                    (after["queries"] - before["queries"]) / max(1, after["batches"] - before["batches"]), 2))
                out["runs"].append(res)
                print(res, flush=True)
    summary = {}
    for clients in LEVELS:
        row = {}
        for name in apps:
            runs = [x for x in out["runs"] if x["deployment"] == name and x["clients"] == clients]
            row[name] = {"qps": round(float(np.median([x["qps"] for x in runs])), 1),
                         "queries_per_forward_pass": round(float(np.median([x["queries_per_forward_pass"]
                                                                            for x in runs])), 2),
                         "p50_ms": round(float(np.median([x["p50_ms"] for x in runs])), 1),
                         "p99_ms": round(float(np.median([x["p99_ms"] for x in runs])), 1)}
        row["qps_ratio_batched_over_unbatched"] = round(row["batched"]["qps"] / row["unbatched"]["qps"], 2)
        summary[str(clients)] = row
    out["summary"] = summary
    health = RemoteIndex(f"{base}/batched").health()
    out["batched_queries_per_forward_pass"] = round(health["queries"] / max(1, health["batches"]), 2)
    print(summary)
    write_json("serve.json", out)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
