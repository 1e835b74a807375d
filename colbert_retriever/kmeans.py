"""Centroid training: faiss k-means when faiss is importable, a torch Lloyd fallback otherwise.

Both clamp k to what the sample supports, so a 1-document collection never hits faiss' ``nx >= k`` error.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39
"""faiss' own minimum of training points per centroid (below it faiss warns that the clustering is unreliable)."""
SMALL_K = 256


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


def train_centroids(sample: np.ndarray, k: int, niters: int, seed: int) -> np.ndarray:
    """sample: (n, dim) float32. Returns (k', dim) float32 L2-normalised centroids, k' = min(k, n)."""
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
        if faiss is not None:
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
