"""The index's arrays as search reads them: columns of token rows stored per segment (``Rows``), each segment's
inverted file (``IvfPart``), the bundle ``IndexArrays`` that the search stages take, and the rows of documents
stored as passages (``Groups``). No files here: the reader (``reader.py``) fills these from memory maps; tests
build them in memory (``IndexArrays.single``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..codec.residual import ResidualCodec
from ..codec.strided import gather_rows


def _select(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` along dim 0. ``index_select`` is ~10x faster than advanced indexing for rows of bytes on CPU
    (0.08 vs 0.8 ms for 28k residual rows); uint16 has no index_select kernel, so it moves as int16."""
    if t.dtype == torch.uint16:
        return t.view(torch.int16).index_select(0, idx).view(torch.uint16)
    return t.index_select(0, idx)


_FULL_LOCK = threading.Lock()


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
        """All rows as one tensor (a copy when there are several segments, made once, under a lock: a ``Rows`` is
        shared by concurrent searches; used by the GPU kernels)."""
        with _FULL_LOCK:
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


@dataclass(frozen=True)
class Groups:
    """Documents stored as several rows (passages): the document of each row and each document's rows, as host
    arrays (a search ranks documents among a few hundred scored rows: a few small array operations, cheaper on
    the host than as tensor kernels). A snapshot builds it once (``of``); ``plaid.search`` uses it to rank
    documents and to score every row of the k documents it returns."""

    of_row: np.ndarray  # (n_rows,) document number of each row (int32 below 2^31 documents: 4 B a row)
    offsets: np.ndarray  # (n_docs + 1,) int64: document g owns positions offsets[g]:offsets[g+1] of ``order``
    order: Optional[np.ndarray] = None  # rows sorted by document; None: ``of_row`` never decreases

    @classmethod
    def of(cls, of_row) -> "Groups":
        """From the document number of each row (a tensor or an array)."""
        g = np.asarray(of_row.cpu() if isinstance(of_row, torch.Tensor) else of_row)
        g = g.astype(np.int32 if g.size == 0 or int(g.max()) < 2**31 - 1 else np.int64, copy=False)
        counts = np.bincount(g)
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ordered = g.size < 2 or bool((g[1:] >= g[:-1]).all())
        return cls(g, offsets, None if ordered else np.argsort(g, kind="stable"))

    def rows_of(self, docs: np.ndarray) -> np.ndarray:
        """Every row of the documents ``docs``."""
        lo = self.offsets[docs]
        n = self.offsets[docs + 1] - lo
        idx = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        return idx if self.order is None else self.order[idx]

    def best_rows(self, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each document's best row among ``rows`` (the lowest row among equal scores): (documents ascending,
        their best rows, those rows' scores)."""
        g = self.of_row[rows]
        o = np.lexsort((rows, -scores, g))  # by document, best score first, lowest row first among ties
        g = g[o]
        first = np.ones(g.size, dtype=bool)
        first[1:] = g[1:] != g[:-1]
        o = o[first]
        return g[first], rows[o], scores[o]
