"""Comparing two rankings of one collection made by different computations: near-tied hits (scores within
``tol``) may come in either order, and which of several hits tied at the cut makes the top k is arbitrary."""

import math


def assert_same_ranking(a, b, tol=1e-5, what=""):
    """``a`` and ``b``: lists of (id, score), best first. The scores agree rank by rank within ``tol``; every id
    scored clearly above the cut (the last score less ``tol``) is in both with the same score; the ids at the cut
    are interchangeable."""
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} hits\n{a}\n{b}"
    for (ia, sa), (ib, sb) in zip(a, b):
        assert math.isclose(sa, sb, rel_tol=tol, abs_tol=tol), f"{what}: scores differ rank by rank\n{a}\n{b}"
    if not a:
        return
    cut = a[-1][1]
    da, db = dict(a), dict(b)
    for i, s in a:
        if s > cut + tol:
            assert i in db and math.isclose(s, db[i], rel_tol=tol, abs_tol=tol), f"{what}: {i} ({s})\n{a}\n{b}"
    for i, s in b:
        if s > cut + tol:
            assert i in da, f"{what}: {i} ({s}) only in the second\n{a}\n{b}"
