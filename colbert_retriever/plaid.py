"""PLAID search stages as functions over in-memory/memory-mapped arrays.

1. candidate generation: the top ``ncells`` centroids of each query token -> their inverted lists -> pids;
2. centroid interaction with pruning (centroids scoring below ``centroid_score_threshold`` for every query token
   count 0) keeps ``ndocs`` candidates; 3. centroid interaction without pruning keeps ``max(ndocs // 4, k)``;
4. those are scored exactly with MaxSim over their decompressed embeddings. Unset knobs adapt to the query and
   the index (``plan``). ``exhaustive`` skips 1-3 and scores every allowed document.

``search`` is the one entry point (planning, candidates, pruning, exact scoring). The stage functions it calls
have slow twins kept for tests: ``pruned_interaction`` (the reference for ``_pruned_candidates``) and
``centroid_interaction``; ``exact_scores`` with ``exhaustive`` is the reference for all of it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from . import _kernels
from .codec import ResidualCodec
from .config import SearchConfig
from .scoring import padded_positions, segment_maxsim
from .strided import gather_rows


def _select(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` along dim 0. ``index_select`` is ~10x faster than advanced indexing for rows of bytes on CPU
    (0.08 vs 0.8 ms for 28k residual rows); uint16 has no index_select kernel, so it moves as int16."""
    if t.dtype == torch.uint16:
        return t.view(torch.int16).index_select(0, idx).view(torch.uint16)
    return t.index_select(0, idx)


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
            return _select(self.parts[0], idx)
        bases = self.bases.to(idx.device)
        if idx.numel() < 2 or bool((idx[1:] >= idx[:-1]).all()):  # ascending (the usual case): slice per segment
            cuts = [0, *torch.searchsorted(idx, bases[1:-1]).tolist(), idx.numel()]
            pieces = [_select(self.parts[s], idx[a:b] - bases[s]).to(idx.device)
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
            rows = _select(self.parts[s], idx[m] - bases[s]).to(idx.device)
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
    """The inverted lists of ``cells`` over every segment: (global pids int64, for each entry the position in
    ``cells`` of the cell it came from; ``cells`` may repeat, e.g. one row per (query token, probed cell))."""
    pids, which = [], []
    slots = torch.arange(cells.numel(), device=cells.device)
    for part in arrays.ivf:
        idx, sub = gather_rows(part.offsets, cells)
        d = part.pids.index_select(0, idx).long()
        pids.append(d + part.doc_base if part.doc_base else d)
        which.append(torch.repeat_interleave(slots, sub[1:] - sub[:-1], output_size=idx.numel()))
    if not pids:
        empty = torch.empty(0, dtype=torch.long, device=cells.device)
        return empty, empty
    if len(pids) == 1:
        return pids[0], which[0]
    return torch.cat(pids), torch.cat(which)


def candidate_pids(Sc: torch.Tensor, arrays: IndexArrays, ncells: int) -> torch.Tensor:
    """Sc: (num_centroids, q_len) query-centroid scores. Returns unique candidate pids (int64)."""
    ncells = min(ncells, Sc.shape[0])
    cells = torch.topk(Sc, ncells, dim=0).indices.flatten().unique()
    return ivf_lists(arrays, cells)[0].unique()


def centroid_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor) -> torch.Tensor:
    """Approximate MaxSim of each pid from its tokens' centroid scores (no pruning). Sc: (num_centroids, q_len);
    pids: sorted unique int64. Returns (len(pids),) float32. The centroid scores are gathered straight into
    blocks of documents padded to a common length and reduced with ``amax`` (``scoring.padded_positions``): ~2x
    faster on CPU than the scatter-max of ``centroid_interaction_scatter``, its slow twin. Sc may be float16
    (``search`` passes a float16 copy on CPU, see ``CI_HALF``); the sums are float32."""
    if _kernels.use_triton(Sc):
        return _kernels.centroid_interaction(Sc, arrays.codes.full(), arrays.doc_offsets, pids)
    out = torch.zeros(pids.numel(), dtype=torch.float32, device=pids.device)
    starts = arrays.doc_offsets.index_select(0, pids)
    lengths = arrays.doc_offsets.index_select(0, pids + 1) - starts
    for docs, pos in padded_positions(starts, lengths):
        codes = arrays.codes.take(pos.flatten()).to(torch.int32)
        best = Sc.index_select(0, codes).view(*pos.shape, Sc.shape[1]).amax(0)
        out.index_copy_(0, docs, best.sum(-1, dtype=torch.float32))
    return out


