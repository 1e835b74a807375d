"""Query time, after the ``Index`` boundary: a validated ``Request`` and normalised query rows in, ``Hit`` lists
out, over one snapshot. Filters and ids become the set of rows allowed; ColBERT mode calls PLAID once per query
(documents stored as passages are grouped inside PLAID); BM25, hybrid (``fusion.fuse``) and BM25-then-MaxSim
modes combine the lexical side with it; the texts of every hit come in one document-store fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .. import _validate
from ..config import SearchConfig
from ..device import Precision
from ..errors import InvalidArgument, InvalidType
from ..hits import Hit
from ..kernels import dispatch
from ..store.filters import compile_filter
from . import plaid, stages
from .fusion import DEFAULT_FUSION, FUSIONS, fuse, max_score
from .reader import Snapshot

SEARCH_MODES = ("colbert", "bm25", "hybrid", "bm25_rerank")
HYBRID_DEPTH = 100
"""Documents each side of a hybrid search ranks before fusion (at least k)."""


@dataclass(frozen=True)
class Request:
    """One search call's arguments, validated once (``make``): k, the mode and its fusion and depth, the PLAID
    knobs, the compiled metadata filter (``filters.compile_filter``) and the ids the search is restricted to."""

    k: int
    mode: str = "colbert"
    fusion: str = DEFAULT_FUSION
    depth: int = HYBRID_DEPTH
    config: SearchConfig = SearchConfig()
    where: Optional[tuple] = None
    ids: Optional[tuple] = None
    alpha: float = 0.5  # hybrid: the ColBERT side's weight (the lexical side's is 1 - alpha)

    @classmethod
    def make(cls, k, *, mode: str = "colbert", fusion: str = DEFAULT_FUSION, depth=None,
             config: SearchConfig = SearchConfig(), filter=None, ids=None, alpha=0.5) -> "Request":
        k = _validate.positive_int(k, "k")
        if mode not in SEARCH_MODES:
            raise InvalidArgument(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise InvalidArgument(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        depth = max(k, HYBRID_DEPTH) if depth is None else max(k, _validate.positive_int(depth, "depth"))
        if not isinstance(config, SearchConfig):
            raise InvalidType(f"config must be a SearchConfig, got {type(config).__name__}")
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        where = compile_filter(filter) if filter is not None else None
        ids = tuple(_validate.id_selection(ids, "ids")) if ids is not None else None
        alpha = _validate.number(alpha, "alpha")
        if not 0.0 <= alpha <= 1.0:
            raise InvalidArgument(f"alpha is the ColBERT side's weight in hybrid fusion, between 0 and 1; got {alpha}")
        return cls(k, mode, fusion, depth, config, where, ids, alpha)


def query_rows(Q, dim: int, device: torch.device) -> list[torch.Tensor]:
    """Query embeddings as PLAID takes them: a (n, q_len, dim) tensor (or a list of (q_len_i, dim) tensors) ->
    per query a (real rows, dim) float32 tensor on ``device``; all-zero rows (padding) are dropped. Refuses other
    shapes and NaN or infinite values, naming them."""
    if isinstance(Q, torch.Tensor) and Q.dim() == 3 and Q.shape[-1] == dim:
        parts = list(Q)
    elif isinstance(Q, (list, tuple)) and Q and all(isinstance(q, torch.Tensor) and q.dim() == 2
                                                    and q.shape[-1] == dim for q in Q):
        parts = list(Q)
    else:
        shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
        raise InvalidArgument(f"query embeddings have shape {shape}; expected (n, q_len, {dim})")
    out = []
    for q in parts:
        q = q.to(device=device, dtype=torch.float32)
        if not bool(torch.isfinite(q).all()):
            raise InvalidArgument("query embeddings hold NaN or infinite values")
        out.append(q[q.abs().sum(-1) > 0].contiguous())
    return out


def allowed_rows(snap: Snapshot, req: Request) -> tuple[Optional[torch.Tensor], int]:
    """The rows a search may return (live, matching the filter and the ids) as a bool mask (None: all rows) and
    their count."""
    n, gen = snap.meta.counts.documents, snap.meta.generation
    if req.where is None and req.ids is None:
        if snap.live_count == n:
            return None, n
        return snap.live, snap.live_count
    mask = snap.live.clone()
    if req.where is not None:
        keep = torch.zeros_like(mask)
        keep[torch.from_numpy(snap.docstore.filter_pids(req.where, n, gen)).to(mask.device)] = True
        mask &= keep
    if req.ids is not None:
        keep = torch.zeros_like(mask)
        found = [p for ps in snap.docstore.pids_of(list(req.ids), n, gen).values() for p in ps]
        keep[torch.tensor(found, dtype=torch.long, device=mask.device)] = True
        mask &= keep
    return mask, int(mask.sum())


def colbert(snap: Snapshot, Q: list[torch.Tensor], k: int, req: Request, precision: Optional[Precision],
            trace: Optional[list]) -> list[tuple[list, list]]:
    """(rows, MaxSim scores) of the top-k documents of each query, by PLAID (a document stored as passages
    appears once, as its best passage)."""
    allowed, n_allowed = allowed_rows(snap, req)
    kernels = dispatch.resolve(req.config.kernels, snap.arrays.doc_offsets.device)  # once for every query
    out = []
    with torch.inference_mode():
        for q in Q:
            pids, scores = plaid.search(q, snap.arrays, k, req.config, allowed=allowed, n_allowed=n_allowed,
                                        groups=snap.groups, rows_per_group=snap.rows_per_doc, precision=precision,
                                        trace=trace, kernels=kernels)
            out.append((pids.cpu().tolist(), scores.cpu().tolist()))
    return out


def _lexical(snap: Snapshot, queries: Sequence[str], limit: int, req: Request) -> list[list[tuple[int, float]]]:
    n, gen = snap.meta.counts.documents, snap.meta.generation
    limit = min(limit, max(1, snap.live_count))  # SQLite's LIMIT takes a 64-bit integer
    return [snap.docstore.bm25(q, limit, n, gen, req.where, req.ids) for q in queries]


def rerank(snap: Snapshot, q: torch.Tensor, pids: list, k: int, kernels: str) -> tuple[list, list]:
    """Exact MaxSim of the given rows against one query (real rows), top k."""
    if not pids:
        return [], []
    arrays = snap.arrays
    t = torch.tensor(sorted(pids), dtype=torch.long, device=arrays.doc_offsets.device)
    with torch.inference_mode():
        scores = stages.exact_scores(q, arrays, t, kernels=kernels)
    top = torch.topk(scores, min(k, t.numel()))
    return t[top.indices].cpu().tolist(), top.values.cpu().tolist()


def run(snap: Snapshot, req: Request, queries: Sequence[str], Q: Optional[list[torch.Tensor]],
        precision: Optional[Precision] = None, trace: Optional[list] = None) -> list[list[Hit]]:
    """Every query's hits, best first. ``Q``: the queries' rows (``query_rows``); None in BM25 mode."""
    if req.mode == "colbert":
        out = colbert(snap, Q, req.k, req, precision, trace)
        return hits(snap, out, [maxsim_relevance(len(q)) for q in Q])
    if not snap.docstore.has_lexical():
        raise InvalidArgument(f"mode={req.mode!r} needs the lexical (BM25) side, which this index lacks: call "
                              f"index.add_lexical() once (or build with lexical=True)")
    lexical = _lexical(snap, queries, req.k if req.mode == "bm25" else req.depth, req)
    if req.mode == "bm25":
        out = [([p for p, _ in r], [s for _, s in r]) for r in lexical]
        scales = [_by_best(r) for r in lexical]
    elif req.mode == "bm25_rerank":
        kernels = dispatch.resolve(req.config.kernels, snap.arrays.doc_offsets.device)
        out = [rerank(snap, q, [p for p, _ in r], req.k, kernels) for q, r in zip(Q, lexical)]
        scales = [maxsim_relevance(len(q)) for q in Q]
    else:
        dense = colbert(snap, Q, req.depth, req, precision, trace)
        doc_of = snap.docstore.doc_ids(sorted({p for d in dense for p in d[0]} | {p for r in lexical for p, _ in r}))
        out = []
        for (pids, scores), lex in zip(dense, lexical):
            fused = fuse([[(doc_of[p], p, s) for p, s in zip(pids, scores)], [(doc_of[p], p, s) for p, s in lex]],
                         req.k, req.fusion, weights=(req.alpha, 1.0 - req.alpha))
            out.append(([r for r, _ in fused], [s for _, s in fused]))
        top = max_score(req.fusion)
        scales = [lambda s, top=top: min(1.0, max(0.0, s / top))] * len(out)
    return hits(snap, out, scales)


def maxsim_relevance(n_query_tokens: int):
    """MaxSim of L2-normalised vectors is a sum of cosines, one per query token: divided by the number of query
    tokens it is the mean best cosine, clipped to [0, 1]."""
    n = max(1, n_query_tokens)
    return lambda s: min(1.0, max(0.0, s / n))


def _by_best(ranked: list) -> callable:
    best = ranked[0][1] if ranked else 1.0
    return lambda s: (s / best) if best > 0 else 0.0


def hits(snap: Snapshot, out: list[tuple[list, list]], relevance: Sequence) -> list[list[Hit]]:
    """``Hit`` lists from (rows, scores) per query; ``relevance``: per query, a function of the score -> 0..1."""
    docs = snap.docstore.fetch(sorted({p for pids, _ in out for p in pids}))
    return [[Hit(id=docs[p][0], score=s, rank=r + 1, text=docs[p][1], metadata=docs[p][2], passage=docs[p][3],
                 relevance=rel(s)) for r, (p, s) in enumerate(zip(pids, scores))]
            for (pids, scores), rel in zip(out, relevance)]
