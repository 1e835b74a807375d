"""PLAID's search stages as functions over ``IndexArrays``: candidates, pruned and full centroid interaction,
probed scoring, exact MaxSim. Each takes what it needs as arguments (no module state) and returns tensors;
``plaid.search`` decides which run, with what sizes, on which kernels.

Every fast path has a slow twin kept for the tests: ``pruned_candidates`` equals ``candidate_pids`` then
``pruned_interaction``; ``centroid_interaction`` equals ``centroid_interaction_scatter``; the Triton and numba
kernels equal the torch code here; ``exact_scores`` over every document is the reference for all of it.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..codec.strided import gather_rows
from ..kernels import dispatch
from ..kernels.scoring import padded_positions, segment_maxsim
from .arrays import IndexArrays, ivf_lists

IMPUTE = 0.8
"""Probed scoring: a query token none of a candidate's probed cells serves gets this fraction of the score of
the last cell probed for it (an upper bound on any cell not probed): chosen by top-10 agreement with exhaustive
search on scifact and WordNet glosses (benchmarks/NOTES.md, "Moved from docstrings")."""
UNIQUE_TABLE_DOCS = 1 << 17
UNIQUE_TABLE_RATIO = 4
"""Probed scoring finds its distinct candidates with a table indexed by document when the index holds at most
``UNIQUE_TABLE_DOCS`` documents or at most ``UNIQUE_TABLE_RATIO`` per inverted-list entry read, else by sorting
the entries (``unique_inverse``): the table's fill costs a pass over every document, sorting costs per entry
(the crossover was measured: benchmarks/NOTES.md, "Moved from docstrings")."""
DENSE_DOCS_MAX = 1 << 22
"""Up to this many documents, the pruned candidate stage keeps a table indexed by document (a fill of 4 bytes per
document, cheaper than sorting the candidates); beyond it, it searches a sorted list."""


def candidate_pids(Sc: torch.Tensor, arrays: IndexArrays, ncells: int) -> torch.Tensor:
    """Sc: (num_centroids, q_len) query-centroid scores. Returns unique candidate pids (int64)."""
    ncells = min(ncells, Sc.shape[0])
    cells = torch.topk(Sc, ncells, dim=0).indices.flatten().unique()
    return ivf_lists(arrays, cells)[0].unique()


def centroid_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, *, kernels: str = "torch",
                         threads: int = 1, max_rows: Optional[int] = None, tables=None) -> torch.Tensor:
    """Approximate MaxSim of each pid from its tokens' centroid scores (no pruning). Sc: (num_centroids, q_len);
    pids: sorted unique int64. Returns (len(pids),) float32. The centroid scores are gathered straight into
    blocks of documents padded to a common length and reduced with ``amax`` (``scoring.padded_positions``, blocks
    of at most ``max_rows`` rows): faster on CPU than the scatter-max of ``centroid_interaction_scatter``, its
    slow twin. Sc may be float16 (ranking only: see ``Precision.half_interaction``); the sums are float32.
    kernels "numba": ``numba_drivers.centroid_interaction`` (``threads`` threads; ``tables``: the query's operands
    as the numba kernels read them, when the caller keeps them, see ``numba_drivers.Tables``)."""
    if kernels == "triton":
        return dispatch.centroid_interaction(Sc, arrays.codes.full(), arrays.doc_offsets, pids)
    if kernels == "numba":
        return dispatch.numba_centroid_interaction(Sc, arrays, pids, threads, tables)
    out = torch.zeros(pids.numel(), dtype=torch.float32, device=pids.device)
    starts = arrays.doc_offsets.index_select(0, pids)
    lengths = arrays.doc_offsets.index_select(0, pids + 1) - starts
    for docs, pos in padded_positions(starts, lengths, max_rows):
        codes = arrays.codes.take(pos.flatten()).to(torch.int32)
        best = Sc.index_select(0, codes).view(*pos.shape, Sc.shape[1]).amax(0)
        out.index_copy_(0, docs, best.sum(-1, dtype=torch.float32))
    return out


def centroid_interaction_scatter(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor) -> torch.Tensor:
    """``centroid_interaction`` by a scatter-max over the candidates' packed tokens (the reference)."""
    idx, sub = gather_rows(arrays.doc_offsets, pids)
    return segment_maxsim(Sc.index_select(0, arrays.codes.take(idx).to(torch.int32)), sub)


