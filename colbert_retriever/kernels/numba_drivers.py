"""What a search hands the numba kernels, and how: ``Tables`` (one query's operands, laid out once per search) and
the stage drivers ``centroid_interaction``, ``exact_scores`` and ``probed_scores`` (the twins of the torch code in
``search/stages.py``). Reached only through ``dispatch``.

Every array reaches a kernel C-contiguous and of the dtype its compiled signature names (``_c``: the kernels index
flat data by offsets): query-sized operands are made so here, index arrays that are not raise ``IndexFormatError``
(never reinterpreted).
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import numpy as np
import torch

from ..errors import IndexFormatError
from . import numba_kernels as nk


def padded_width(q: int) -> int:
    """The padded query width: 32 for 17-32 query tokens, else the next multiple of 8. On AVX-512 LLVM vectorises
    the kernels' loops over query tokens 32 floats at a time and leaves any rest to a 4-wide loop, so 24 columns
    cost more than 32; on AVX2 32 costs a little more than 24, and widths above 32 stay at multiples of 8 on both
    (measured: benchmarks/NOTES.md, "Moved from docstrings")."""
    return 32 if 16 < q <= 32 else -(-q // 8) * 8


def kernel_width(qp: int) -> Optional[int]:
    """The width whose vector-register kernels run a padded width (None: the plain loops)."""
    return qp if qp in nk.numba_ir.SIMD_WIDTHS else None


def code_name(codes) -> str:
    """The code dtype's name as ``numba_kernels.CODE_TYPES`` keys it (a torch tensor or numpy array)."""
    if isinstance(codes, torch.Tensor):
        return {torch.uint8: "uint8", torch.uint16: "uint16", torch.int32: "int32"}.get(codes.dtype, str(codes.dtype))
    return np.dtype(codes.dtype).name


def _c(a: np.ndarray, what: str) -> np.ndarray:
    if not a.flags.c_contiguous:
        raise IndexFormatError(f"{what} is not C-contiguous (shape {a.shape}); the kernels read rows in order")
    return a


def _np(t: torch.Tensor, what: str) -> np.ndarray:
    a = t.numpy() if t.dtype != torch.uint16 else t.view(torch.int16).numpy().view(np.uint16)
    return _c(a, what)


def _f32(t) -> np.ndarray:
    """A query-sized operand as a fresh-enough float32 C-contiguous numpy array."""
    a = t.numpy() if isinstance(t, torch.Tensor) else t
    return np.ascontiguousarray(a, dtype=np.float32)


_blocks: dict = {}  # id(centroid tensor) -> its blocks, dropped when the tensor is collected
_blocks_lock = threading.Lock()


