"""Hybrid fusion of ranked lists, as pure functions (no index, no tensors).

A ranked list is a sequence of (document key, row, score), best first; a document stored as passages appears
once per list (its best row). ``fuse`` combines several lists by document key and keeps each document's row from
the first list that ranked it (the dense side comes first, so a document's row is its best passage by MaxSim).
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

FUSIONS = ("rrf", "normalized")
DEFAULT_FUSION = "normalized"
"""Hybrid fusion when none is given (chosen on the shared judged sets: see BENCHMARKS.md "Hybrid")."""
RRF_K = 60

Ranked = Sequence[tuple[Hashable, int, float]]


def rrf(n: int, constant: int = RRF_K) -> list[float]:
    """Reciprocal-rank contributions of ranks 1..n: 1 / (constant + rank)."""
    return [1.0 / (constant + r + 1) for r in range(n)]


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores scaled to [0, 1] (the best 1, the worst 0; all 1 when they are equal)."""
    lo, hi = min(scores), max(scores)
    return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]


def fuse(lists: Sequence[Ranked], k: int, method: str = DEFAULT_FUSION,
         weights: Optional[Sequence[float]] = None) -> list[tuple[int, float]]:
    """The k best documents of the fused lists as (row, fused score), best first; ties go to the lower row.
    method "rrf": weighted sum of reciprocal-rank contributions; "normalized": weighted sum of each list's min-max
    scaled scores. weights: one per list (default equal, summing to 1), so a normalized fused score lies in
    [0, 1] and an RRF one in [0, 1 / (RRF_K + 1)]."""
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {method!r}")
    weights = list(weights) if weights is not None else [1.0 / max(1, len(lists))] * len(lists)
    fused: dict = {}
    row: dict = {}
    for ranked, w in zip(lists, weights):
        if not ranked:
            continue
        contrib = rrf(len(ranked)) if method == "rrf" else min_max([s for _, _, s in ranked])
        for (key, r, _), c in zip(ranked, contrib):
            fused[key] = fused.get(key, 0.0) + w * c
            row.setdefault(key, r)
    best = sorted(fused, key=lambda d: (-fused[d], row[d]))[:k]
    return [(row[d], fused[d]) for d in best]


def max_score(method: str) -> float:
    """The largest fused score ``fuse`` can give (weights summing to 1): the scale of a 0..1 relevance."""
    return 1.0 if method == "normalized" else 1.0 / (RRF_K + 1)
