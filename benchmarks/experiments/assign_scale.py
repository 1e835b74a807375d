"""Centroid assignment at the centroid counts a 30M-100M token index gets (~62k: the k-means sample of 2^20 tokens
allows 16 points per centroid): speed (rows per second, interleaved in one process) and fidelity (share of rows
given their exact nearest centroid, mean cosine to the chosen centroid) of coarse-to-fine variants, on real
scifact token embeddings of our model (the ``make bench-pooling`` cache).

Variants: "centroid-side" (``residual._CoarseAssigner``: G group centres from a k-means over the centroids, each
centroid listed under its ``probe`` nearest groups, a row searches the list of its nearest group) at several G,
probe and batch sizes; "row-side" (each centroid in its nearest group only, a row searches its ``probe`` nearest
groups).

    python benchmarks/experiments/assign_scale.py [--k 62259] [--rows 30000]

Writes benchmarks/results/assign_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import WORK, machine_info, write_json  # noqa: E402

from colbert_retriever.codec.kmeans import train_centroids  # noqa: E402
from colbert_retriever.codec.strided import offsets_from_lengths  # noqa: E402


class CentroidSide:
    def __init__(self, C, groups, probe, batch):
        K = C.shape[0]
        self.batch = batch
        self.centres = torch.from_numpy(train_centroids(C.numpy(), groups, 10, 0))
        top = (C @ self.centres.T).topk(min(probe, self.centres.shape[0]), dim=1).indices
        flat = top.flatten()
        order = torch.argsort(flat, stable=True)
        self.members = torch.arange(K).repeat_interleave(top.shape[1])[order]
        self.off = offsets_from_lengths(torch.bincount(flat, minlength=self.centres.shape[0]))
        self.C = C
        self.dots = self.centres.shape[0] + self.members.numel() / self.centres.shape[0]

    def assign(self, x):
        return torch.cat([self._assign(p) for p in torch.split(x, self.batch)])

    def _assign(self, x):
        group = (x @ self.centres.T).argmax(1)
        order = torch.argsort(group)
        counts = torch.bincount(group, minlength=self.centres.shape[0]).tolist()
        out = torch.empty(x.shape[0], dtype=torch.long)
        start = 0
        for g, n in enumerate(counts):
            if n:
                rows = order[start : start + n]
                m = self.members[self.off[g] : self.off[g + 1]]
                out[rows] = m[(x[rows] @ self.C[m].T).argmax(1)]
                start += n
        return out


class RowSide:
    def __init__(self, C, groups, probe, batch):
        self.batch, self.probe = batch, probe
        self.centres = torch.from_numpy(train_centroids(C.numpy(), groups, 10, 0))
        g = (C @ self.centres.T).argmax(1)
        order = torch.argsort(g, stable=True)
        self.members = order
        self.off = offsets_from_lengths(torch.bincount(g, minlength=self.centres.shape[0]))
        self.Cs = C[order].contiguous()  # centroids grouped: group g's are rows off[g]:off[g+1]
        self.C = C
        self.dots = self.centres.shape[0] + probe * C.shape[0] / self.centres.shape[0]

    def assign(self, x):
        return torch.cat([self._assign(p) for p in torch.split(x, self.batch)])

    def _assign(self, x):
        top = (x @ self.centres.T).topk(self.probe, dim=1).indices
        best = torch.full((x.shape[0],), -float("inf"))
        arg = torch.zeros(x.shape[0], dtype=torch.long)
        for j in range(self.probe):
            group = top[:, j]
            order = torch.argsort(group)
            counts = torch.bincount(group, minlength=self.centres.shape[0]).tolist()
            start = 0
            for g, n in enumerate(counts):
                if n:
                    rows = order[start : start + n]
                    a, b = int(self.off[g]), int(self.off[g + 1])
                    if b > a:
                        s = x[rows] @ self.Cs[a:b].T
                        v, i = s.max(1)
                        better = v > best[rows]
                        r = rows[better]
                        best[r] = v[better]
                        arg[r] = self.members[a + i[better]]
                    start += n
        return arg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=62259)
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    x = np.load(WORK / "pooling" / "scifact-bfloat16.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    perm = rng.permutation(x.shape[0])
    train = np.ascontiguousarray(x[np.sort(perm[: 1 << 20])], dtype=np.float32)
    test = torch.from_numpy(np.ascontiguousarray(x[np.sort(perm[-args.rows :])], dtype=np.float32))
    t = time.perf_counter()
    C = torch.from_numpy(train_centroids(train, args.k, 4, 12345))
    C = C.half().float()  # as stored
    kmeans_s = time.perf_counter() - t
    del train
    exact = torch.cat([(p @ C.T).argmax(1) for p in torch.split(test, 2048)])
    exact_cos = float((test * C[exact]).sum(1).mean())
    K = C.shape[0]
    r = int(round(2 * math.sqrt(K)))
    variants = {
        "centroid-side G=2sqrtK probe32 batch2^16 (current)": CentroidSide(C, r, 32, 1 << 16),
        "centroid-side G=2sqrtK probe32 batch2^18": CentroidSide(C, r, 32, 1 << 18),
        "centroid-side G=2sqrtK probe16 batch2^18": CentroidSide(C, r, 16, 1 << 18),
        "centroid-side G=sqrt(32K) probe32 batch2^18": CentroidSide(C, int(math.sqrt(32 * K)), 32, 1 << 18),
        "row-side G=2sqrtK probe8 batch2^18": RowSide(C, r, 8, 1 << 18),
        "row-side G=2sqrtK probe16 batch2^18": RowSide(C, r, 16, 1 << 18),
    }
    times = {k: [] for k in variants}
    got = {}
    for rnd in range(args.rounds):
        for name in (list(variants) if rnd % 2 == 0 else list(reversed(variants))):
            t = time.perf_counter()
            got[name] = variants[name].assign(test)
            times[name].append(time.perf_counter() - t)
    out = {"machine": machine_info(), "k": K, "rows": args.rows, "kmeans_s": round(kmeans_s, 1),
           "exact_cos": round(exact_cos, 5), "variants": {}}
    base = sorted(times["centroid-side G=2sqrtK probe32 batch2^16 (current)"])[args.rounds // 2]
    for name, v in variants.items():
        med = sorted(times[name])[args.rounds // 2]
        a = got[name]
        out["variants"][name] = {"dots_per_row": round(v.dots), "us_per_row": round(med / args.rows * 1e6, 2),
                                 "speed_vs_current": round(base / med, 2),
                                 "exact_share": round(float((a == exact).float().mean()), 4),
                                 "mean_cos": round(float((test * C[a]).sum(1).mean()), 5)}
        print(name, json.dumps(out["variants"][name]), flush=True)
    write_json("assign_scale.json", out)


if __name__ == "__main__":
    main()