def pruned_interaction(Sc: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, threshold: float, *,
                       kernels: str = "torch") -> torch.Tensor:
    """PLAID's pruned centroid interaction: only centroids whose best score over the query tokens reaches
    ``threshold`` contribute; a query token none of a document's kept centroids serves counts 0. Computed whichever
    way touches fewer entries: from the inverted lists of the kept centroids, or from the candidates' own tokens
    (short documents and low thresholds favour the latter). pids: sorted unique int64. Returns (len(pids),) float32."""
    if kernels == "triton":
        return dispatch.centroid_interaction(Sc, arrays.codes.full(), arrays.doc_offsets, pids, threshold)
    keep = Sc.amax(1) >= threshold
    kept = keep.nonzero().flatten()
    ivf_cost = int(arrays.ivf_sizes[kept].sum())
    token_cost = int((arrays.doc_offsets[pids + 1] - arrays.doc_offsets[pids]).sum())
    if token_cost <= ivf_cost:
        return centroid_interaction(Sc.clamp_min(0.0) * keep[:, None], arrays, pids, kernels=kernels)
    scores = torch.zeros(pids.numel(), Sc.shape[1], dtype=torch.float32, device=pids.device)
    if kept.numel():
        pair_pids, which = ivf_lists(arrays, kept)
        pos = torch.searchsorted(pids, pair_pids).clamp(max=pids.numel() - 1)
        hit = pids[pos] == pair_pids
        cents = kept[which[hit]]
        pos = pos[hit]
        scores.scatter_reduce_(0, pos[:, None].expand(-1, Sc.shape[1]), Sc.index_select(0, cents), "amax")
    return scores.sum(-1)


def pruned_candidates(Sc: torch.Tensor, arrays: IndexArrays, ncells: int, threshold: float,
                      allowed: Optional[torch.Tensor], *, kernels: str = "torch",
                      dense_docs_max: int = DENSE_DOCS_MAX) -> tuple[torch.Tensor, torch.Tensor]:
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
    if token_cost <= ivf_cost or n_docs > dense_docs_max or kernels == "triton":
        return pids, pruned_interaction(Sc, arrays, pids, threshold, kernels=kernels)
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


