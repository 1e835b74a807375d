"""Token pooling (Clavié et al., arXiv 2409.14683; PyLate's and RAGatouille's ``pool_factor``): a document's token
embeddings are merged by hierarchical clustering before compression, so an index stores about ``1 / pool_factor``
of the vectors. The query side is unchanged.

The method: Ward's hierarchical clustering of the document's token embeddings (euclidean distance, which on unit
vectors is a monotone function of cosine), cut into exactly ``ceil(n / pool_factor)`` clusters (the dendrogram's
first ``n - m`` merges), each cluster replaced by the mean of its tokens, L2 re-normalised. Clusters are emitted in
the order of their first token. Deterministic: the same rows give the same pooled rows (scipy's Ward linkage in
float64, merges of equal height taken in scipy's stable order).

Differences from PyLate's ``pool_embeddings_hierarchical``, on purpose: PyLate clusters the rows of the cosine
distance matrix (each token described by its distances to the others) rather than the embeddings, keeps the first
token ([CLS]) out of the pooling, makes ``max(n // pool_factor, 1)`` clusters (``fcluster(maxclust)`` may give
fewer on ties) and does not re-normalise. Here every row is pooled (embeddings from any encoder have no [CLS] to
protect), ``ceil`` keeps a short document's last token, and the cut always gives exactly that many rows.

``PooledEncoder`` applies it to whatever encodes documents for the index builder (a ``ColBERT`` over texts,
``external.GivenEmbeddings`` over precomputed embeddings): each document, or each passage of a long document,
is pooled on its own. Factor 1 never reaches this module (the writer does not wrap the encoder).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import _validate
from ..errors import InvalidArgument

DEFAULT_POOL_FACTOR = 2
"""``pool_factor`` of a new index when none is given (text or embeddings). The rule (issue #39): pooling is on by
default only if factor 2 moves nDCG@10 by at most 0.005 on each of scifact, cranfield and cisi (``make
bench-pooling``, BENCHMARKS.md "Token pooling"). An existing index keeps the factor it records (one written before
pooling existed: 1), so adds, upserts and compactions never switch it."""
METHOD = "ward"


def check_factor(pool_factor: Any, name: str = "pool_factor") -> int:
    """``pool_factor`` as an int >= 1 (None: ``DEFAULT_POOL_FACTOR``)."""
    if pool_factor is None:
        return DEFAULT_POOL_FACTOR
    return _validate.positive_int(pool_factor, name)


def pooled_length(n: int, pool_factor: int) -> int:
    """Rows a document of ``n`` tokens keeps: ``ceil(n / pool_factor)``."""
    return max(1, math.ceil(n / pool_factor))


def cluster_labels(x: np.ndarray, m: int) -> np.ndarray:
    """Cluster number (0..m-1, numbered by first member) of each row of ``x`` (n, dim) after Ward's clustering
    cut into exactly ``m`` clusters (1 <= m <= n)."""
    n = x.shape[0]
    if m >= n:
        return np.arange(n)
    if m == 1:
        return np.zeros(n, dtype=np.int64)
    from scipy.cluster.hierarchy import linkage

    z = linkage(np.ascontiguousarray(x, dtype=np.float64), method="ward")
    # row j of z merged clusters z[j, 0] and z[j, 1] into cluster n + j; keep the first n - m merges: walk them
    # backwards, giving each merged cluster's members the label of the cluster they joined
    lab = np.arange(2 * n - 1)
    pairs = z[: n - m, :2].astype(np.int64)
    for j in range(n - m - 1, -1, -1):
        lab[pairs[j]] = lab[n + j]
    lab = lab[:n]
    _, first = np.unique(lab, return_index=True)  # renumber clusters by their first token
    rank = np.empty(2 * n - 1, dtype=np.int64)
    rank[lab[np.sort(first)]] = np.arange(first.size)
    return rank[lab]


def pool(x: torch.Tensor, pool_factor: int) -> torch.Tensor:
    """One document's (n, dim) float embeddings pooled to (ceil(n / pool_factor), dim) float32, rows
    L2-normalised (see the module docstring). ``pool_factor`` 1 returns the rows as float32."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise InvalidArgument(f"pooling needs a (tokens >= 1, dim) matrix, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32)
    m = pooled_length(x.shape[0], pool_factor)
    if m >= x.shape[0]:
        return x
    a = x.numpy().astype(np.float64)
    lab = cluster_labels(a, m)
    sums = np.zeros((m, a.shape[1]))
    np.add.at(sums, lab, a)
    sums /= np.bincount(lab, minlength=m)[:, None]
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(sums.astype(np.float32))


def pool_packed(embs: torch.Tensor, lengths: torch.Tensor, pool_factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pool`` over each document of a packed batch: (embs (total, dim), lengths (n,)) -> the same, pooled."""
    pieces = [pool(p, pool_factor) for p in torch.split(embs, lengths.tolist())]
    if not pieces:
        return embs.float().cpu(), lengths
    return torch.cat(pieces), torch.tensor([p.shape[0] for p in pieces], dtype=torch.long)


class PooledEncoder:
    """An encoder for the index builder whose documents come out pooled by ``pool_factor`` (> 1): wraps anything
    with ``encode_documents_packed`` and ``precision`` (a ``ColBERT``, ``external.GivenEmbeddings``)."""

    def __init__(self, encoder, pool_factor: int):
        if pool_factor < 2:
            raise InvalidArgument(f"PooledEncoder needs pool_factor >= 2, got {pool_factor}")
        self.encoder, self.pool_factor = encoder, pool_factor
        self.precision = encoder.precision

    def encode_documents_packed(self, documents: Sequence, batch_size: int = 32, show_progress: bool = False,
                                desc: str = "encoding", progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        embs, lengths = self.encoder.encode_documents_packed(documents, batch_size=batch_size,
                                                             show_progress=show_progress, desc=desc,
                                                             progress=progress)
        return pool_packed(embs, lengths, self.pool_factor)


def pooled(encoder, pool_factor: Optional[int]):
    """``encoder`` itself for factor 1 (or None), else a ``PooledEncoder``."""
    return encoder if not pool_factor or pool_factor == 1 else PooledEncoder(encoder, pool_factor)
