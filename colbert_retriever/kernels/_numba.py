"""Fused CPU kernels for PLAID's stages, compiled by numba (LLVM from a PyPI wheel: no C compiler on the
user's machine). Imported only through ``_kernels`` when a search runs with ``kernels="numba"`` (the default on
CPU when numba is installed); the torch code in ``stages.py`` is their tested twin and the fallback.

- ``centroid_interaction``: per document, each query token's best centroid score over the document's tokens,
  summed; one pass over the document's codes, no padded blocks, no gathers.
- ``probed_scores``: stage 2 from the probed cells alone: each query token's best cells (one pass over its
  scores), then one pass over the probed inverted lists marks the candidates and a second
  keeps each (candidate, query token)'s best probed cell score; no sort of the entries.
- ``exact_scores``: per document, MaxSim over its decompressed tokens computed in the compressed domain
  (centroid score + the residual bytes' lookup-table rows, times the stored inverse norm), the per-document max
  in the same loop: no embedding is materialised.

``centroid_interaction`` and ``exact_scores`` run in parallel over documents (numba's ``prange``) or serially
(``probed_scores`` always serially). A search that runs
alone with more than one thread takes the parallel variant; concurrent searches take the serial one (numba's
default ``workqueue`` threading layer must not be entered by two threads at once, so at most one parallel launch
runs at a time here).
Compiled code is cached on disk (``cache=True``: beside this file, or in the user's cache folder when the
package folder is read-only), so only the first search on a machine pays the compilation.
"""

from __future__ import annotations

import threading
import types
from typing import Optional

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange
from numba import types as nbtypes
from numba.core import cgutils
from numba.core.compiler import Compiler
from numba.extending import intrinsic

_parallel_lock = threading.Lock()


CHUNKS = 64
"""The parallel kernels split their documents into at most this many runs, each scored by the per-document
function (``_ci_doc``, ``_exact_doc``) on one thread. Keeping the per-document loops out of the ``prange`` body
matters: numba's parallel lowering of those loops measured 3x slower than the same loops compiled on their own."""

_opts = dict(cache=True, nogil=True, error_model="numpy", fastmath=True)


class _NoAlias(Compiler):
    """numba's compiler, with every array argument of the function declared not to share memory with another
    (LLVM ``noalias``, what numba itself declares for the bodies of parallel loops it proves alias-free). Without
    it LLVM must assume an output (a running maximum, an accumulator) may overlap a table it reads, so each
    inner loop re-checks the overlap and keeps its values in memory: the exact stage over 128 scifact rows ran
    2.2 ms on one thread, 1.55 ms with it (centroid interaction 0.24 -> 0.21). The rule it brings: **no kernel
    below may be given two arrays that overlap where it writes** (each caller allocates its outputs and scratch
    fresh)."""

    def define_pipelines(self):
        if hasattr(self.state.flags, "noalias"):  # a numba without the flag compiles as before, only slower
            self.state.flags.noalias = True
        return super().define_pipelines()


_kernel_opts = dict(_opts, pipeline_class=_NoAlias)


@numba.njit(**_kernel_opts)
def _ci_doc(S, qp, q, codes, a, b, best):
    """One document's centroid interaction: tokens a..b, four at a time (one pass over ``best`` for four tokens:
    the running maximum is a chain through memory, 2.7x faster on one thread than a token at a time)."""
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


@numba.njit(**_kernel_opts)
def _exact_doc(S, lut, qp, q, codes, packed, inv_norms, a, b, best, acc):
    """One document's exact MaxSim: per token, its centroid's scores plus one lookup-table row per residual byte
    (as torch's embedding_bag sums them), four rows per pass over the accumulator (the sum is a chain through
    memory: four at a time measured ~1.3x faster than one), times the inverse norm; the per-token max kept."""
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