def centroid_interaction_scatter(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor) -> torch.Tensor:
    """``centroid_interaction`` by a scatter-max over the candidates' packed tokens (the reference)."""
    idx, sub = gather_rows(arrays.doc_offsets, pids)
    return segment_maxsim(Sc.index_select(0, arrays.codes.take(idx).to(torch.int32)), sub)


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
        pair_pids, which = ivf_lists(arrays, kept)
        pos = torch.searchsorted(pids, pair_pids).clamp(max=pids.numel() - 1)
        hit = pids[pos] == pair_pids
        cents = kept[which[hit]]
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
        Sc = Sc if Sc is not None else c.centroid_scores(Q)[0]
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


# ------------------------------------------------------------------ planning

CELLS_PER_QUERY = 48
"""A short query probes more cells per token, so that at least this many cells are probed in all (pruned stage 2)."""
PROBED_CELLS_PER_QUERY = 96
"""The same floor for probed scoring, which sees only the probed cells (the pruned stage sees every centroid above
its threshold): on 100k WordNet glosses with 1-3-word queries, 48 cells in all agreed 0.987 with exhaustive top-10,
96 agreed 0.994 at about the same latency (k=10)."""
STAGE_THREADS: Optional[int] = None
"""Intra-op threads for the candidate, pruning and exact stages. None (default): the caller's
``torch.get_num_threads()`` while this search is the only one running in the process, 1 while several run at once
(their threads would otherwise oversubscribe the cores, each small step paying a rendezvous). Measured on 2 cores
(benchmarks/contention.py, BENCHMARKS.md "Contention"): idle, 1 thread is ~20% slower than 2; with 4 concurrent
searches, 1 thread is ~25% faster. An int forces that count."""
_active = 0
_active_lock = threading.Lock()
UNIQUE_TABLE_DOCS = 1 << 17
UNIQUE_TABLE_RATIO = 4
"""Probed scoring finds its distinct candidates with a table indexed by document when the index holds at most
``UNIQUE_TABLE_DOCS`` documents or at most ``UNIQUE_TABLE_RATIO`` per inverted-list entry read, else by sorting
the entries (``_unique_inverse``). Measured on 2 cores (ms, sort vs table): 10k documents / 12k entries 0.86 vs
0.23; 100k / 12k 0.78 vs 0.38; 100k / 3k 0.10 vs 0.21; 1M / 12k 0.63 vs 3.4; 1M / 200k 4.3 vs 3.8."""
CI_HALF = True
"""On CPU, stage 3 (full centroid interaction, a ranking that only picks the documents scored exactly) gathers
float16 copies of the query-centroid scores: half the bytes per gathered row. Measured on scifact (interleaved,
300 queries): k=10 10.9 -> 10.4 and 11.2 -> 10.7 ms p50, k=100 32.6 -> 30.8 and 30.2 -> 28.7 ms, top-k
agreement with exhaustive search identical (0.998 / 0.9981); exact scores stay float32."""
DENSE_DOCS_MAX = 1 << 22
"""Up to this many documents, the candidate stage keeps per-query tables indexed by document (a fill of 4 bytes
per document, cheaper than sorting the candidates); beyond it, it sorts."""


@dataclass(frozen=True)
class SearchPlan:
    """Resolved PLAID work for one query: cells probed per query token, the pruning threshold (None: candidates
    are scored from their probed cells instead, see ``probed_scores``), documents kept after stage 2, after full
    centroid interaction (stage 3) and scored exactly."""

    ncells: int
    centroid_score_threshold: Optional[float]
    stage2_docs: int
    stage3_docs: int  # = exact_docs: the documents full centroid interaction keeps are those scored exactly
    exact_docs: int
    exhaustive: bool = False


def _defaults(k: int) -> tuple[int, float, int, int, int]:
    """(ncells with a threshold, threshold, ndocs, budget of document-token x query-token scores for the exact
    stage, ncells for probed scoring)"""
    if k <= 10:
        return 2, 0.45, 512, 1 << 18, 8
    if k <= 100:
        return 4, 0.4, 2048, 1 << 20, 16
    return 8, 0.35, max(8 * k, 8192), max(1 << 21, 2048 * k), 32


