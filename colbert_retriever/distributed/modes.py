"""A sharded search in each mode, as rounds of calls to the shards and merges on the driver, so that with the same
codec and documents the hits are those one index over the whole collection gives:

- colbert: each shard's top k (PLAID, or exhaustive) -> the k best overall (one round);
- bm25: each shard's collection statistics -> summed -> each shard's top k under the sums -> the k best (the
  scores of one index: ``store.lexical_stats``), then the winners' texts;
- hybrid: each shard's top ``depth`` by MaxSim, and by BM25 under the summed statistics -> the ``depth`` best of
  each side overall -> fused exactly as one index fuses them (``search.fusion.fuse``) -> the winners' texts;
- bm25_rerank: the ``depth`` best by BM25 overall -> each shard scores its own of them by exact MaxSim -> the k
  best, then their texts.

``call(requests)`` runs [(shard name, method, arguments)] at once and returns their payloads in order (the shards'
generations are checked by the caller). Ties between shards go to the lower shard number, then the lower row.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..hits import Hit
from ..search.fusion import fuse, max_score
from ..search.retrieval import Request, maxsim_relevance

Call = Callable[[list], list]


def _best(lists: Sequence[Sequence[tuple]], k: int) -> list[tuple]:
    """[(shard, document id, row, score)] of the k best of per-shard lists of (document id, row, score)."""
    merged = [(s, d, r, sc) for s, rows in enumerate(lists) for d, r, sc in rows]
    merged.sort(key=lambda x: (-x[3], x[0], x[2]))
    return merged[:k]


def _texts(call: Call, names: Sequence[str], winners: Sequence[Sequence[tuple]], relevance) -> list[list[Hit]]:
    """Hits for each query's winners [(shard, id, row, score)]: their texts fetched from the shards holding them."""
    wanted: dict[int, set] = {}
    for w in winners:
        for s, _, r, _ in w:
            wanted.setdefault(s, set()).add(r)
    shards = sorted(wanted)
    fetched = dict(zip(shards, call([(names[s], "fetch", (sorted(wanted[s]),)) for s in shards])))
    out = []
    for w, rel in zip(winners, relevance):
        hits = []
        for rank, (s, _, r, score) in enumerate(w):
            doc_id, text, meta, passage = fetched[s][r]
            hits.append(Hit(id=doc_id, score=score, rank=rank + 1, text=text, metadata=meta, passage=passage,
                            relevance=rel(score)))
        out.append(hits)
    return out


def _statistics(call: Call, names: Sequence[str], queries: Sequence[str], req: Request) -> list[tuple]:
    """Per query the collection's (rows, tokens, hits per phrase): each shard's, summed."""
    per_shard = call([(n, "lexical_statistics", (list(queries), req)) for n in names])
    return _sum_statistics(per_shard, len(queries))


def _sum_statistics(per_shard: list, n_queries: int) -> list[tuple]:
    out = []
    for qi in range(n_queries):
        parts = [p[qi] for p in per_shard]
        hits = [sum(h) for h in zip(*(p[2] for p in parts))]
        out.append((sum(p[0] for p in parts), sum(p[1] for p in parts), hits))
    return out


def _lexical(call: Call, names, queries, statistics, limit: int, req: Request) -> list[list[tuple]]:
    """Per query the ``limit`` best documents by BM25 under the summed statistics, [(shard, id, row, score)]."""
    per_shard = call([(n, "lexical_rows", (list(queries), statistics, limit, req)) for n in names])
    return [_best([p[qi] for p in per_shard], limit) for qi in range(len(queries))]


def colbert(call: Call, names, Q: list, req: Request, trace: Optional[list]) -> list[list[Hit]]:
    per_shard = call([(n, "colbert_hits", (Q, req, trace is not None)) for n in names])
    if trace is not None:
        trace.extend(t for _, traces, _ in per_shard for t in traces)
    out = []
    for qi in range(len(Q)):
        merged = [(s, h) for s, (hits, _, _) in enumerate(per_shard) for h in hits[qi]]
        merged.sort(key=lambda x: (-x[1].score, x[0], x[1].rank))
        out.append([Hit(h.id, h.score, r + 1, h.text, h.metadata, h.passage, h.relevance)
                    for r, (_, h) in enumerate(merged[: req.k])])
    return out


def bm25(call: Call, names, queries: Sequence[str], req: Request) -> list[list[Hit]]:
    statistics = _statistics(call, names, queries, req)
    winners = _lexical(call, names, queries, statistics, req.k, req)
    relevance = []
    for w in winners:
        best = w[0][3] if w else 1.0
        relevance.append(lambda s, best=best: (s / best) if best > 0 else 0.0)
    return _texts(call, names, winners, relevance)


def hybrid(call: Call, names, queries: Sequence[str], Q: list, req: Request, trace: Optional[list]):
    first = call([(n, "colbert_rows", (Q, req, req.depth, trace is not None)) for n in names]
                 + [(n, "lexical_statistics", (list(queries), req)) for n in names])
    dense_parts, stats_parts = first[: len(names)], first[len(names):]
    if trace is not None:
        trace.extend(t for _, traces in dense_parts for t in traces)
    statistics = _sum_statistics(stats_parts, len(queries))
    lexical = _lexical(call, names, queries, statistics, req.depth, req)
    winners = []
    for qi in range(len(queries)):
        dense = _best([rows[qi] for rows, _ in dense_parts], req.depth)
        fused = fuse([[(d, (s, r), sc) for s, d, r, sc in dense], [(d, (s, r), sc) for s, d, r, sc in lexical[qi]]],
                     req.k, req.fusion, weights=(req.alpha, 1.0 - req.alpha))
        winners.append([(s, None, r, score) for (s, r), score in fused])
    top = max_score(req.fusion)
    return _texts(call, names, winners, [lambda s: min(1.0, max(0.0, s / top))] * len(winners))


def bm25_rerank(call: Call, names, queries: Sequence[str], Q: list, req: Request) -> list[list[Hit]]:
    statistics = _statistics(call, names, queries, req)
    candidates = _lexical(call, names, queries, statistics, req.depth, req)
    per_shard: list[list[list[int]]] = [[[] for _ in queries] for _ in names]
    for qi, c in enumerate(candidates):
        for s, _, r, _ in c:
            per_shard[s][qi].append(r)
    involved = [s for s in range(len(names)) if any(per_shard[s])]
    reranked = call([(names[s], "rerank_rows", (Q, per_shard[s], req.k, req.config.kernels)) for s in involved])
    by_shard = dict(zip(involved, reranked))
    winners = [_best([by_shard[s][qi] if s in by_shard else [] for s in range(len(names))], req.k)
               for qi in range(len(queries))]
    return _texts(call, names, winners, [maxsim_relevance(len(q)) for q in Q])


def run(call: Call, names, queries: Sequence[str], Q: Optional[list], req: Request,
        trace: Optional[list]) -> list[list[Hit]]:
    """Every query's hits, best first, in ``req.mode``. ``Q``: the queries' rows (None in BM25 mode)."""
    if req.mode == "colbert":
        return colbert(call, names, Q, req, trace)
    if req.mode == "bm25":
        return bm25(call, names, queries, req)
    if req.mode == "hybrid":
        return hybrid(call, names, queries, Q, req, trace)
    return bm25_rerank(call, names, queries, Q, req)
