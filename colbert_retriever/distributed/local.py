"""One index's part of a search whose queries were encoded elsewhere: the pieces a shard contributes to a
distributed search (each over one snapshot, returning (document id, row, score) lists the driver merges), and a
whole search of one ``Index`` from query embeddings in every mode (the server encodes a batch of queries in one
forward pass, then searches each with its own arguments).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..config import SearchConfig
from ..errors import InvalidArgument
from ..hits import Hit
from ..index import Index
from ..kernels import dispatch
from ..search import parallel, retrieval
from ..search.reader import Snapshot
from ..search.retrieval import Request
from ..store import lexical_stats
from ..store.docstore import StaleSnapshot

STALE_RETRIES = 3


def snapshot_call(index: Index, fn):
    """``fn(snapshot)`` on the index's newest generation, again on a newer one when the lexical side moved past it
    while it read (as ``Index.search`` does)."""
    snap = index._current()
    for attempt in range(STALE_RETRIES):
        try:
            return fn(snap)
        except StaleSnapshot:
            if attempt + 1 == STALE_RETRIES:
                raise
            snap = index._current()


def _rows(snap: Snapshot, ranked: list[tuple[list, list]]) -> list[list[tuple]]:
    """(rows, scores) per query -> [(document id, row, score)] per query."""
    docs = snap.docstore.doc_ids(sorted({p for pids, _ in ranked for p in pids}))
    return [[(docs[p], int(p), float(s)) for p, s in zip(pids, scores)] for pids, scores in ranked]


def colbert_hits(snap: Snapshot, Q: list[torch.Tensor], req: Request, precision, trace: Optional[list]):
    """The top ``req.k`` hits of each query (text, metadata and relevance included), by PLAID."""
    out = retrieval.colbert(snap, Q, req.k, req, precision, trace)
    return retrieval.hits(snap, out, [retrieval.maxsim_relevance(len(q)) for q in Q])


def colbert_rows(snap: Snapshot, Q: list[torch.Tensor], req: Request, depth: int, precision,
                 trace: Optional[list]) -> list[list[tuple]]:
    """The top ``depth`` documents of each query by PLAID, as (document id, best row, MaxSim)."""
    return _rows(snap, retrieval.colbert(snap, Q, depth, req, precision, trace))


def check_lexical(snap: Snapshot, req: Request) -> None:
    if not snap.docstore.has_lexical():
        raise InvalidArgument(f"mode={req.mode!r} needs the lexical (BM25) side, which this index lacks: call "
                              f"index.add_lexical() once (or build with lexical=True)")


def lexical_terms(snap: Snapshot, queries: Sequence[str]) -> list[lexical_stats.Terms]:
    """Each query's lexical evidence in this snapshot (``lexical_stats.collect``)."""
    return [lexical_stats.collect(snap.docstore, q, snap.meta.counts.documents) for q in queries]


def lexical_rows(snap: Snapshot, terms: Sequence[lexical_stats.Terms], statistics: Sequence[tuple], limit: int,
                 req: Request) -> list[list[tuple]]:
    """The top ``limit`` documents of each query by BM25 under the given collection statistics (rows, tokens,
    hits per phrase: the sums over every shard), as (document id, best row, BM25)."""
    n, gen = snap.meta.counts.documents, snap.meta.generation
    limit = min(limit, max(1, snap.live_count))
    out = []
    for t, (rows, tokens, hits) in zip(terms, statistics):
        scores = lexical_stats.score(t, rows, tokens, hits)
        ranked = lexical_stats.top_documents(snap.docstore, scores, limit, n, gen, req.where, req.ids)
        out.append(([p for p, _ in ranked], [s for _, s in ranked]))
    return _rows(snap, out)


def rerank_rows(snap: Snapshot, Q: list[torch.Tensor], rows: Sequence[Sequence[int]], k: int,
                kernels: str) -> list[list[tuple]]:
    """Exact MaxSim of the given rows against each query, top k, as (document id, row, MaxSim)."""
    kernels = dispatch.resolve(kernels, snap.arrays.doc_offsets.device)
    return _rows(snap, [retrieval.rerank(snap, q, list(r), k, kernels) for q, r in zip(Q, rows)])


def fetch(snap: Snapshot, rows: Sequence[int]) -> dict:
    """row -> (id, text, metadata, passage) for the hits' texts."""
    return snap.docstore.fetch(sorted(set(int(r) for r in rows)))


def search_encoded(index: Index, queries: Sequence[str], Q: Optional[torch.Tensor], k: int = 10, *,
                   filter: Optional[dict] = None, ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
                   centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
                   exhaustive: bool = False, mode: str = "colbert", fusion: str = "normalized",
                   depth: Optional[int] = None, alpha: float = 0.5, kernels: str = "auto",
                   threads: Optional[int] = None, trace: Optional[list] = None) -> list[list[Hit]]:
    """``index.search(queries, ...)`` (same arguments, same hits) with the queries already encoded: Q is
    ``index.model.encode_query_rows(queries)`` or ``encode_queries``'s padded tensor (None in BM25 mode)."""
    config = SearchConfig(ncells, centroid_score_threshold, ndocs, exhaustive, kernels, threads)
    req = Request.make(k, mode=mode, fusion=fusion, depth=depth, config=config, filter=filter, ids=ids, alpha=alpha)
    with parallel.search_threads(threads):
        rows = None if mode == "bm25" else retrieval.query_rows(Q, index.model.config.dim, index.device)
        return snapshot_call(index, lambda snap: retrieval.run(snap, req, list(queries), rows,
                                                               index.model.precision, trace))
