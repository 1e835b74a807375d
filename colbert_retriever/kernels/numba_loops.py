"""PLAID's CPU kernels as plain numba loops: the readable reference, and the code that runs for query widths without
vector-register loops (``numba_ir.SIMD_WIDTHS``). Nothing here is compiled on import: ``numba_kernels`` compiles
each function (or a clone with its helpers bound by name, see ``numba_kernels.bind``) for explicit signatures.

- ``ci`` / ``ci_doc``: full centroid interaction: per document, each query token's best centroid score over the
  document's tokens, summed; one pass over the document's codes.
- ``exact`` / ``exact_doc``: exact MaxSim in the compressed domain (centroid score + the residual bytes' lookup-
  table rows, times the stored inverse norm), the per-document max in the same loop: no embedding materialised.
- ``probe_*``: stage 2 from the probed cells alone: each query token's best cells, one pass over the probed
  inverted lists marks the candidates, a second keeps each (candidate, query token)'s best probed cell score.
- ``scores`` / ``query_lut``: the query's operands (its centroid scores, its residual lookup table) computed
  in a fixed order, so that they do not depend on the CPU or the thread count.

Float arithmetic is compiled without fast-math: every sum runs in the order written (over query columns: column
0 first), so the results are the same on every x86-64 target (``numba_kernels`` rejects any fast-math flag in
the compiled IR; tested). ``ci`` / ``exact`` / ``scores`` run their runs of rows in parallel (``prange``) in their
parallel variants, serially in the others; the others are always serial.
"""

from __future__ import annotations

import numpy as np
from numba import prange

CHUNKS = 64
"""The parallel kernels split their rows into at most this many runs, each computed by the per-row function on one
thread. Keeping the per-document loops out of the ``prange`` body matters: numba's parallel lowering of those
loops measured several times slower than the same loops compiled on their own."""


def ci_doc(S, qp, q, codes, a, b, best):
    """One document's centroid interaction: tokens a..b, four at a time (one pass over ``best`` for four tokens:
    the running maximum is a chain through memory, so fewer passes are faster than a token at a time)."""
    if b <= a:
        return np.float32(0.0)
    for j in range(qp):
        best[j] = -np.inf
    t = a
    while t + 4 <= b:
        o0, o1 = np.int64(codes[t]) * qp, np.int64(codes[t + 1]) * qp
        o2, o3 = np.int64(codes[t + 2]) * qp, np.int64(codes[t + 3]) * qp
        for j in range(qp):
            best[j] = max(best[j], max(max(S[o0 + j], S[o1 + j]), max(S[o2 + j], S[o3 + j])))
        t += 4
    while t < b:
        o = np.int64(codes[t]) * qp
        for j in range(qp):
            best[j] = max(best[j], S[o + j])
        t += 1
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s


def exact_doc(S, lut, qp, q, codes, packed, inv_norms, a, b, best, acc):
    """One document's exact MaxSim: per token, its centroid's scores plus one lookup-table row per residual byte,
    four rows per pass over the accumulator (the sum is a chain through memory: four at a time measured
    faster than one), times the inverse norm; the per-token max kept."""
    if b <= a:
        return np.float32(0.0)
    P = packed.shape[1]
    P4 = P - P % 4
    for j in range(qp):
        best[j] = -np.inf
    for t in range(a, b):
        o = np.int64(codes[t]) * qp
        for j in range(qp):
            acc[j] = S[o + j]
        for p in range(0, P4, 4):
            o0 = (p * 256 + np.int64(packed[t, p])) * qp
            o1 = ((p + 1) * 256 + np.int64(packed[t, p + 1])) * qp
            o2 = ((p + 2) * 256 + np.int64(packed[t, p + 2])) * qp
            o3 = ((p + 3) * 256 + np.int64(packed[t, p + 3])) * qp
            for j in range(qp):
                acc[j] += (lut[o0 + j] + lut[o1 + j]) + (lut[o2 + j] + lut[o3 + j])
        for p in range(P4, P):
            o0 = (p * 256 + np.int64(packed[t, p])) * qp
            for j in range(qp):
                acc[j] += lut[o0 + j]
        w = inv_norms[t]
        for j in range(qp):
            best[j] = max(best[j], acc[j] * w)
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s