# ---------------------------------------------------------------- the same loops in vector registers
# ``_ci_doc`` and ``_exact_doc`` as numba compiles them keep their running maxima and accumulators in memory: per
# token (and residual byte) the loop over query columns is entered anew (bounds, remainder, reloads), ~45
# instructions for the ~14 that add. For the widths most queries pad to (8, 16, 32 columns) the same loops are
# written below as LLVM IR through numba's ``intrinsic`` (no C compiler: numba hands the IR to its own LLVM),
# maxima and accumulators held in LLVM vectors, i.e. registers. Generic vectors: LLVM lowers them to whatever
# the CPU has (two AVX2 registers for 16 floats). No fast-math: the additions run in the order written, so the
# results do not depend on the CPU. One thread, scifact rows: exact stage over 128 documents (21k tokens) 1.61 ->
# 0.83 ms at 32 columns, 1.41 -> 0.44 at 16; centroid interaction over 512 documents 0.21 -> 0.10 ms.

SIMD_WIDTHS = (8, 16, 32)
"""Padded query widths (``_qp``) the two per-document loops run in vector registers; other widths run
``_ci_doc`` / ``_exact_doc``."""


class _IR:
    """What both intrinsics share: rows of ``qp`` float32 as ``n`` LLVM vectors of ``width`` lanes."""

    def __init__(self, qp: int):
        self.qp = qp
        self.i64 = ir.IntType(64)
        self.width = 16 if qp % 16 == 0 else 8
        self.n = qp // self.width
        self.vt = ir.VectorType(ir.FloatType(), self.width)

    def const(self, v: int):
        return ir.Constant(self.i64, v)

    def splat(self, x: float):
        return ir.Constant(self.vt, [x] * self.width)

    def broadcast(self, builder, x):
        """A vector of ``width`` copies of the float ``x``."""
        undef = ir.Constant(self.vt, ir.Undefined)
        lane0 = builder.insert_element(undef, x, ir.IntType(32)(0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width)
        return builder.shuffle_vector(lane0, undef, zeros)

    def load(self, builder, base, off):
        """The ``width`` floats at base[off:]."""
        return builder.load(builder.bitcast(builder.gep(base, [off]), self.vt.as_pointer()), align=4)

    def load_row(self, builder, base, row):
        """Row ``row`` (an i64) of a (rows, qp) float32 table, as ``n`` vectors."""
        off = builder.mul(row, self.const(self.qp))
        return [self.load(builder, base, builder.add(off, self.const(v * self.width))) for v in range(self.n)]

    def store_row(self, builder, vectors, base):
        for v, x in enumerate(vectors):
            ptr = builder.bitcast(builder.gep(base, [self.const(v * self.width)]), self.vt.as_pointer())
            builder.store(x, ptr, align=4)

    def max_into(self, builder, slots, vectors):
        for slot, x in zip(slots, vectors):
            cur = builder.load(slot)
            builder.store(builder.select(builder.fcmp_ordered(">", x, cur), x, cur), slot)

    def tokens(self, context, builder, ty, a, b):
        """A loop over tokens a..b (loop variable: i64)."""
        start = context.cast(builder, a, ty[0], nbtypes.int64)
        stop = context.cast(builder, b, ty[1], nbtypes.int64)
        return cgutils.for_range_slice(builder, start, stop, self.const(1), inc=True)

    def code(self, builder, codes, dtype, t):
        """codes[t] as an i64 (codes are uint8 / uint16 / int32)."""
        widen = builder.sext if dtype.signed else builder.zext
        return widen(builder.load(builder.gep(codes.data, [t])), self.i64)


def _ci_ir(qp: int):
    """A numba intrinsic ``f(S, codes, a, b, best)``: for tokens a..b of one document, best[:qp] = per query column
    the max over tokens of S[code] (operands as in ``_ci_doc``)."""
    g = _IR(qp)

    @intrinsic
    def ci(typingctx, S, codes, a, b, best):
        def codegen(context, builder, signature, args):
            ty = signature.args
            S_, codes_, best_ = (context.make_array(ty[i])(context, builder, args[i]) for i in (0, 1, 4))
            best_v = [cgutils.alloca_once_value(builder, g.splat(float("-inf"))) for _ in range(g.n)]
            with g.tokens(context, builder, ty[2:4], args[2], args[3]) as (t, _):
                g.max_into(builder, best_v, g.load_row(builder, S_.data, g.code(builder, codes_, ty[1].dtype, t)))
            g.store_row(builder, [builder.load(x) for x in best_v], best_.data)
            return context.get_dummy_value()

        return nbtypes.void(S, codes, a, b, best), codegen

    return ci


def _maxsim_ir(qp: int):
    """A numba intrinsic ``f(S, lut, codes, packed, inv_norms, a, b, best)``: for tokens a..b of one document,
    best[:qp] = per query column the max over tokens of (S[code] + the residual bytes' LUT rows) x inverse norm
    (operands as in ``_exact_doc``). Even and odd byte positions sum into two accumulators (two dependency
    chains), added before the norm."""
    g = _IR(qp)

    @intrinsic
    def maxsim(typingctx, S, lut, codes, packed, inv_norms, a, b, best):
        def codegen(context, builder, signature, args):
            ty = signature.args
            S_, lut_, codes_, packed_, inv_, best_ = (context.make_array(ty[i])(context, builder, args[i])
                                                      for i in (0, 1, 2, 3, 4, 7))
            P = cgutils.unpack_tuple(builder, packed_.shape)[1]
            best_v = [cgutils.alloca_once_value(builder, g.splat(float("-inf"))) for _ in range(g.n)]
            even = [cgutils.alloca_once(builder, g.vt) for _ in range(g.n)]
            odd = [cgutils.alloca_once(builder, g.vt) for _ in range(g.n)]

            def add_row(t_row, p, acc):  # acc += the LUT row of byte position p
                byte = builder.zext(builder.load(builder.gep(packed_.data, [builder.add(t_row, p)])), g.i64)
                rows = g.load_row(builder, lut_.data, builder.add(builder.mul(p, g.const(256)), byte))
                for slot, x in zip(acc, rows):
                    builder.store(builder.fadd(builder.load(slot), x), slot)

            with g.tokens(context, builder, ty[5:7], args[5], args[6]) as (t, _):
                for slot, x in zip(even, g.load_row(builder, S_.data, g.code(builder, codes_, ty[2].dtype, t))):
                    builder.store(x, slot)
                for slot in odd:
                    builder.store(g.splat(0.0), slot)
                t_row = builder.mul(t, P)
                with cgutils.for_range(builder, builder.udiv(P, g.const(2))) as loop:
                    p = builder.mul(loop.index, g.const(2))
                    add_row(t_row, p, even)
                    add_row(t_row, builder.add(p, g.const(1)), odd)
                with cgutils.if_unlikely(builder, builder.icmp_unsigned("!=", builder.urem(P, g.const(2)), g.const(0))):
                    add_row(t_row, builder.sub(P, g.const(1)), even)
                w = g.broadcast(builder, builder.load(builder.gep(inv_.data, [t])))
                g.max_into(builder, best_v, [builder.fmul(builder.fadd(builder.load(e), builder.load(o)), w)
                                             for e, o in zip(even, odd)])
            g.store_row(builder, [builder.load(x) for x in best_v], best_.data)
            return context.get_dummy_value()

        return nbtypes.void(S, lut, codes, packed, inv_norms, a, b, best), codegen

    return maxsim


def _skip_below_ir():
    """A numba intrinsic ``f(row, start, stop, threshold) -> c``: the first c = start + a multiple of 16 where
    row[c:c+16] holds a value above ``threshold``, else the first c with fewer than 16 values left before
    ``stop``; 16 values compared per step (``_probe_top``'s scan for rows that change its lists: 4-6x faster than
    comparing one value at a time)."""
    g = _IR(16)

    @intrinsic
    def skip_below(typingctx, row, start, stop, threshold):
        def codegen(context, builder, signature, args):
            ty = signature.args
            data = context.make_array(ty[0])(context, builder, args[0]).data
            stop = context.cast(builder, args[2], ty[2], nbtypes.int64)
            above = g.broadcast(builder, context.cast(builder, args[3], ty[3], nbtypes.float32))
            pos = cgutils.alloca_once_value(builder, context.cast(builder, args[1], ty[1], nbtypes.int64))
            head, body, done = (builder.append_basic_block(f"skip.{n}") for n in ("head", "body", "done"))
            builder.branch(head)
            builder.position_at_end(head)
            c = builder.load(pos)
            builder.cbranch(builder.icmp_signed("<=", builder.add(c, g.const(16)), stop), body, done)
            builder.position_at_end(body)
            bits = builder.bitcast(builder.fcmp_ordered(">", g.load(builder, data, c), above), ir.IntType(16))
            builder.store(builder.add(c, g.const(16)), pos)
            with builder.if_then(builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(16), 0))):
                builder.store(c, pos)
                builder.branch(done)
            builder.branch(head)
            builder.position_at_end(done)
            return builder.load(pos)

        return nbtypes.int64(row, start, stop, threshold), codegen

    return skip_below