def probed_scores(ScT: torch.Tensor, arrays: IndexArrays, ncells: int, allowed: Optional[torch.Tensor] = None, *,
                  unique: str = "auto", kernels: str = "torch", **how) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1 and 2 from the probed cells alone (WARP's candidate scoring, arXiv 2501.17788): each query token
    probes its ``ncells`` best centroids; a document in those inverted lists scores, per query token, the best
    centroid score among the cells probed for that token that list it (at least 0), or ``IMPUTE`` x the score of
    the token's last probed cell when none does; summed over query tokens. Touches only the probed lists (no
    token or pruned-centroid pass), so it costs little more than candidate generation.
    ScT: (q_len, num_centroids) query-centroid scores (``Sc.T``, a view is fine: the top cells are read along
    its rows). unique: how the distinct candidates are found (``unique_inverse``). kernels "numba":
    ``numba_drivers.probed_scores`` (its own top cells, two passes over the lists, no sort of the entries; ``how``: its
    options). Returns (sorted candidate pids int64, scores float32)."""
    q = ScT.shape[0]
    ncells = min(ncells, ScT.shape[1])
    if kernels == "numba":
        return dispatch.numba_probed_scores(ScT, ncells, IMPUTE, arrays, allowed, **how)
    top = torch.topk(ScT, ncells, dim=1)  # (q, ncells)
    # a token none of a candidate's probed cells serves: the imputed score (at least 0)
    missing = IMPUTE * top.values[:, -1].clamp_min(0.0)
    cells, vals = top.indices.flatten(), top.values.flatten()
    docs, which = ivf_lists(arrays, cells)  # which: the (token, cell) pair each entry came from
    if allowed is not None:
        ok = allowed.index_select(0, docs).nonzero().flatten()
        docs, which = docs.index_select(0, ok), which.index_select(0, ok)
    pids, inv = unique_inverse(docs, arrays.num_docs, unique)
    # every (document, token) starts at the token's imputed score and takes the best probed cell above it: the
    # same as "the best probed cell if any (and > 0), else the imputed score", since a probed cell scores at least
    # the token's last one (no where() pass over the scores)
    best = missing.repeat(pids.numel())
    best.scatter_reduce_(0, inv * q + torch.div(which, ncells, rounding_mode="floor"), vals.index_select(0, which),
                         "amax")
    return pids, best.view(-1, q).sum(-1)


def unique_inverse(x: torch.Tensor, n: int, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(x, return_inverse=True)`` for values in [0, n). method "table": a table of n entries (a
    mark, a nonzero and a scatter: cost grows with n); "sort": sorting the values (cost grows with their number);
    "auto": the table for small n or many values (``UNIQUE_TABLE_DOCS``, ``UNIQUE_TABLE_RATIO``)."""
    if method == "auto":
        method = "sort" if n > max(UNIQUE_TABLE_DOCS, UNIQUE_TABLE_RATIO * x.numel()) else "table"
    if method == "sort":
        return torch.unique(x, return_inverse=True)
    seen = torch.zeros(n, dtype=torch.bool, device=x.device).index_fill_(0, x, True)
    u = seen.nonzero().flatten()
    pos = torch.empty(n, dtype=torch.int32, device=x.device)
    pos.index_copy_(0, u, torch.arange(u.numel(), dtype=torch.int32, device=x.device))
    return u, pos.index_select(0, x).long()


def exact_scores(Q: torch.Tensor, arrays: IndexArrays, pids: torch.Tensor, Sc: Optional[torch.Tensor] = None, *,
                 kernels: str = "torch", threads: int = 1, chunk_docs: int = 8192,
                 lut_q: Optional[torch.Tensor] = None, tables=None) -> torch.Tensor:
    """Exact MaxSim of the documents ``pids`` against Q (q_len, dim) over their decompressed embeddings (on CPU
    computed in the compressed domain, see ``ResidualCodec.token_scores``). Sc: centroids @ Q.T and lut_q:
    ``codec.query_lut(Q)``, when the caller already has them (a search scoring twice reuses both). Returns
    (len(pids),) float32. kernels "numba": ``numba_drivers.exact_scores`` (``threads`` threads; ``tables`` as for
    ``centroid_interaction``), "triton": the fused Triton kernel (CUDA)."""
    c = arrays.codec
    if kernels == "numba" and tables is not None:  # the tables hold (or compute) the scores and lookup table
        return dispatch.numba_exact_scores(arrays, pids, None, lut_q, threads, tables)
    if kernels != "triton":
        Sc = Sc if Sc is not None else c.centroid_scores(Q)[0]
        lut_q = lut_q if lut_q is not None else c.query_lut(Q)
    if kernels == "numba":
        return dispatch.numba_exact_scores(arrays, pids, Sc, lut_q, threads, tables)
    out = torch.empty(pids.numel(), dtype=torch.float32, device=pids.device)
    for s in range(0, pids.numel(), chunk_docs):
        p = pids[s : s + chunk_docs]
        idx, sub = gather_rows(arrays.doc_offsets, p)
        if kernels == "triton":
            out[s : s + chunk_docs] = dispatch.maxsim_compressed(Q, arrays.codes.take(idx), arrays.residuals.take(idx),
                                                                 c.centroids, c.bucket_weights, c.nbits, sub)
        else:
            sim = c.token_scores(Sc, lut_q, arrays.codes.take(idx), arrays.residuals.take(idx),
                                 arrays.inv_norms.take(idx))
            out[s : s + chunk_docs] = segment_maxsim(sim, sub)
    return out
