"""PLAID search stages as functions over in-memory/memory-mapped arrays.

1. candidate generation: the top ``ncells`` centroids of each query token -> their inverted lists -> pids;
2. centroid interaction with pruning (centroids scoring below ``centroid_score_threshold`` for every query token
   count 0) keeps ``ndocs`` candidates; 3. centroid interaction without pruning keeps ``max(ndocs // 4, k)``;
4. those are scored exactly with MaxSim over their decompressed embeddings. Unset knobs adapt to the query and
   the index (``SearchConfig.plan``). ``exhaustive`` skips 1-3 and scores every allowed document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import _kernels
from .codec import ResidualCodec
from .config import SearchConfig
from .scoring import segment_maxsim
from .strided import gather_rows


class Rows:
    """One column of the index (codes, residuals or inverse norms) stored as per-segment tensors (memory maps on
    CPU) and addressed by global row number. Nothing is concatenated on CPU: a gather touches only the rows it
    reads, so RAM stays at what the pages read need, however many segments there are."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = parts
        sizes = torch.tensor([p.shape[0] for p in parts], dtype=torch.long)
        self.bases = torch.zeros(len(parts) + 1, dtype=torch.long)
        self.bases[1:] = torch.cumsum(sizes, 0)
        self._full = parts[0] if len(parts) == 1 else None

    def __len__(self) -> int:
        return int(self.bases[-1])

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (int64, any order), as a new tensor."""
        if len(self.parts) == 1:
            return self.parts[0][idx]
        bases = self.bases.to(idx.device)
        if idx.numel() < 2 or bool((idx[1:] >= idx[:-1]).all()):  # ascending (the usual case): slice per segment
            cuts = [0, *torch.searchsorted(idx, bases[1:-1]).tolist(), idx.numel()]
            pieces = [self.parts[s][idx[a:b] - bases[s]].to(idx.device)
                      for s, (a, b) in enumerate(zip(cuts, cuts[1:])) if b > a]
            if len(pieces) == 1:
                return pieces[0]
            if not pieces:
                return self.parts[0][idx[:0]]
            return torch.cat(pieces)
        seg = torch.bucketize(idx, bases[1:], right=True)
        first = self.parts[0]
        # uint16 centroid ids have no index_put kernel: move their bits as int16
        as_int16 = first.dtype == torch.uint16
        out = torch.empty((idx.numel(), *first.shape[1:]), dtype=torch.int16 if as_int16 else first.dtype,
                          device=idx.device)
        for s in seg.unique().tolist():
            m = (seg == s).nonzero().flatten()
            rows = self.parts[s][idx[m] - bases[s]].to(idx.device)
            out[m] = rows.view(torch.int16) if as_int16 else rows
        return out.view(torch.uint16) if as_int16 else out

    def full(self) -> torch.Tensor:
        """All rows as one tensor (a copy when there are several segments; used by the GPU kernels)."""
        if self._full is None:
            self._full = torch.cat(list(self.parts))
        return self._full


@dataclass
class IvfPart:
    """One segment's inverted file: for each centroid, the sorted segment-local pids with a token there."""

    pids: torch.Tensor  # (total,) int32, segment-local
    offsets: torch.Tensor  # (num_centroids + 1,) int64
    doc_base: int  # global pid of the segment's first document


@dataclass
class IndexArrays:
    codec: ResidualCodec
    codes: Rows  # (n_embeddings,) centroid ids (uint8/uint16/int32)
    residuals: Rows  # (n_embeddings, packed_dim) uint8
    inv_norms: Rows  # (n_embeddings,) float32: 1 / ||centroid + residual||, stored per segment
    doc_offsets: torch.Tensor  # (n_docs + 1,) int64
    ivf: list  # of IvfPart, one per segment
    ivf_sizes: torch.Tensor  # (num_centroids,) int64: total inverted-list length per centroid over all segments

    @property
    def num_docs(self) -> int:
        return self.doc_offsets.numel() - 1

    @classmethod
    def single(cls, codec: ResidualCodec, codes: torch.Tensor, residuals: torch.Tensor, doc_offsets: torch.Tensor,
               ivf_pids: torch.Tensor, ivf_offsets: torch.Tensor,
               inv_norms: Optional[torch.Tensor] = None) -> "IndexArrays":
        """Arrays of one segment held in memory (tests, benchmarks); inverse norms computed when not given."""
        if inv_norms is None:
            inv_norms = codec.inverse_norms(codes, residuals)
        return cls(codec, Rows([codes]), Rows([residuals]), Rows([inv_norms]), doc_offsets,
                   [IvfPart(ivf_pids, ivf_offsets, 0)], ivf_offsets[1:] - ivf_offsets[:-1])


