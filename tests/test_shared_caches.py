"""Lazy caches on objects that concurrent searches and encodes share are built once, under a lock: every thread
that asks at the same moment gets the same object (issue 38)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from colbert_retriever.codec.residual import ResidualCodec
from colbert_retriever.model import halfgemm
from colbert_retriever.search.arrays import Rows

THREADS = 8


def hammer(fn) -> list:
    """``fn()`` from THREADS threads released together; their results in thread order."""
    start, out = threading.Barrier(THREADS), [None] * THREADS

    def run(i):
        start.wait()
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _codec(k=256, dim=32):
    C = nn.functional.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    C = C.to(torch.float16).float()  # float16 values, as an index read from disk holds
    return ResidualCodec(C, torch.tensor([-0.03, 0.0, 0.03]), torch.tensor([-0.05, -0.01, 0.01, 0.05]), 2)


def test_codec_caches_are_built_once():
    codec = _codec()
    packed = hammer(codec._packed_centroids)
    assert all(p is packed[0] for p in packed)
    assert (packed[0] is not False) == halfgemm.available()  # built where fbgemm is there (torch's x86 builds)
    coarse = hammer(codec._coarse_assigner)
    assert coarse[0] is not None and all(c is coarse[0] for c in coarse)
    q = torch.randn(5, 32)
    got = hammer(lambda: codec.centroid_scores(q, half=True)[1])  # the search path, concurrently
    want = codec.centroids @ q.T
    assert all(torch.allclose(g.T if g is not None else want, want, atol=1e-4) for g in got)


def test_rows_full_is_concatenated_once():
    rows = Rows([torch.arange(i * 10, i * 10 + 10) for i in range(3)])
    full = hammer(rows.full)
    assert all(f is full[0] for f in full) and torch.equal(full[0], torch.arange(30))


def test_packed_weights_are_packed_once():
    if not halfgemm.available():
        pytest.skip("no fbgemm in this torch build: nothing is packed")
    layer = nn.Linear(64, 48)
    packed = hammer(lambda: halfgemm._cached(halfgemm._cache, (layer,)))
    assert all(p is packed[0] for p in packed)
    with torch.no_grad():
        layer.weight.add_(1.0)  # new weights: packed again, once
    again = hammer(lambda: halfgemm._cached(halfgemm._cache, (layer,)))
    assert again[0] is not packed[0] and all(p is again[0] for p in again)
