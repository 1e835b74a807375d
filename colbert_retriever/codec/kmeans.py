"""Centroid training: faiss k-means when faiss is importable, a torch Lloyd fallback otherwise.

Both clamp k to what the sample supports, so a 1-document collection never hits faiss' ``nx >= k`` error.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 16
"""Training points per centroid we require (faiss warns below 39; at 16 the two-level clustering below matched a
flat k-means to 0.004 in mean cosine to the nearest centroid on 200k MiniLM token embeddings, 16,384 centroids)."""
SMALL_K = 256
TWO_LEVEL_MIN_K = 2048
"""From this many centroids on, k-means runs in two levels (as faiss.contrib.clustering.two_level_clustering):
sqrt(k) coarse clusters, then each split in proportion to its size. 17x faster than a flat k-means at k=16,384."""


def num_centroids(num_embeddings_estimate: int, num_sample: int, requested: int | None = None) -> int:
    """ColBERTv2's heuristic ``2**floor(log2(16 * sqrt(num_embeddings)))``, clamped to what the k-means sample
    supports: at least ``MIN_POINTS_PER_CENTROID`` points per centroid, except that up to ``SMALL_K`` centroids with
    at least 4 points each are always allowed (cheap; small collections keep their reconstruction quality, and the
    residual distribution stays informative for documents added later)."""
    if requested is not None:
        k = requested
    else:
        k = 2 ** int(math.floor(math.log2(16 * math.sqrt(max(1, num_embeddings_estimate)))))
        k = min(k, max(num_sample // MIN_POINTS_PER_CENTROID, min(SMALL_K, num_sample // 4)))
    return max(1, min(k, num_sample))


def train_centroids(sample: np.ndarray, k: int, niters: int, seed: int, flat: bool = False) -> np.ndarray:
    """sample: (n, dim) float32. Returns (min(k, n), dim) float32 L2-normalised centroids. flat: never the
    two-level path."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, dim = sample.shape
    k = max(1, min(k, n))
    if k == n:
        cents = sample.copy()
    else:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None and not flat and k >= TWO_LEVEL_MIN_K and n >= MIN_POINTS_PER_CENTROID * k:
            cents = _two_level_kmeans(faiss, sample, k, niters, seed)
        elif faiss is not None:
            km = faiss.Kmeans(dim, k, niter=niters, seed=seed, verbose=False, spherical=True,
                              min_points_per_centroid=1, max_points_per_centroid=1 << 30)
            km.train(sample)
            cents = km.centroids.copy()
        else:
            cents = _torch_kmeans(torch.from_numpy(sample), k, niters, seed).numpy()
    norms = np.linalg.norm(cents, axis=1, keepdims=True)
    return (cents / np.maximum(norms, 1e-12)).astype(np.float32)


def _torch_kmeans(x: torch.Tensor, k: int, niters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cents = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(niters):
        assign = (x @ cents.T).argmax(1)
        sums = torch.zeros_like(cents).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()[:, None]
        empty = counts[:, 0] == 0
        cents = torch.where(empty[:, None], cents, sums / counts.clamp(min=1))
        cents = torch.nn.functional.normalize(cents, dim=1)
    return cents


def split_shares(counts: np.ndarray, k: int) -> np.ndarray:
    """Centroids per coarse cluster for the two-level k-means: proportional to ``counts`` (largest remainders), at
    least 1 and at most its count for a non-empty cluster, 0 for an empty one, summing to exactly
    min(k, counts.sum()) (at least one per non-empty cluster). Rounding each share on its own (as before) gave
    "about k": 8,195 for 8,192, and a request for 65,536 could come out above it, making the codes int32 (4 bytes a
    token instead of 2)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    k = max(int((counts > 0).sum()), min(int(k), n))
    raw = counts * (k / max(n, 1))
    shares = np.where(counts > 0, np.clip(np.floor(raw), 1, counts), 0).astype(np.int64)
    gap = k - int(shares.sum())
    while gap:
        if gap > 0:  # give one more to the clusters furthest below their proportional share (that have room)
            room = np.flatnonzero(shares < counts)
            pick = room[np.argsort(-(raw[room] - shares[room]), kind="stable")[:gap]]
            shares[pick] += 1
        else:  # take one from those furthest above it (keeping at least 1)
            room = np.flatnonzero(shares > 1)
            pick = room[np.argsort(-(shares[room] - raw[room]), kind="stable")[:-gap]]
            shares[pick] -= 1
        gap = k - int(shares.sum())
    return shares


def _two_level_kmeans(faiss, sample: np.ndarray, k: int, niters: int, seed: int) -> np.ndarray:
    """k centroids: round(sqrt(k)) coarse clusters, then a k-means inside each with a share of k proportional to its
    size (``split_shares``). faiss.contrib's version crashes on a share of 0."""
    n, dim = sample.shape
    k1 = max(1, int(round(math.sqrt(k))))
    opts = dict(seed=seed, spherical=True, min_points_per_centroid=1, verbose=False)
    coarse = faiss.Kmeans(dim, k1, niter=max(niters, 10), max_points_per_centroid=2048, **opts)
    coarse.train(sample)
    assign = coarse.index.search(sample, 1)[1][:, 0]
    counts = np.bincount(assign, minlength=k1)
    shares = split_shares(counts, k)
    order = np.argsort(assign, kind="stable")
    out, start = [], 0
    for c in range(k1):
        part = sample[order[start : start + counts[c]]]
        start += counts[c]
        if counts[c] == 0:
            continue
        if shares[c] >= counts[c]:
            out.append(part)
            continue
        km = faiss.Kmeans(dim, int(shares[c]), niter=max(niters, 10), max_points_per_centroid=1 << 30, **opts)
        km.train(np.ascontiguousarray(part))
        out.append(km.centroids)
    return np.concatenate(out)