def plan(config: SearchConfig, k: int, q_len: int = 32, avg_doclen: float = 64.0) -> SearchPlan:
    """Resolve ``config``'s knobs for one query of ``q_len`` tokens on an index whose documents average
    ``avg_doclen`` tokens.

    Explicit knobs keep PLAID's meaning: probe ``ncells`` centroids per query token, keep ``ndocs`` documents
    after stage 2 and ``max(ndocs // 4, k)`` after full centroid interaction; those are scored exactly. Stage 2
    is PLAID's pruned centroid interaction when ``centroid_score_threshold`` is given; without it (the default)
    the candidates are scored from the cells probed for each query token (``probed_scores``), which measured both
    faster and closer to exhaustive search (BENCHMARKS.md). Unset knobs start from colbert-ai's table (k<=10: 1,
    0.5, 256; k<=100: 2, 0.45, 1024; else 4, 0.4, max(4k, 4096)), changed where measured latency-vs-agreement
    curves said so:

    - probed scoring looks at 8 / 16 / 32 cells per query token (k <= 10 / <= 100 / more), with a threshold 2 / 4
      / 8; a short query probes more cells per token (at least ``PROBED_CELLS_PER_QUERY`` in all, with a
      threshold ``CELLS_PER_QUERY``);
    - the full centroid-interaction stage stays: skipping it for k <= 10 (pruned interaction picking the exact
      stage's documents directly) was ~1/3 faster and agreed 0.9915 with exhaustive top-10 on scifact with the
      default model, but only 0.86-0.90 with a [MASK]-augmented checkpoint (BENCHMARKS.md "Against colbert-ai");
    - the documents scored exactly fill a budget of document-token x query-token scores (the exact stage's cost),
      never fewer than the table's: short documents and short queries (100k WordNet glosses, 1-3-word queries,
      where centroid scores tie a lot) get many more documents scored exactly for the same work. The k <= 10
      budget (2^18 scores, ~3,200 glosses of ~20 tokens for a 4-token query) was 3 x 2^17 until measured
      (interleaved, 200 queries, p50 ms / agreement, old -> new): 100k glosses 13.2 / 0.9945 -> 10.3 / 0.9945,
      30k 13.1 / 0.9985 -> 10.0 / 0.9945, 10k 9.0 / 0.9990 -> 8.3 / 0.9955; scifact-like queries and documents
      stay at the table's 128 documents.
    """
    nc, thr, nd, pairs, probe = _defaults(k)
    per_doc = max(1.0, avg_doclen * max(1, q_len))
    budget_docs = int(pairs // per_doc)
    threshold = config.centroid_score_threshold
    if config.ncells is not None:
        ncells = config.ncells
    else:
        floor = CELLS_PER_QUERY if threshold is not None else PROBED_CELLS_PER_QUERY
        ncells = max(nc if threshold is not None else probe, -(-floor // max(1, q_len)))
    if config.ndocs is not None:
        exact = max(config.ndocs // 4, k)
        return SearchPlan(ncells, threshold, max(config.ndocs, k), exact, exact, config.exhaustive)
    exact = max(nd // 4, k, budget_docs)
    return SearchPlan(ncells, threshold, max(nd, exact), exact, exact, config.exhaustive)


# ------------------------------------------------------------------ probed scoring (stage 2 without a threshold)

IMPUTE = 0.8
"""Probed scoring: a query token none of a candidate's probed cells serves gets this fraction of the score of
the last cell probed for it (an upper bound on any cell not probed). Measured top-10 agreement with exhaustive
search: scifact (8 cells per token) 0.995 / 0.998 / 0.997 / 0.987 for 0 / 0.8 / 0.9 / 1.0; 100k WordNet glosses
with 1-3-word queries 0.894 / 0.964 / 0.987 / 0.993 / 0.997 for 0 / 0.5 / 0.8 / 0.9 / 1.0 with 48 cells in all,
0.994 / 0.998 for 0.8 / 0.9 with 96 (``PROBED_CELLS_PER_QUERY``)."""


def probed_scores(ScT: torch.Tensor, arrays: IndexArrays, ncells: int, allowed: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1 and 2 from the probed cells alone (WARP's candidate scoring, arXiv 2501.17788): each query token
    probes its ``ncells`` best centroids; a document in those inverted lists scores, per query token, the best
    centroid score among the cells probed for that token that list it (at least 0), or ``IMPUTE`` x the score of
    the token's last probed cell when none does; summed over query tokens. Touches only the probed lists (no
    token or pruned-centroid pass), so it costs little more than candidate generation.
    ScT: (q_len, num_centroids) query-centroid scores (``Sc.T``, a view is fine: the top cells are read along
    its rows). Returns (sorted candidate pids int64, scores float32)."""
    q = ScT.shape[0]
    ncells = min(ncells, ScT.shape[1])
    top = torch.topk(ScT, ncells, dim=1)  # (q, ncells)
    cells, vals = top.indices.flatten(), top.values.flatten()
    docs, which = ivf_lists(arrays, cells)  # which: the (token, cell) pair each entry came from
    if allowed is not None:
        ok = allowed.index_select(0, docs).nonzero().flatten()
        docs, which = docs.index_select(0, ok), which.index_select(0, ok)
    pids, inv = _unique_inverse(docs, arrays.num_docs)
    # every (document, token) starts at the token's imputed score and takes the best probed cell above it: the
    # same as "the best probed cell if any (and > 0), else the imputed score", since a probed cell scores at least
    # the token's last one (no where() pass over the scores)
    missing = IMPUTE * vals.view(q, ncells)[:, -1].clamp_min(0.0)
    best = missing.repeat(pids.numel())
    best.scatter_reduce_(0, inv * q + torch.div(which, ncells, rounding_mode="floor"), vals.index_select(0, which),
                         "amax")
    return pids, best.view(-1, q).sum(-1)


def _unique_inverse(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(x, return_inverse=True)`` for values in [0, n). By a table of n entries (a mark, a nonzero
    and a scatter: cost grows with n) for small n or many values (``UNIQUE_TABLE_DOCS``, ``UNIQUE_TABLE_RATIO``),
    else by sorting them (cost grows with their number)."""
    if n > max(UNIQUE_TABLE_DOCS, UNIQUE_TABLE_RATIO * x.numel()):
        return torch.unique(x, return_inverse=True)
    seen = torch.zeros(n, dtype=torch.bool, device=x.device).index_fill_(0, x, True)
    u = seen.nonzero().flatten()
    pos = torch.empty(n, dtype=torch.int32, device=x.device)
    pos.index_copy_(0, u, torch.arange(u.numel(), dtype=torch.int32, device=x.device))
    return u, pos.index_select(0, x).long()


# ------------------------------------------------------------------ the fast candidate stage

def _pruned_candidates(Sc: torch.Tensor, arrays: IndexArrays, ncells: int, threshold: float,
                       allowed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1 and 2 in one pass over the inverted lists: the candidates (documents in the lists of each query
    token's ``ncells`` best centroids, restricted to ``allowed``) and their pruned centroid interaction, equal to
    ``candidate_pids`` then ``pruned_interaction`` (tested). Returns (sorted pids int64, scores float32)."""
    n_docs = arrays.num_docs
    pids = candidate_pids(Sc, arrays, ncells)
    if allowed is not None:
        pids = pids[allowed.index_select(0, pids)]
    if pids.numel() == 0:
        return pids, torch.empty(0, dtype=torch.float32, device=pids.device)
    keep = Sc.amax(1) >= threshold
    kept = keep.nonzero().flatten()
    ivf_cost = int(arrays.ivf_sizes.index_select(0, kept).sum())
    token_cost = int((arrays.doc_offsets.index_select(0, pids + 1) - arrays.doc_offsets.index_select(0, pids)).sum())
    if token_cost <= ivf_cost or n_docs > DENSE_DOCS_MAX or _kernels.use_triton(Sc):
        return pids, pruned_interaction(Sc, arrays, pids, threshold)
    # position of each candidate in ``pids`` by document: one fill and one scatter, no search
    posmap = torch.full((n_docs,), -1, dtype=torch.int32, device=pids.device)
    posmap[pids] = torch.arange(pids.numel(), dtype=torch.int32, device=pids.device)
    scores = torch.zeros(pids.numel(), Sc.shape[1], dtype=torch.float32, device=pids.device)
    if kept.numel():
        pair_pids, which = ivf_lists(arrays, kept)
        pos = posmap.index_select(0, pair_pids)
        hit = (pos >= 0).nonzero().flatten()
        pos = pos.index_select(0, hit).long()
        rows = Sc.index_select(0, kept.index_select(0, which.index_select(0, hit)))
        scores.scatter_reduce_(0, pos[:, None].expand(-1, Sc.shape[1]), rows, "amax")
    return pids, scores.sum(-1)


def search(Q: torch.Tensor, arrays: IndexArrays, k: int, config: SearchConfig = SearchConfig(),
           allowed: Optional[torch.Tensor] = None, n_allowed: Optional[int] = None,
           Sc: Optional[torch.Tensor] = None, plan_k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PLAID search for one query: the top-k (pids, exact MaxSim scores), best first.

    Q: (q_len, dim) query embeddings; all-zero rows (padding) are ignored. allowed: (n_docs,) bool of documents
    that may be returned (live and matching a filter) or None for all; n_allowed: its count (computed when not
    given). Sc: ``centroids @ Q.T`` (num_centroids, q_len), any strides, when the caller computed it (else
    ``ResidualCodec.centroid_scores``). plan_k: the k the knobs are planned for when it differs from the rows asked
    (documents stored as passages); every stage still keeps at least k rows. Always returns min(k, n_allowed)
    documents. Owns planning, candidate generation, pruning and exact scoring; ``config`` holds knobs only.
    """
    dev = arrays.doc_offsets.device
    rows = Q.abs().sum(-1) > 0
    if not bool(rows.all()):
        Q = Q[rows]
        Sc = Sc[:, rows] if Sc is not None else None
    if n_allowed is None:
        n_allowed = arrays.num_docs if allowed is None else int(allowed.sum())
    if n_allowed == 0:
        return torch.empty(0, dtype=torch.long, device=dev), torch.empty(0, device=dev)
    Q = Q.to(arrays.codec.centroids.device, torch.float32)
    # (num_centroids, q_len), rows gathered by centroid id; the top cells read its transpose (ScT)
    Sc, ScT = arrays.codec.centroid_scores(Q) if Sc is None else (Sc.contiguous(), None)
    p = plan(config, plan_k or k, Q.shape[0], int(arrays.doc_offsets[-1]) / max(1, arrays.num_docs))
    if k > p.exact_docs:
        p = SearchPlan(p.ncells, p.centroid_score_threshold, max(p.stage2_docs, k), k, k, p.exhaustive)

    def score_all_allowed():
        pids = allowed.nonzero().flatten() if allowed is not None else torch.arange(arrays.num_docs, device=dev)
        return _topk(pids, exact_scores(Q, arrays, pids, Sc), k)

    if p.exhaustive or n_allowed <= p.exact_docs or Q.shape[0] == 0:
        return score_all_allowed()
    global _active
    with _active_lock:
        _active += 1
        concurrent = _active > 1
    try:
        n = STAGE_THREADS if STAGE_THREADS is not None else (1 if concurrent else torch.get_num_threads())
        with _threads(n):  # many small steps (see README, "Threads")
            return _stages(Q, Sc, Sc.T if ScT is None else ScT, arrays, k, p, allowed, score_all_allowed)
    finally:
        with _active_lock:
            _active -= 1


def _stages(Q, Sc, ScT, arrays, k, p, allowed, score_all_allowed):
    """Stages 1-4 of ``search`` for one query."""
    if p.centroid_score_threshold is None:
        pids, approx = probed_scores(ScT, arrays, p.ncells, allowed)
    else:
        pids, approx = _pruned_candidates(Sc, arrays, p.ncells, p.centroid_score_threshold, allowed)
    if pids.numel() < k:  # widen: too few candidates, score every allowed document
        return score_all_allowed()
    if pids.numel() > p.stage2_docs:
        pids = _topk(pids, approx, p.stage2_docs)[0].sort().values
    if pids.numel() > p.stage3_docs:
        # on CPU the ranking-only interaction gathers float16 scores: half the bytes moved (CI_HALF)
        Sci = Sc.to(torch.float16) if CI_HALF and Sc.device.type == "cpu" else Sc
        pids, _ = _topk(pids, centroid_interaction(Sci, arrays, pids), p.stage3_docs)
        pids = pids.sort().values  # ascending rows gather segment by segment (Rows.take)
    return _topk(pids, exact_scores(Q, arrays, pids, Sc), k)


@contextmanager
def _threads(n: int):
    """Run a block with ``n`` intra-op threads in the calling thread (OpenMP keeps the count per thread, so
    concurrent searches do not see each other's setting), then restore the caller's count."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