def scores_rows(C, Qt, a, b, S):
    """Rows a..b of the query-centroid scores: S[c * qp + j] = sum over d (in order, from 0) of C[c, d] x Qt[d, j];
    C (K, dim) float32, Qt (dim, qp) the query transposed and padded with zero columns. The readable reference
    of ``scores`` (which computes the same sums vectorised over centroids: tested bit for bit)."""
    dim, qp = Qt.shape
    for c in range(a, b):
        o = c * qp
        for j in range(qp):
            S[o + j] = np.float32(0.0)
        for d in range(dim):
            x = C[c, d]
            for j in range(qp):
                S[o + j] += x * Qt[d, j]


_CI_DOC, _EXACT_DOC = ci_doc, exact_doc  # in a width's clones of ``ci`` / ``exact``: that width's functions
_SKIP_BELOW = None  # in probe_top's clone: ``numba_ir.skip_below_ir()``
_SCORES_T = None  # in scores' clone: ``numba_ir.scores_ir()``


def ci(S, qp, q, codes, starts, ends, out):
    """S: (K * qp,) float32 centroid scores, row-major (a centroid's scores side by side, padded with zeros to qp
    columns, so the inner loops vectorise without a remainder); q: the real query tokens."""
    n = starts.shape[0]
    runs = min(n, CHUNKS)
    for r in prange(runs):
        best = np.empty(qp, dtype=np.float32)
        for i in range(r * n // runs, (r + 1) * n // runs):
            out[i] = _CI_DOC(S, qp, q, codes, starts[i], ends[i], best)


def exact(S, lut, qp, q, codes, packed, inv_norms, starts, ends, out):
    """S: (K * qp,) centroid scores; lut: (P * 256 * qp,) the query's lookup table (``query_lut``), both row-major
    with the query tokens side by side, padded with zeros to qp."""
    n = starts.shape[0]
    runs = min(n, CHUNKS)
    for r in prange(runs):
        best = np.empty(qp, dtype=np.float32)
        acc = np.empty(qp, dtype=np.float32)
        for i in range(r * n // runs, (r + 1) * n // runs):
            out[i] = _EXACT_DOC(S, lut, qp, q, codes, packed, inv_norms, starts[i], ends[i], best, acc)


def scores(CB, Q, S, ScT, K):
    """The query-centroid scores in both layouts the stages read: ScT (q, K) (``probe_top``) and S (K * qp,) rows
    padded with zeros to qp columns (``ci``, ``exact``), from CB (blocks * dim, 16) the centroids in blocks of 16
    (zero rows past K) and Q (q, dim) the query's rows. ScT's rows are longer than K (past K unused: rows exactly
    64 KB apart would share cache sets). Per block, 6 query tokens at a time (``_SCORES_T``, which writes both
    layouts); runs of blocks in parallel."""
    q = ScT.shape[0]
    qp = S.shape[0] // K
    blocks = CB.shape[0] // Q.shape[1]
    runs = min(blocks, CHUNKS)
    for r in prange(runs):
        for blk in range(r * blocks // runs, (r + 1) * blocks // runs):
            c0 = blk * 16
            n = min(16, K - c0)
            for i in range(n):
                for j in range(q, qp):
                    S[(c0 + i) * qp + j] = np.float32(0.0)
            for j in range(0, q, 6):
                _SCORES_T(CB, Q, j, blk, n, qp, S, ScT)


def query_lut(L, Qt, out):
    """The query's residual lookup table, padded: out[(p * 256 + v) * qp + j] = sum over i < per (in order) of
    L[v, i] x Qt[p * per + i, j], the dot product of query column j with what byte value v decodes to at byte
    position p. L (256, per) float32 (``ResidualCodec._lut``); Qt (dim, qp) as in ``scores``."""
    per = L.shape[1]
    dim, qp = Qt.shape
    for p in range(dim // per):
        for v in range(256):
            o = (p * 256 + v) * qp
            for j in range(qp):
                out[o + j] = np.float32(0.0)
            for i in range(per):
                x = L[v, i]
                r = p * per + i
                for j in range(qp):
                    out[o + j] += x * Qt[r, j]


def probe_top(ScT, K, ncells, cells, vals):
    """Each query token's ``ncells`` best centroids, best first: ScT (q, >= K) (the first K columns) -> cells (q,
    ncells) int64 and vals (q, ncells) float32, by one pass over the row keeping a sorted short list (as
    ``torch.topk``; the lower centroid first among equal scores), skipping 16 values at a time that cannot enter
    it (``_SKIP_BELOW``)."""
    q = ScT.shape[0]
    for j in range(q):
        for c in range(ncells):
            vals[j, c] = -np.inf
            cells[j, c] = 0
        last = np.float32(-np.inf)
        row = ScT[j]
        c = 0
        while c < K:
            c = _SKIP_BELOW(row, c, K, last)  # to the next 16 values with one above the list's last
            for cc in range(c, min(c + 16, K)):
                x = row[cc]
                if x > last:
                    i = ncells - 1
                    while i > 0 and vals[j, i - 1] < x:
                        vals[j, i] = vals[j, i - 1]
                        cells[j, i] = cells[j, i - 1]
                        i -= 1
                    vals[j, i] = x
                    cells[j, i] = cc
                    last = vals[j, ncells - 1]
            c += 16


def probe_mark(ivf_pids, ivf_offsets, base, cells, allowed, mark, cand, n):
    """Mark the documents (``base`` + segment-local pid) in the inverted lists of ``cells`` that ``allowed``
    admits (empty: all); each first seen is appended to ``cand`` after its ``n`` entries. Returns the new count."""
    use = allowed.shape[0] > 0
    for e in range(cells.shape[0]):
        c = cells[e]
        for t in range(ivf_offsets[c], ivf_offsets[c + 1]):
            d = np.int64(ivf_pids[t]) + base
            if mark[d] or (use and not allowed[d]):
                continue
            mark[d] = True
            cand[n] = d
            n += 1
    return n


def probe_slots(mark, cand, n, slot, scan, missing, best):
    """Give each of the ``n`` candidates its position in ascending order (``slot``) and its row of ``best``
    (n * q,) the query tokens' imputed scores ``missing``; with ``scan``, first list them in that order by a scan
    of ``mark`` (else the caller sorted ``cand``: numpy's sort, which compiles slowly under numba)."""
    if scan:
        i = 0
        for d in range(mark.shape[0]):
            if mark[d]:
                cand[i] = d
                i += 1
    q = missing.shape[0]
    for i in range(n):
        slot[cand[i]] = i
        for j in range(q):
            best[i * q + j] = missing[j]


def probe_best(ivf_pids, ivf_offsets, base, cells, vals, ncells, q, allowed, slot, best):
    """best: (n * q,) each (candidate, query token)'s best probed cell score so far; cells/vals: (q * ncells,)."""
    use = allowed.shape[0] > 0
    for e in range(cells.shape[0]):
        c = cells[e]
        j = e // ncells
        v = vals[e]
        for t in range(ivf_offsets[c], ivf_offsets[c + 1]):
            d = np.int64(ivf_pids[t]) + base
            if use and not allowed[d]:
                continue
            r = np.int64(slot[d]) * q + j
            if v > best[r]:
                best[r] = v


def probe_sums(best, q, out):
    """out (n,) <- each candidate's row of ``best`` (n * q,) summed, column 0 first."""
    for i in range(out.shape[0]):
        s = np.float32(0.0)
        for j in range(q):
            s += best[i * q + j]
        out[i] = s