def centroid_blocks(C: torch.Tensor) -> np.ndarray:
    """The centroids (K, dim) in blocks of 16, each block transposed: a (blocks * dim, 16) float32 array, row
    ``blk * dim + d`` = dimension d of centroids 16 blk .. 16 blk + 15 (zeros past K): what the score product
    reads (``numba_loops.scores``). Made once per centroid tensor and kept while it lives (4 bytes per centroid and
    dimension: 8 MB for 16k x 128)."""
    with _blocks_lock:
        CB = _blocks.get(id(C))
        if CB is None:
            K, dim = C.shape
            nb = -(-K // 16)
            padded = np.zeros((nb * 16, dim), dtype=np.float32)
            padded[:K] = C.float().numpy()
            CB = np.ascontiguousarray(padded.reshape(nb, 16, dim).transpose(0, 2, 1)).reshape(nb * dim, 16)
            _blocks[id(C)] = CB
            weakref.finalize(C, _blocks.pop, id(C), None)
        return CB


def row_length(K: int) -> int:
    """Floats per row of the (q, K) score rows: K rounded up to 32 (the product stores whole blocks of 16), plus 16
    (rows exactly 64 KB apart, K = 16k, fall in the same cache sets)."""
    return -(-K // 32) * 32 + 16


class Tables:
    """One query's operands as the kernels read them: its centroid scores as flat float32 rows padded with zero
    columns to ``qp`` (``padded_width``: the inner loops vectorise without a remainder) and as (q, K) rows (``ScT``,
    what the probe scans), and (once the exact stage asks) its lookup table, padded the same way. The tables own
    the padding: they take the query's real rows.

    ``from_query`` computes them with the kernels (``numba_loops.scores`` / ``query_lut``), every sum in a fixed
    order: the same bits on every CPU and thread count. ``from_scores`` lays out scores a caller computed
    (stage-level calls and tests)."""

    def __init__(self, ks: "nk.KernelSet", q: int, K: int, threads: int = 1):
        self.ks, self.q, self.qp, self.K, self.threads = ks, q, padded_width(q), K, threads
        self.width = kernel_width(self.qp)
        self.S = np.empty(K * self.qp, dtype=np.float32)
        self.rows: Optional[np.ndarray] = None  # (q, >= K): ScT's storage, rows padded (``row_length``)
        self._Qt: Optional[np.ndarray] = None
        self._L: Optional[np.ndarray] = None
        self._lut: Optional[np.ndarray] = None

    @classmethod
    def from_query(cls, ks, Q: torch.Tensor, codec, code: str, threads: int = 1) -> "Tables":
        """Q (q, dim) float32: the query's real rows; codec: the index's ``ResidualCodec`` (its float32 centroids
        and byte decoding table); code: the index's code dtype name (which compiled group runs)."""
        CB = centroid_blocks(codec.centroids)
        t = cls(ks, Q.shape[0], codec.num_centroids, threads)
        Qr = _f32(Q)
        t._Qt = np.zeros((Q.shape[1], t.qp), dtype=np.float32)
        t._Qt[:, : t.q] = Qr.T
        t._L = _f32(codec._lut)
        t.rows = np.empty((t.q, row_length(t.K)), dtype=np.float32)
        ks.run("scores", None, threads, code, CB, Qr, t.S, t.rows, t.K)
        return t

    @classmethod
    def from_scores(cls, ks, Sc: torch.Tensor, threads: int = 1) -> "Tables":
        """Sc (K, q): scores computed elsewhere (read as float32)."""
        t = cls(ks, Sc.shape[1], Sc.shape[0], threads)
        t.S.reshape(t.K, t.qp)[:, t.q:] = 0.0
        t.S.reshape(t.K, t.qp)[:, : t.q] = Sc.float().numpy()
        t.rows = np.ascontiguousarray(Sc.float().numpy().T)
        return t

    @property
    def ScT(self) -> np.ndarray:
        """The (q, K) scores (a view of ``rows``)."""
        return self.rows[:, : self.K]

    def lut(self, lut_q: Optional[torch.Tensor] = None) -> np.ndarray:
        """The padded lookup table: computed from the query (``from_query``), or laid out from ``lut_q`` ((P *
        256, q), ``ResidualCodec.query_lut``) when the caller gives one."""
        if self._lut is None:
            if lut_q is None and self._Qt is not None:
                self._lut = np.empty(self._Qt.shape[0] // self._L.shape[1] * 256 * self.qp, dtype=np.float32)
                self.ks.kernel("query_lut")(self._L, self._Qt, self._lut)
            else:
                m = lut_q.float().numpy()
                out = np.zeros((m.shape[0], self.qp), dtype=np.float32)
                out[:, : self.q] = m
                self._lut = out.reshape(-1)
        return self._lut


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


def centroid_interaction(t: Tables, arrays, pids: torch.Tensor) -> torch.Tensor:
    """``stages.centroid_interaction`` (full, no pruning): (len(pids),) float32."""
    out = np.empty(pids.numel(), dtype=np.float32)
    for s, where, starts, ends in _segments(arrays, pids):
        codes = _np(arrays.codes.parts[s], "codes")
        part = np.empty(len(starts), dtype=np.float32)
        t.ks.run("ci", t.width, t.threads, code_name(codes), t.S, t.qp, t.q, codes, _c(starts, "starts"),
                 _c(ends, "ends"), part)
        out[where] = part
    return torch.from_numpy(out)


def exact_scores(t: Tables, arrays, pids: torch.Tensor, lut_q: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``stages.exact_scores``: exact MaxSim of ``pids`` in the compressed domain, (len(pids),) float32. lut_q:
    the query's lookup table when the caller computed it (``Tables.lut``)."""
    lut = t.lut(lut_q)
    out = np.empty(pids.numel(), dtype=np.float32)
    for s, where, starts, ends in _segments(arrays, pids):
        codes = _np(arrays.codes.parts[s], "codes")
        part = np.empty(len(starts), dtype=np.float32)
        t.ks.run("exact", t.width, t.threads, code_name(codes), t.S, lut, t.qp, t.q, codes,
                 _np(arrays.residuals.parts[s], "residuals"), _np(arrays.inv_norms.parts[s], "inverse norms"),
                 _c(starts, "starts"), _c(ends, "ends"), part)
        out[where] = part
    return torch.from_numpy(out)


SCAN_RATIO = 16
"""Probed scoring orders its candidates by scanning a mark per document when there are at most this many
documents per candidate, else by sorting the candidates."""


def probed_scores(ks, rows: np.ndarray, K: int, ncells: int, impute: float, arrays, allowed=None,
                  scan_ratio: float = SCAN_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """``stages.probed_scores``: rows (q, >= K) C-contiguous, their first K columns the query-centroid scores
    (``Tables.rows``); each query token probes its ``ncells`` best
    centroids; a token none of a candidate's probed cells serves scores ``impute`` x its last probed cell's score
    (at least 0). Returns (sorted candidate pids int64, scores float32). Serial."""
    q = rows.shape[0]
    cells = np.empty((q, ncells), dtype=np.int64)
    vals = np.empty((q, ncells), dtype=np.float32)
    ks.kernel("probe_top")(_c(rows, "scores"), K, ncells, cells, vals)
    missing = np.float32(impute) * np.maximum(vals[:, -1], np.float32(0.0))
    c, v = cells.reshape(-1), vals.reshape(-1)
    ok = np.empty(0, dtype=np.bool_) if allowed is None else _np(allowed, "allowed")
    n_docs = arrays.num_docs
    total = int(arrays.ivf_sizes.numpy()[c].sum())
    mark = np.zeros(n_docs, dtype=np.bool_)
    cand = np.empty(min(total, n_docs), dtype=np.int64)
    n = 0
    parts = [(_np(p.pids, "inverted-file pids"), _np(p.offsets, "inverted-file offsets"), p.doc_base)
             for p in arrays.ivf]
    for pids, offsets, base in parts:
        n = ks.kernel("probe_mark")(pids, offsets, base, c, ok, mark, cand, n)
    slot = np.empty(n_docs, dtype=np.int32)
    scan = n_docs <= scan_ratio * n
    if not scan:
        cand[:n].sort()
    best = np.empty(n * q, dtype=np.float32)
    ks.kernel("probe_slots")(mark, cand, n, slot, scan, missing, best)
    for pids, offsets, base in parts:
        ks.kernel("probe_best")(pids, offsets, base, c, v, ncells, q, ok, slot, best)
    scores = np.empty(n, dtype=np.float32)
    ks.kernel("probe_sums")(best, q, scores)
    return torch.from_numpy(cand[:n]), torch.from_numpy(scores)
