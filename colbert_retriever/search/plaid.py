"""PLAID search for one query: planning and the order of the stages.

1. candidate generation: the top ``ncells`` centroids of each query token -> their inverted lists -> pids;
2. stage 2 scores the candidates approximately (probed scoring by default, PLAID's pruned centroid interaction
   when a threshold is given) and keeps ``stage2_docs``; 3. full centroid interaction keeps ``exact_docs``;
4. those are scored exactly with MaxSim over their decompressed embeddings. Unset knobs adapt to the query and
   the index (``plan``). ``exhaustive`` skips 1-3 and scores every allowed document.

``search`` is the one entry point. It takes a query it can trust (2-D float32, real rows only: ``Index`` checks
and normalises queries once, at its boundary) and everything that steers it as arguments: the knobs
(``SearchConfig``), the precision policy, the kernels and threads, for this call only. The stage functions
live in ``stages.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..codec.residual import transposed
from ..config import SearchConfig
from ..device import Precision
from ..kernels import dispatch
from . import parallel, stages
from .arrays import Groups, IndexArrays

CELLS_PER_QUERY = 48
"""A short query probes more cells per token, so that at least this many cells are probed in all (pruned stage 2)."""
PROBED_CELLS_PER_QUERY = 96
"""The same floor for probed scoring, which sees only the probed cells (the pruned stage sees every centroid above
its threshold): on 100k WordNet glosses with 1-3-word queries, 48 cells in all agreed 0.987 with exhaustive top-10,
96 agreed 0.994 at about the same latency (k=10)."""


@dataclass(frozen=True)
class SearchPlan:
    """Resolved work for one query: cells probed per query token, the pruning threshold (None: candidates are
    scored from their probed cells instead, see ``stages.probed_scores``), documents kept after stage 2, after
    full centroid interaction (stage 3; the documents it keeps are those scored exactly), and how: whether stage
    3 gathers float16 scores (``half_interaction``: torch kernels on CPU), whether the query-centroid product runs
    on packed float16 centroids (``half_centroid_scores``; both from ``Precision``), the kernels, the intra-op
    threads (None: ``_parallel``'s policy) and how probed scoring finds its distinct candidates (``unique``, see
    ``stages.unique_inverse``).
    Benchmarks compare two ways of running a stage by passing ``dataclasses.replace(plan, ...)`` to ``search``."""

    ncells: int
    centroid_score_threshold: Optional[float]
    stage2_docs: int
    exact_docs: int  # kept by stage 3 (full centroid interaction) and scored exactly
    exhaustive: bool = False
    half_interaction: bool = True
    half_centroid_scores: bool = True
    kernels: str = "torch"
    threads: Optional[int] = None
    unique: str = "auto"


@dataclass
class SearchTrace:
    """What one query's search did (``Index.search(..., trace=[])`` appends one per query): the stage-2 method
    ("probed" or "pruned"; None when every allowed document was scored), candidates found, documents kept after
    stage 2 and scored exactly, whether every allowed document was scored (``exhaustive``) and why, the kernels,
    threads and stage-3 score dtype used, and (documents stored as passages) how many rows of the documents
    returned the stages had not kept and were scored to complete them (``completed``). ``fallback``: why a search
    that would have run the numba kernels (CPU) or the Triton kernels (CUDA) ran the torch ones ("" when it did
    not: numba still compiling in the background, failed to compile, failed to import; Triton failed to import)."""

    stage2: Optional[str] = None
    candidates: int = 0
    stage2_kept: int = 0
    exact_scored: int = 0
    exhaustive: bool = False
    reason: str = ""
    kernels: str = "torch"
    threads: int = 1
    interaction_dtype: Optional[torch.dtype] = None
    widened: bool = False
    completed: int = 0
    fallback: str = ""


def _defaults(k: int) -> tuple[int, float, int, int, int]:
    """(ncells with a threshold, threshold, ndocs, budget of document-token x query-token scores for the exact
    stage, ncells for probed scoring)"""
    if k <= 10:
        return 2, 0.45, 512, 1 << 18, 8
    if k <= 100:
        return 4, 0.4, 2048, 1 << 20, 16
    return 8, 0.35, max(8 * k, 8192), max(1 << 21, 2048 * k), 32


def plan(config: SearchConfig, k: int, q_len: int = 32, avg_doclen: float = 64.0, *,
         precision: Optional[Precision] = None, kernels: str = "torch") -> SearchPlan:
    """Resolve ``config``'s knobs for one query of ``q_len`` tokens on an index whose documents average
    ``avg_doclen`` tokens (``kernels``: the resolved kernel family, see ``dispatch.resolve``).

    Explicit knobs keep PLAID's meaning: probe ``ncells`` centroids per query token, keep ``ndocs`` documents
    after stage 2 and ``max(ndocs // 4, k)`` after full centroid interaction; those are scored exactly. Stage 2
    is PLAID's pruned centroid interaction when ``centroid_score_threshold`` is given; without it (the default)
    the candidates are scored from the cells probed for each query token (``stages.probed_scores``), which
    measured both faster and closer to exhaustive search (BENCHMARKS.md). Unset knobs start from colbert-ai's
    table (k<=10: 1, 0.5, 256; k<=100: 2, 0.45, 1024; else 4, 0.4, max(4k, 4096)), changed where measured
    latency-vs-agreement curves said so (the numbers: benchmarks/NOTES.md, "Moved from docstrings"):

    - probed scoring looks at 8 / 16 / 32 cells per query token (k <= 10 / <= 100 / more), with a threshold 2 / 4
      / 8; a short query probes more cells per token (at least ``PROBED_CELLS_PER_QUERY`` in all, with a
      threshold ``CELLS_PER_QUERY``);
    - the full centroid-interaction stage stays: skipping it for k <= 10 was faster but agreed markedly less with
      exhaustive search on a [MASK]-augmented checkpoint (BENCHMARKS.md "Against colbert-ai");
    - the documents scored exactly fill a budget of document-token x query-token scores (the exact stage's cost),
      never fewer than the table's: short documents and short queries (WordNet glosses, 1-3-word queries, where
      centroid scores tie a lot) get many more documents scored exactly for the same work (k <= 10: 2^18 scores,
      ~3,200 glosses of ~20 tokens for a 4-token query); scifact-like queries and documents stay at the table's
      128 documents.
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
    pr = precision or Precision()
    how = dict(half_interaction=pr.half_interaction, half_centroid_scores=pr.half_centroid_scores, kernels=kernels,
               threads=config.threads)
    if config.ndocs is not None:
        exact = max(config.ndocs // 4, k)
        return SearchPlan(ncells, threshold, max(config.ndocs, k), exact, config.exhaustive, **how)
    exact = max(nd // 4, k, budget_docs)
    return SearchPlan(ncells, threshold, max(nd, exact), exact, config.exhaustive, **how)


def group_rows(k: int, rows_per_group: float, n_allowed: int) -> int:
    """Rows the stages keep to return ``k`` documents of ``rows_per_group`` rows on average: the rows of k average
    documents, rounded up, plus k of slack; at most the allowed rows."""
    return min(n_allowed, math.ceil(k * rows_per_group) + k)


def search(q: torch.Tensor, arrays: IndexArrays, k: int, config: SearchConfig = SearchConfig(), *,
           allowed: Optional[torch.Tensor] = None, n_allowed: Optional[int] = None,
           groups: Optional[torch.Tensor | Groups] = None, rows_per_group: float = 1.0,
           precision: Optional[Precision] = None, plan_override: Optional[SearchPlan] = None,
           trace: Optional[list] = None, kernels: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PLAID search for one query: the top-k (pids, exact MaxSim scores), best first.

    q: (q_len, dim) float32 query embeddings, real rows only, on the index's device. allowed: (n_rows,) bool of
    rows that may be returned (live and matching a filter) or None for all; n_allowed: its count (computed when
    not given). groups: when documents are stored as several rows (passages), a ``Groups`` (or the (n_rows,)
    document number of each row, from which one is built): then the top k *documents* are returned, each as its
    best row with its exact score (every allowed row of the k documents returned is scored exactly, whether the
    stages kept it or not), and the stages are sized for k documents of ``rows_per_group`` rows on average.
    precision: the policy the stages follow (default: the CPU's); plan_override: a resolved plan to run instead
    of planning (benchmarks comparing two ways of running a stage); trace: a list to append this query's
    ``SearchTrace`` to; kernels: the family ``dispatch.resolve`` gave for ``config.kernels`` (a caller searching
    many queries resolves once; None: resolved here). Always returns min(k, allowed documents) results.
    """
    assert q.dim() == 2 and q.dtype == torch.float32, (q.shape, q.dtype)
    dev = arrays.doc_offsets.device
    if n_allowed is None:
        n_allowed = arrays.num_docs if allowed is None else int(allowed.sum())
    tr = SearchTrace()
    if trace is not None:
        trace.append(tr)
    if n_allowed == 0:
        tr.reason = "nothing allowed"
        return torch.empty(0, dtype=torch.long, device=dev), torch.empty(0, device=dev)
    p = plan_override or plan(config, k, q.shape[0], int(arrays.doc_offsets[-1]) / max(1, arrays.num_docs),
                              precision=precision, kernels=kernels or dispatch.resolve(config.kernels, dev))
    tr.fallback = dispatch.auto_fallback(config.kernels, p.kernels, dev)
    rows = k if groups is None else group_rows(k, rows_per_group, n_allowed)
    if rows > p.exact_docs:
        p = dataclasses.replace(p, stage2_docs=max(p.stage2_docs, rows), exact_docs=rows)
    if groups is not None and not isinstance(groups, Groups):
        groups = Groups.of(groups)
    with parallel.search_threads(p.threads) as n:  # many small steps: see parallel
        tr.threads = n
        tables = None
        if p.kernels == "numba" and q.shape[0]:
            code = dispatch.numba_code_name(arrays.codes.parts[0])
            ks, tr.fallback = dispatch.numba_for_search(code, q.shape[0], n,
                                                        "numba" if plan_override else config.kernels)
            if ks is None:  # the torch twins, with the float32 interaction the numba kernels compute
                p = dataclasses.replace(p, kernels="torch", half_interaction=False)
            else:
                tables = dispatch.numba_tables(ks, q, arrays.codec, code, n)
        elif p.kernels == "numba":
            p = dataclasses.replace(p, kernels="torch")  # no query rows: nothing for the kernels to do
        tr.kernels = p.kernels
        if tables is not None:
            Sc, ScT = None, torch.from_numpy(tables.ScT)
        else:
            Sc, ScT = arrays.codec.centroid_scores(q, half=p.half_centroid_scores)
        run = _Run(q, Sc, ScT, arrays, k, p, allowed, groups, tr, tables)
        if p.exhaustive or n_allowed <= p.exact_docs or q.shape[0] == 0:
            tr.reason = "exhaustive" if p.exhaustive else "collection within the exact-stage budget"
            return run.score_all_allowed()
        return run.stages()


class _Run:
    """One query's stages (``search`` sets it up)."""

    def __init__(self, q, Sc, ScT, arrays, k, p: SearchPlan, allowed, groups, tr: SearchTrace, tables=None):
        """Sc (K, q_len) and/or its transpose ScT (q_len, K), as ``ResidualCodec.centroid_scores`` or the numba
        tables (``tables``: the numba kernels' operands for this query, else None) gave them."""
        self.q, self._Sc, self.arrays, self.k, self.p = q, Sc, arrays, k, p
        self.ScT = Sc.T if ScT is None else ScT
        self.allowed, self.groups, self.tr = allowed, groups, tr
        self.lut_q = None
        self.tables = tables

    @property
    def Sc(self) -> torch.Tensor:
        """(K, q_len) contiguous, made from the transpose the first time a stage asks (with the numba kernels only
        PLAID's pruned stage 2 and the torch fallbacks do)."""
        if self._Sc is None:
            self._Sc = transposed(self.ScT)
        return self._Sc

    def top(self, pids: torch.Tensor, scores: torch.Tensor, complete: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best results: rows, or with ``groups`` each document's best row (fewer when fewer documents).
        pids: sorted unique rows with their exact scores. With groups and ``complete``, the allowed rows of the k
        documents chosen that are not among ``pids`` are scored too, so that each is returned as its best row
        with its true score: that only raises the chosen documents' scores, so the same k are returned. (Fewer
        than k documents: the caller widens to more rows, and completes then.)"""
        if self.groups is None:
            top = torch.topk(scores, min(self.k, pids.numel()))
            return pids[top.indices], top.values
        dev = pids.device
        p, s = pids.cpu().numpy(), scores.cpu().numpy()
        docs, rows, best = self.groups.best_rows(p, s)
        sel = np.argsort(-best, kind="stable")[: self.k]  # best first; equal scores: the lower document first
        if complete and docs.size >= self.k:
            want = self.groups.rows_of(docs[sel])
            if self.allowed is not None:
                want = want[self.allowed.cpu().numpy()[want]]
            pos = np.searchsorted(p, want).clip(max=p.size - 1)
            missing = want[p[pos] != want]
            if missing.size:
                self.tr.completed += int(missing.size)
                both = np.concatenate([p, missing])
                order = np.argsort(both)
                more = self.exact(torch.from_numpy(missing).to(dev)).cpu().numpy()
                return self.top(torch.from_numpy(both[order]), torch.from_numpy(np.concatenate([s, more])[order]),
                                complete=False)
        return torch.from_numpy(rows[sel]).to(dev), torch.from_numpy(best[sel]).to(dev)

    def exact(self, pids: torch.Tensor) -> torch.Tensor:
        self.tr.exact_scored += int(pids.numel())
        t = self.tables
        if self.lut_q is None and t is None and self.p.kernels != "triton":  # the lookup table, once per search
            self.lut_q = self.arrays.codec.query_lut(self.q)  # (the numba tables compute their own)
        return stages.exact_scores(self.q, self.arrays, pids, None if t is not None else self.Sc,
                                   kernels=self.p.kernels, threads=self.tr.threads, lut_q=self.lut_q,
                                   tables=t)

    def score_all_allowed(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.tr.exhaustive = True
        dev = self.arrays.doc_offsets.device
        a = self.allowed
        pids = a.nonzero().flatten() if a is not None else torch.arange(self.arrays.num_docs, device=dev)
        return self.top(pids, self.exact(pids), complete=False)  # every allowed row is scored

    def stages(self) -> tuple[torch.Tensor, torch.Tensor]:
        p, arrays, tr = self.p, self.arrays, self.tr
        if p.centroid_score_threshold is None:
            tr.stage2 = "probed"
            how = {"tables": self.tables} if self.tables is not None else {}
            pids, approx = stages.probed_scores(self.ScT, arrays, p.ncells, self.allowed, unique=p.unique,
                                                kernels=p.kernels, **how)
        else:
            tr.stage2 = "pruned"
            pids, approx = stages.pruned_candidates(self.Sc, arrays, p.ncells, p.centroid_score_threshold,
                                                    self.allowed, kernels=p.kernels)
        tr.candidates = int(pids.numel())
        if pids.numel() < self.k:  # widen: too few candidates, score every allowed document
            tr.reason, tr.widened = "too few candidates", True
            return self.score_all_allowed()
        if pids.numel() > p.stage2_docs:
            pids = self._best(pids, approx, p.stage2_docs)
        tr.stage2_kept = int(pids.numel())
        pool = pids
        if pids.numel() > p.exact_docs:
            # on CPU the ranking-only interaction may gather float16 scores: half the bytes moved
            half = p.half_interaction and p.kernels == "torch" and self.ScT.device.type == "cpu"
            Sci = None if self.tables is not None else self.Sc.to(torch.float16) if half else self.Sc
            tr.interaction_dtype = torch.float32 if Sci is None else Sci.dtype
            ci = stages.centroid_interaction(Sci, arrays, pids, kernels=p.kernels, threads=tr.threads,
                                             tables=self.tables)
            pids = self._best(pids, ci, p.exact_docs)
        exact = self.exact(pids)
        out = self.top(pids, exact)
        if self.groups is None or out[0].numel() >= self.k:
            return out
        # documents stored as passages: the rows scored exactly held fewer than k documents. Score the rest of
        # stage 2's rows, then, if still short, every allowed row
        tr.widened = True
        if pool.numel() > pids.numel():
            rest = torch.ones(pool.numel(), dtype=torch.bool, device=pool.device)
            rest[torch.searchsorted(pool, pids)] = False
            rest = pool[rest]
            both = torch.cat([pids, rest])
            order = torch.argsort(both)
            out = self.top(both[order], torch.cat([exact, self.exact(rest)])[order])
            if out[0].numel() >= self.k:
                return out
        tr.reason = "fewer than k documents among the rows scored"
        return self.score_all_allowed()

    @staticmethod
    def _best(pids: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
        """The n best pids by ``scores``, sorted ascending (rows gather segment by segment, see ``Rows.take``)."""
        return pids[torch.topk(scores, n).indices].sort().values
