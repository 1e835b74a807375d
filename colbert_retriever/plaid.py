"""PLAID search stages as functions over in-memory/memory-mapped arrays.

1. candidate generation: the top ``ncells`` centroids of each query token -> their inverted lists -> pids;
2. centroid interaction with pruning (centroids scoring below ``centroid_score_threshold`` for every query token
   count 0) keeps ``ndocs`` candidates; 3. centroid interaction without pruning keeps ``max(ndocs // 4, k)``;
4. those are decompressed and scored exactly with MaxSim. ``exhaustive`` skips 1-3 and scores every allowed document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .codec import ResidualCodec
from .config import SearchConfig
from .scoring import maxsim_packed, padded_index
from .strided import gather_rows


@dataclass
class IndexArrays:
    codec: ResidualCodec
    codes: torch.Tensor  # (n_embeddings,) int64
    residuals: torch.Tensor  # (n_embeddings, packed_dim) uint8
    doc_offsets: torch.Tensor  # (n_docs + 1,) int64
    ivf_pids: torch.Tensor  # (total,) int64
    ivf_offsets: torch.Tensor  # (num_centroids + 1,) int64

    @property
    def num_docs(self) -> int:
        return self.doc_offsets.numel() - 1


def candidate_pids(Sc: torch.Tensor, arrays: IndexArrays, ncells: int) -> torch.Tensor:
    """Sc: (num_centroids, q_len) query-centroid scores. Returns unique candidate pids (int64)."""
    ncells = min(ncells, Sc.shape[0])
    cells = torch.topk(Sc, ncells, dim=0).indices.flatten().unique()
    idx, _ = gather_rows(arrays.ivf_offsets, cells)
    return arrays.ivf_pids[idx].unique()


def centroid_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor,
                         chunk_docs: int = 4096) -> torch.Tensor:
    """Approximate MaxSim of each pid using its tokens' centroid scores. Sc: (num_centroids, q_len)."""
    out = torch.empty(pids.numel(), dtype=torch.float32)
    for s in range(0, pids.numel(), chunk_docs):
        p = pids[s : s + chunk_docs]
        idx, sub = gather_rows(arrays.doc_offsets, p)
        pidx, valid = padded_index(sub)
        codes = arrays.codes[idx][pidx]  # (n, max_len)
        sc = Sc[codes]  # (n, max_len, q_len)
        sc = sc.masked_fill(~valid[..., None], float("-inf")).amax(1)
        out[s : s + chunk_docs] = sc.sum(-1)
    return out


def exact_scores(Q: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, chunk_docs: int = 8192) -> torch.Tensor:
    """Decompress the documents ``pids`` and score them with exact MaxSim. Q: (q_len, dim)."""
    out = torch.empty(pids.numel(), dtype=torch.float32)
    for s in range(0, pids.numel(), chunk_docs):
        p = pids[s : s + chunk_docs]
        idx, sub = gather_rows(arrays.doc_offsets, p)
        embs = arrays.codec.decompress(arrays.codes[idx], arrays.residuals[idx])
        out[s : s + chunk_docs] = maxsim_packed(Q, embs, sub)
    return out


def _topk(pids: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, pids.numel())
    top = torch.topk(scores, k)
    return pids[top.indices], top.values


def search_one(Q: torch.Tensor, Sc: torch.Tensor, arrays: IndexArrays, k: int, cfg: SearchConfig,
               allowed: Optional[torch.Tensor], n_allowed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (pids, scores) for one query, best first.

    Q: (q_len, dim) real query tokens; Sc: (num_centroids, q_len) = centroids @ Q.T; allowed: (n_docs,) bool of
    documents that may be returned (live and matching the filter) or None for all; n_allowed: its count.
    Always returns min(k, n_allowed) documents.
    """
    if n_allowed == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    cfg = cfg.for_k(k)
    if cfg.exhaustive or n_allowed <= max(cfg.ndocs // 4, k):
        pids = allowed.nonzero().flatten() if allowed is not None else torch.arange(arrays.num_docs)
        return _topk(pids, exact_scores(Q, arrays, pids), k)
    pids = candidate_pids(Sc, arrays, cfg.ncells)
    if allowed is not None:
        pids = pids[allowed[pids]]
    if pids.numel() < k:  # widen: too few candidates, score every allowed document
        pids = allowed.nonzero().flatten() if allowed is not None else torch.arange(arrays.num_docs)
        return _topk(pids, exact_scores(Q, arrays, pids), k)
    if pids.numel() > max(cfg.ndocs, k):
        pruned = Sc.masked_fill((Sc.amax(1) < cfg.centroid_score_threshold)[:, None], 0.0)
        pids, _ = _topk(pids, centroid_interaction(pruned, arrays, pids), max(cfg.ndocs, k))
    keep = max(cfg.ndocs // 4, k)
    if pids.numel() > keep:
        pids, _ = _topk(pids, centroid_interaction(Sc, arrays, pids), keep)
    return _topk(pids, exact_scores(Q, arrays, pids), k)