_skip_below = _skip_below_ir()


_CI_W = _MAXSIM_W = None  # in the width's clone of the two functions below: its intrinsic (``_bind``)


def _ci_doc_simd(S, qp, q, codes, a, b, best):
    """``_ci_doc`` in vector registers: compiled once per width in ``SIMD_WIDTHS``, ``_CI_W`` bound to that width's
    ``_ci_ir``."""
    if b <= a:
        return np.float32(0.0)
    _CI_W(S, codes, a, b, best)
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s


def _exact_doc_simd(S, lut, qp, q, codes, packed, inv_norms, a, b, best, acc):
    """``_exact_doc`` in vector registers (``acc`` unused): compiled once per width, ``_MAXSIM_W`` bound to that
    width's ``_maxsim_ir``."""
    if b <= a:
        return np.float32(0.0)
    _MAXSIM_W(S, lut, codes, packed, inv_norms, a, b, best)
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s


_CI_DOC, _EXACT_DOC = _ci_doc, _exact_doc  # in each width's clone of the drivers: that width's per-document loops


def _ci(S, qp, q, codes, starts, ends, out):
    """S: (K * qp,) float32 centroid scores, row-major (a centroid's scores side by side, padded with zeros to qp,
    see ``_qp``, so the inner loops vectorise without a remainder); q: the real query tokens."""
    n = starts.shape[0]
    runs = min(n, CHUNKS)
    for r in prange(runs):
        best = np.empty(qp, dtype=np.float32)
        for i in range(r * n // runs, (r + 1) * n // runs):
            out[i] = _CI_DOC(S, qp, q, codes, starts[i], ends[i], best)


def _exact(S, lut, qp, q, codes, packed, inv_norms, starts, ends, out):
    """S: (K * qp,) centroid scores; lut: (P * 256 * qp,) the query's lookup table (``ResidualCodec.query_lut``),
    both row-major with the query tokens side by side, padded with zeros to qp (``_qp``)."""
    n = starts.shape[0]
    runs = min(n, CHUNKS)
    for r in prange(runs):
        best = np.empty(qp, dtype=np.float32)
        acc = np.empty(qp, dtype=np.float32)
        for i in range(r * n // runs, (r + 1) * n // runs):
            out[i] = _EXACT_DOC(S, lut, qp, q, codes, packed, inv_norms, starts[i], ends[i], best, acc)


def _probe_top(ScT, ncells, cells, vals):
    """Each query token's ``ncells`` best centroids, best first: ScT (q, K) -> cells (q, ncells) int64 and vals
    (q, ncells) float32, by one pass over the row keeping a sorted short list (as ``torch.topk``, which it
    replaces here; the lower centroid first among equal scores), skipping 16 values at a time that cannot enter
    it (``_skip_below_ir``)."""
    q, K = ScT.shape
    for j in range(q):
        for c in range(ncells):
            vals[j, c] = -np.inf
            cells[j, c] = 0
        last = np.float32(-np.inf)
        row = ScT[j]
        c = 0
        while c < K:
            c = _skip_below(row, c, K, last)  # to the next 16 values with one above the list's last
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


def _probe_mark(ivf_pids, ivf_offsets, base, cells, allowed, mark, cand, n):
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


def _probe_slots(mark, cand, n, slot, scan, missing, best):
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


def _probe_sums(best, q, out):
    """out (n,) <- each candidate's row of ``best`` (n * q,) summed."""
    for i in range(out.shape[0]):
        s = np.float32(0.0)
        for j in range(q):
            s += best[i * q + j]
        out[i] = s


def _probe_best(ivf_pids, ivf_offsets, base, cells, vals, ncells, q, allowed, slot, best):
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


def _pad_transposed(ScT, qp, out):
    """out (K * qp,) <- the rows of ScT (q, K) transposed, each padded with zeros to qp; parallel over runs of
    centroids."""
    q, K = ScT.shape
    runs = min(K, CHUNKS)
    for r in prange(runs):
        for c in range(r * K // runs, (r + 1) * K // runs):
            o = c * qp
            for j in range(q):
                out[o + j] = ScT[j, c]
            for j in range(q, qp):
                out[o + j] = 0.0


def _bind(fn, name: str, **names):
    """``fn`` under another name (numba caches each name apart), with the global ``names`` bound to other objects."""
    clone = types.FunctionType(fn.__code__, dict(fn.__globals__, **names), name, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = name
    return clone


def _compile(fn, parallel: bool, **opts):
    """A numba dispatcher of ``fn``, parallel or serial, under its own name (each variant its own cache files)."""
    return numba.njit(parallel=parallel, **(opts or _opts))(
        _bind(fn, f"{fn.__name__}_{'parallel' if parallel else 'serial'}"))


def _width_docs(w) -> dict:
    """The per-document functions the drivers for padded width ``w`` call (None: any width, the numba loops)."""
    if w is None:
        return dict(_CI_DOC=_ci_doc, _EXACT_DOC=_exact_doc)
    return dict(_CI_DOC=numba.njit(**_kernel_opts)(_bind(_ci_doc_simd, f"_ci_doc_{w}", _CI_W=_ci_ir(w))),
                _EXACT_DOC=numba.njit(**_kernel_opts)(_bind(_exact_doc_simd, f"_exact_doc_{w}",
                                                             _MAXSIM_W=_maxsim_ir(w))))


_DOCS = {w: _width_docs(w) for w in (None, *SIMD_WIDTHS)}
"""padded width or None -> the per-document functions its drivers call."""
_KERNELS = {(fn.__name__, par, w): _compile(_bind(fn, f"{fn.__name__}_{w or 'any'}", **docs), par)
            for w, docs in _DOCS.items() for fn in (_ci, _exact) for par in (False, True)}
"""(name, parallel, padded width or None) -> dispatcher; ``_run`` picks. One pair of drivers per width, so that
the first search compiles only the width it needs (cold start)."""
_KERNELS.update({("_pad_transposed", par, None): _compile(_pad_transposed, par, **_kernel_opts)
                 for par in (False, True)})
_SERIAL = {fn.__name__: _compile(fn, False, **_kernel_opts)
           for fn in (_probe_top, _probe_mark, _probe_slots, _probe_best, _probe_sums)}
"""Probed scoring's kernels, compiled serial only: a parallel top-cells pass saved ~0.1 ms per query on 2 cores
and cost 0.8 s more compilation the first time a machine searches."""


def _run(name: str, threads: int, qp: int, *args) -> None:
    """Run a kernel for queries padded to ``qp`` columns (its variant for that width if it has one): the
    parallel variant with ``threads`` threads when more than one is wanted and no other parallel launch is
    running in this process, else the serial one."""
    w = qp if (name, False, qp) in _KERNELS else None
    if threads > 1 and _parallel_lock.acquire(blocking=False):
        try:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            _KERNELS[(name, True, w)](*args)
        finally:
            _parallel_lock.release()
        return
    _KERNELS[(name, False, w)](*args)


def _segments(arrays, pids: torch.Tensor):
    """Per segment holding some of ``pids`` (sorted): (segment index, the positions in ``pids``, start and end
    token rows of those documents within the segment)."""
    offsets = arrays.doc_offsets
    starts = offsets.index_select(0, pids)
    ends = offsets.index_select(0, pids + 1)
    bases = arrays.codes.bases
    if len(arrays.codes.parts) == 1:
        yield 0, slice(None), starts.numpy(), ends.numpy()
        return
    seg = torch.bucketize(starts, bases[1:], right=True)
    for s in seg.unique().tolist():
        m = (seg == s).nonzero().flatten()
        base = bases[s]
        yield s, m.numpy(), (starts[m] - base).numpy(), (ends[m] - base).numpy()


def _qp(q: int) -> int:
    """The padded query width: 32 for 17-32 query tokens, else the next multiple of 8. On AVX-512 LLVM vectorises
    the kernels' loops over query tokens 32 floats at a time and leaves any rest to a 4-wide loop, so 24 columns
    cost more than 32. Exact stage over 128 scifact rows on one thread, by padded width 8 / 16 / 24 / 32 / 40 / 48
    / 64, this Zen 4: 0.97 / 1.41 / 1.99 / 1.65 / 2.47 / 3.00 / 3.12 ms; the same code compiled for AVX2
    (``NUMBA_CPU_NAME=haswell``): 1.11 / 1.34 / 1.96 / 2.08 / 2.81 / 3.08 / 3.91 (so 32 costs AVX2 machines ~6%
    over 24, and widths above 32 stay at multiples of 8 on both)."""
    return 32 if 16 < q <= 32 else -(-q // 8) * 8


def _padded(m: torch.Tensor) -> np.ndarray:
    """(rows, q) as a flat float32 array of rows padded with zero columns to ``_qp(q)``."""
    q = m.shape[1]
    if q == _qp(q):
        return m.float().contiguous().numpy().reshape(-1)
    out = np.zeros((m.shape[0], _qp(q)), dtype=np.float32)
    out[:, :q] = m.float().numpy()
    return out.reshape(-1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.dtype != torch.uint16 else t.view(torch.int16).numpy().view(np.uint16)


class Tables:
    """One query's operands as the kernels read them: its centroid scores and (once the exact stage asks) its
    lookup table, flat float32 rows padded with zero columns (to ``_qp``), so that the inner loops vectorise
    without a remainder (exact stage at 22 query tokens: 1.18 ms padded vs 1.64 unpadded). Built once per search
    (``plaid`` keeps one), not once per kernel call. From the scores' transpose (``ScT``, (q, K): what the packed
    float16 product returns) the padded rows are written by one pass (``_pad_transposed``, on the search's
    threads: where the transposed copy and then the padding took 0.2-0.3 + 0.1-0.3 ms for 16k centroids, one
    thread took 0.22-0.29 alone, ~0.4 inside a search, two ~0.2 less); the lookup table comes
    padded from a query padded with zero rows (``padded_query``), so it is used as it is."""

    def __init__(self, Sc: Optional[torch.Tensor] = None, ScT: Optional[torch.Tensor] = None, threads: int = 1):
        if Sc is None:
            self.q, K = ScT.shape
            self.qp = _qp(self.q)
            self.S = np.empty(K * self.qp, dtype=np.float32)
            _run("_pad_transposed", threads, self.qp, ScT.float().contiguous().numpy(), self.qp, self.S)
        else:
            self.q = Sc.shape[1]
            self.qp = _qp(self.q)
            self.S = _padded(Sc)
        self._lut = None

    def padded_query(self, Q: torch.Tensor) -> torch.Tensor:
        """Q (q, dim) with zero rows up to qp: its lookup table (``ResidualCodec.query_lut``) comes out padded."""
        if Q.shape[0] == self.qp:
            return Q
        return torch.cat([Q, Q.new_zeros(self.qp - Q.shape[0], Q.shape[1])])

    def lut(self, lut_q: torch.Tensor) -> np.ndarray:
        if self._lut is None:
            self._lut = _padded(lut_q)
        return self._lut


def centroid_interaction(Sc: torch.Tensor, arrays, pids: torch.Tensor, threads: int = 1,
                         tables: Tables | None = None) -> torch.Tensor:
    """``stages.centroid_interaction`` (full, no pruning): (len(pids),) float32. Sc (K, q_len) is read as float32
    (``tables``: the query's padded operands, when the caller keeps them)."""
    t = tables or Tables(Sc)
    out = np.empty(pids.numel(), dtype=np.float32)
    for s, where, starts, ends in _segments(arrays, pids):
        part = np.empty(len(starts), dtype=np.float32)
        _run("_ci", threads, t.qp, t.S, t.qp, t.q, _np(arrays.codes.parts[s]), starts, ends, part)
        out[where] = part
    return torch.from_numpy(out)


def exact_scores(arrays, pids: torch.Tensor, Sc: torch.Tensor, lut_q: torch.Tensor, threads: int = 1,
                 tables: Tables | None = None) -> torch.Tensor:
    """``stages.exact_scores``: exact MaxSim of ``pids`` against a query in the compressed domain, (len(pids),)
    float32. Sc: the codec's centroid scores (K, q_len); lut_q: its lookup table (``ResidualCodec.query_lut``);
    tables: the query's padded operands, when the caller keeps them."""
    t = tables or Tables(Sc)
    lut = t.lut(lut_q)
    out = np.empty(pids.numel(), dtype=np.float32)
    for s, where, starts, ends in _segments(arrays, pids):
        part = np.empty(len(starts), dtype=np.float32)
        _run("_exact", threads, t.qp, t.S, lut, t.qp, t.q, _np(arrays.codes.parts[s]),
             arrays.residuals.parts[s].numpy(), arrays.inv_norms.parts[s].numpy(), starts, ends, part)
        out[where] = part
    return torch.from_numpy(out)


SCAN_RATIO = 16
"""Probed scoring orders its candidates by scanning a mark per document when there are at most this many
documents per candidate, else by sorting the candidates."""


def probed_scores(ScT: torch.Tensor, ncells: int, impute: float, arrays, allowed=None,
                  scan_ratio: float = SCAN_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """``stages.probed_scores``: ScT (q, K) query-centroid scores; each query token probes its ``ncells`` best
    centroids (``_probe_top``); a token none of a candidate's probed cells serves scores ``impute`` x its last
    probed cell's score (at least 0). Returns (sorted candidate pids int64, scores float32). Serial (see
    ``_SERIAL``)."""
    q = ScT.shape[0]
    cells = np.empty((q, ncells), dtype=np.int64)
    vals = np.empty((q, ncells), dtype=np.float32)
    _SERIAL["_probe_top"](ScT.float().contiguous().numpy(), ncells, cells, vals)
    missing = np.float32(impute) * np.maximum(vals[:, -1], np.float32(0.0))
    c, v = cells.reshape(-1), vals.reshape(-1)
    ok = np.empty(0, dtype=np.bool_) if allowed is None else allowed.numpy()
    n_docs = arrays.num_docs
    total = int(arrays.ivf_sizes.numpy()[c].sum())
    mark = np.zeros(n_docs, dtype=np.bool_)
    cand = np.empty(min(total, n_docs), dtype=np.int64)
    n = 0
    for part in arrays.ivf:
        n = _SERIAL["_probe_mark"](part.pids.numpy(), part.offsets.numpy(), part.doc_base, c, ok, mark, cand, n)
    slot = np.empty(n_docs, dtype=np.int32)
    scan = n_docs <= scan_ratio * n
    if not scan:
        cand[:n].sort()
    best = np.empty(n * q, dtype=np.float32)
    _SERIAL["_probe_slots"](mark, cand, n, slot, scan, missing, best)
    for part in arrays.ivf:
        _SERIAL["_probe_best"](part.pids.numpy(), part.offsets.numpy(), part.doc_base, c, v, ncells, q, ok, slot,
                               best)
    scores = np.empty(n, dtype=np.float32)
    _SERIAL["_probe_sums"](best, q, scores)
    return torch.from_numpy(cand[:n]), torch.from_numpy(scores)
