"""The kernels' innermost loops written as LLVM IR through numba's ``intrinsic`` (no C compiler: numba hands the IR
to its own LLVM), for the padded query widths most queries take (``SIMD_WIDTHS``), and the per-document functions
that call them (compiled once per width by ``numba_kernels``, with the intrinsic bound by name).

Why IR: ``numba_loops``' per-document loops as numba compiles them keep their running maxima and accumulators in
memory: per token (and residual byte) the loop over query columns is entered anew (bounds, remainder, reloads),
~45 instructions for the ~14 that add. Here the maxima and accumulators are LLVM vectors (allocas that LLVM
promotes to registers). Generic vectors: LLVM lowers them to whatever the CPU has (two AVX2 registers for 16
floats, one AVX-512 register).

Deterministic by construction: no fast-math flag is set on any instruction (``numba_kernels`` compiles without
``fastmath``), the additions run in the order written, one rounding per IEEE operation (``fmul`` then ``fadd``,
never a fused multiply-add), and the vector width changes only how many independent columns are computed at
once, never the order of a sum. So a query gets the same bits on an AVX2 and an AVX-512 CPU (tested).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

SIMD_WIDTHS = (16, 32, 8)
"""Padded query widths (``numba_drivers.padded_width``) whose per-document loops and score product run in vector
registers, most used first (the order the background compilation follows); other widths run ``numba_loops``."""


class _IR:
    """What the intrinsics share: rows of ``qp`` float32 as ``n`` LLVM vectors of ``width`` lanes."""

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

    def store_row(self, builder, vectors, base, row=None):
        """Store ``n`` vectors as row ``row`` (an i64; None: row 0) of a (rows, qp) float32 table."""
        off = self.const(0) if row is None else builder.mul(row, self.const(self.qp))
        for v, x in enumerate(vectors):
            ptr = builder.gep(base, [builder.add(off, self.const(v * self.width))])
            builder.store(x, builder.bitcast(ptr, self.vt.as_pointer()), align=4)

    def max_into(self, builder, slots, vectors):
        for slot, x in zip(slots, vectors):
            cur = builder.load(slot)
            builder.store(builder.select(builder.fcmp_ordered(">", x, cur), x, cur), slot)

    def index(self, context, builder, value, ty):
        return context.cast(builder, value, ty, nbtypes.int64)

    def tokens(self, context, builder, ty, a, b):
        """A loop over a..b (loop variable: i64)."""
        start, stop = self.index(context, builder, a, ty[0]), self.index(context, builder, b, ty[1])
        return cgutils.for_range_slice(builder, start, stop, self.const(1), inc=True)

    def code(self, builder, codes, dtype, t):
        """codes[t] as an i64 (codes are uint8 / uint16 / int32)."""
        widen = builder.sext if dtype.signed else builder.zext
        return widen(builder.load(builder.gep(codes.data, [t])), self.i64)


def ci_ir(qp: int):
    """A numba intrinsic ``f(S, codes, a, b, best)``: for tokens a..b of one document, best[:qp] = per query column
    the max over tokens of S[code] (operands as in ``numba_loops.ci_doc``)."""
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


def maxsim_ir(qp: int):
    """A numba intrinsic ``f(S, lut, codes, packed, inv_norms, a, b, best)``: for tokens a..b of one document,
    best[:qp] = per query column the max over tokens of (S[code] + the residual bytes' LUT rows) x inverse norm
    (operands as in ``numba_loops.exact_doc``). Even and odd byte positions sum into two accumulators (two
    dependency chains), added before the norm."""
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


SCORE_BLOCK = 16
SCORE_QUERY_ROWS = 6
"""The score product computes ``SCORE_QUERY_ROWS`` query tokens against ``SCORE_BLOCK`` centroids (one 16-float
vector) at a time: six independent chains of additions, which fit the registers of AVX2 (12 of 16) and AVX-512
(more rows spill on AVX2; the shapes tried: benchmarks/NOTES.md, "Moved from docstrings")."""


def scores_ir():
    """A numba intrinsic ``f(CB, Q, j0, blk, n, qp, S, R)``: the scores of query tokens j0..j0+5 (those below q)
    against the 16 centroids of block ``blk`` (the first ``n`` of them real), written to both layouts the stages
    read: R[j, c] (R: (q, >= K) score rows, all 16 lanes stored: R's rows reach past the last block) and
    S[c * qp + j] (S: (K * qp,) rows padded to qp columns). Reads CB (blocks * dim, 16), the centroids in blocks
    of 16, each block transposed (``numba_drivers.centroid_blocks``: a block's 8 KB contiguous, where rows of a
    (dim, K) transpose would all fall in the same cache sets), and Q (q, dim), the query's rows. Each score is a
    sum over d in order from 0, starting at 0, one rounding per product and per addition: the arithmetic of
    ``numba_loops.scores_rows`` (bit for bit), vectorised over centroids."""
    g = _IR(16)
    i32 = ir.IntType(32)

    @intrinsic
    def scores(typingctx, CB, Q, j0, blk, n, qp, S, R):
        def codegen(context, builder, signature, args):
            ty = signature.args
            CB_, Q_, S_, R_ = (context.make_array(ty[i])(context, builder, args[i]) for i in (0, 1, 6, 7))
            q, dim = cgutils.unpack_tuple(builder, Q_.shape)
            row_len = cgutils.unpack_tuple(builder, R_.shape)[1]
            j0, blk, n, qp = (g.index(context, builder, args[i], ty[i]) for i in (2, 3, 4, 5))
            c0 = builder.mul(blk, g.const(16))
            last = builder.sub(q, g.const(1))
            js = [builder.add(j0, g.const(m)) for m in range(SCORE_QUERY_ROWS)]
            rows = [builder.mul(builder.select(builder.icmp_signed("<", j, q), j, last), dim) for j in js]
            first = builder.mul(builder.mul(blk, dim), g.const(16))
            acc = [cgutils.alloca_once_value(builder, g.splat(0.0)) for _ in rows]
            with cgutils.for_range(builder, dim) as loop:
                d = loop.index
                cb = g.load(builder, CB_.data, builder.add(first, builder.mul(d, g.const(16))))
                for row, slot in zip(rows, acc):
                    x = g.broadcast(builder, builder.load(builder.gep(Q_.data, [builder.add(row, d)])))
                    builder.store(builder.fadd(builder.load(slot), builder.fmul(x, cb)), slot)
            for j, slot in zip(js, acc):
                with builder.if_then(builder.icmp_signed("<", j, q)):
                    v = builder.load(slot)
                    ptr = builder.gep(R_.data, [builder.add(builder.mul(j, row_len), c0)])
                    builder.store(v, builder.bitcast(ptr, g.vt.as_pointer()), align=4)
                    for i in range(16):
                        with builder.if_then(builder.icmp_signed("<", g.const(i), n), likely=True):
                            at = builder.add(builder.mul(builder.add(c0, g.const(i)), qp), j)
                            builder.store(builder.extract_element(v, i32(i)), builder.gep(S_.data, [at]))
            return context.get_dummy_value()

        return nbtypes.void(CB, Q, j0, blk, n, qp, S, R), codegen

    return scores


def skip_below_ir():
    """A numba intrinsic ``f(row, start, stop, threshold) -> c``: the first c = start + a multiple of 16 where
    row[c:c+16] holds a value above ``threshold``, else the first c with fewer than 16 values left before
    ``stop``; 16 values compared per step (``numba_loops.probe_top``'s scan for rows that change its lists: 4-6x
    faster than comparing one value at a time)."""
    g = _IR(16)

    @intrinsic
    def skip_below(typingctx, row, start, stop, threshold):
        def codegen(context, builder, signature, args):
            ty = signature.args
            data = context.make_array(ty[0])(context, builder, args[0]).data
            stop = g.index(context, builder, args[2], ty[2])
            above = g.broadcast(builder, context.cast(builder, args[3], ty[3], nbtypes.float32))
            pos = cgutils.alloca_once_value(builder, g.index(context, builder, args[1], ty[1]))
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


# ---------------------------------------------------------------- the per-document functions of a width
_CI_W = _MAXSIM_W = None  # in a width's clone of the functions below: its intrinsic (``bind``)


def ci_doc_simd(S, qp, q, codes, a, b, best):
    """``numba_loops.ci_doc`` in vector registers: compiled once per width, ``_CI_W`` bound to its ``ci_ir``."""
    if b <= a:
        return np.float32(0.0)
    _CI_W(S, codes, a, b, best)
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s


def exact_doc_simd(S, lut, qp, q, codes, packed, inv_norms, a, b, best, acc):
    """``numba_loops.exact_doc`` in vector registers (``acc`` unused): compiled once per width, ``_MAXSIM_W``
    bound to its ``maxsim_ir``."""
    if b <= a:
        return np.float32(0.0)
    _MAXSIM_W(S, lut, codes, packed, inv_norms, a, b, best)
    s = np.float32(0.0)
    for j in range(q):
        s += best[j]
    return s