def ivf_lists(arrays: IndexArrays, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverted lists of ``cells`` over every segment: (global pids int64, the cell of each entry)."""
    pids, cents = [], []
    for part in arrays.ivf:
        idx, sub = gather_rows(part.offsets, cells)
        pids.append(part.pids[idx].long() + part.doc_base)
        cents.append(torch.repeat_interleave(cells, sub[1:] - sub[:-1], output_size=idx.numel()))
    if not pids:
        empty = torch.empty(0, dtype=torch.long, device=cells.device)
        return empty, empty
    return torch.cat(pids), torch.cat(cents)


def candidate_pids(Sc: torch.Tensor, arrays: IndexArrays, ncells: int) -> torch.Tensor:
    """Sc: (num_centroids, q_len) query-centroid scores. Returns unique candidate pids (int64)."""
    ncells = min(ncells, Sc.shape[0])
    cells = torch.topk(Sc, ncells, dim=0).indices.flatten().unique()
    return ivf_lists(arrays, cells)[0].unique()


def centroid_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor,
                         chunk_tokens: int = 1 << 18) -> torch.Tensor:
    """Approximate MaxSim of each pid from its tokens' centroid scores (no pruning). Sc: (num_centroids, q_len);
    pids: sorted unique int64. Returns (len(pids),) float32."""
    if _kernels.use_triton(Sc):
        return _kernels.centroid_interaction(Sc, arrays.codes.full(), arrays.doc_offsets, pids)
    out = torch.empty(pids.numel(), dtype=torch.float32, device=pids.device)
    lengths = arrays.doc_offsets[pids + 1] - arrays.doc_offsets[pids]
    bounds = torch.cumsum(lengths, 0)
    s = 0
    while s < pids.numel():
        base = int(bounds[s - 1]) if s else 0
        e = int(torch.searchsorted(bounds, base + chunk_tokens, right=True))
        e = min(max(e, s + 1), pids.numel())
        idx, sub = gather_rows(arrays.doc_offsets, pids[s:e])
        out[s:e] = segment_maxsim(Sc.index_select(0, arrays.codes.take(idx).to(torch.int32)), sub)
        s = e
    return out


def pruned_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, threshold: float) -> torch.Tensor:
    """PLAID's pruned centroid interaction: only centroids whose best score over the query tokens reaches
    ``threshold`` contribute; a query token none of a document's kept centroids serves counts 0. Computed whichever
    way touches fewer entries: from the inverted lists of the kept centroids, or from the candidates' own tokens
    (short documents and low thresholds favour the latter). pids: sorted unique int64. Returns (len(pids),) float32."""
    if _kernels.use_triton(Sc):
        return _kernels.centroid_interaction(Sc, arrays.codes.full(), arrays.doc_offsets, pids, threshold)
    keep = Sc.amax(1) >= threshold
    kept = keep.nonzero().flatten()
    ivf_cost = int(arrays.ivf_sizes[kept].sum())
    token_cost = int((arrays.doc_offsets[pids + 1] - arrays.doc_offsets[pids]).sum())
    if token_cost <= ivf_cost:
        return centroid_interaction(Sc.clamp_min(0.0) * keep[:, None], arrays, pids)
    scores = torch.zeros(pids.numel(), Sc.shape[1], dtype=torch.float32, device=pids.device)
    if kept.numel():
        pair_pids, cents = ivf_lists(arrays, kept)
        pos = torch.searchsorted(pids, pair_pids).clamp(max=pids.numel() - 1)
        hit = pids[pos] == pair_pids
        cents = cents[hit]
        pos = pos[hit]
        scores.scatter_reduce_(0, pos[:, None].expand(-1, Sc.shape[1]), Sc.index_select(0, cents), "amax")
    return scores.sum(-1)


def exact_scores(Q: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, Sc: Optional[torch.Tensor] = None,
                 chunk_docs: int = 8192) -> torch.Tensor:
    """Exact MaxSim of the documents ``pids`` against Q (q_len, dim) over their decompressed embeddings (on CPU
    computed in the compressed domain, see ``ResidualCodec.token_scores``). Sc: centroids @ Q.T when the caller
    already has it."""
    out = torch.empty(pids.numel(), dtype=torch.float32, device=pids.device)
    c = arrays.codec
    triton = _kernels.use_triton(Q)
    if not triton:
        Sc = Sc if Sc is not None else c.centroids @ Q.float().T
        lut_q = c.query_lut(Q)
    for s in range(0, pids.numel(), chunk_docs):
        p = pids[s : s + chunk_docs]
        idx, sub = gather_rows(arrays.doc_offsets, p)
        if triton:
            out[s : s + chunk_docs] = _kernels.maxsim_compressed(Q, arrays.codes.take(idx), arrays.residuals.take(idx),
                                                                 c.centroids, c.bucket_weights, c.nbits, sub)
        else:
            sim = c.token_scores(Sc, lut_q, arrays.codes.take(idx), arrays.residuals.take(idx),
                                 arrays.inv_norms.take(idx))
            out[s : s + chunk_docs] = segment_maxsim(sim, sub)
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
    dev = arrays.doc_offsets.device
    if n_allowed == 0:
        return torch.empty(0, dtype=torch.long, device=dev), torch.empty(0, device=dev)
    plan = cfg.plan(k, Q.shape[0], int(arrays.doc_offsets[-1]) / max(1, arrays.num_docs))

    def score_all_allowed():
        pids = allowed.nonzero().flatten() if allowed is not None else torch.arange(arrays.num_docs, device=dev)
        return _topk(pids, exact_scores(Q, arrays, pids, Sc), k)

    if plan.exhaustive or n_allowed <= plan.exact_docs:
        return score_all_allowed()
    pids = candidate_pids(Sc, arrays, plan.ncells)
    if allowed is not None:
        pids = pids[allowed[pids]]
    if pids.numel() < k:  # widen: too few candidates, score every allowed document
        return score_all_allowed()
    if pids.numel() > plan.stage2_docs:
        pids, _ = _topk(pids, pruned_interaction(Sc, arrays, pids, plan.centroid_score_threshold), plan.stage2_docs)
        pids = pids.sort().values
    if pids.numel() > plan.exact_docs:
        pids, _ = _topk(pids, centroid_interaction(Sc, arrays, pids), plan.exact_docs)
        pids = pids.sort().values  # ascending rows gather segment by segment (Rows.take)
    return _topk(pids, exact_scores(Q, arrays, pids, Sc), k)
