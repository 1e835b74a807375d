"""The reader side of an index folder: a committed generation loaded as a ``Snapshot`` (arrays checked as they
are opened, memory-mapped on CPU), reloaded when a writer commits a newer one.

A search works on one snapshot from its start to its end; a snapshot's files stay readable after a writer
removes them (POSIX unlink semantics), so readers never block writers. Generations that share a document store
share its connection; a store no snapshot names any more is closed once no search holds one (``hold``), and
``close`` closes everything this reader opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..codec.residual import ResidualCodec, code_dtype
from ..codec.strided import inverted_file, offsets_from_lengths
from ..config import EncoderConfig
from ..errors import IncompatibleModelError, IndexClosedError, IndexFormatError, IndexNotFoundError, InvalidArgument
from ..store import layout, storage
from ..store.docstore import DocStore
from ..store.layout import IndexMeta, SegmentMeta
from .arrays import Groups, IndexArrays, IvfPart, Rows

VERIFY_AUTO_BYTES = 1 << 30
"""``verify="auto"`` checks the crc32 of every file of an index up to this size on open; above it, of the small
files only (codec, document lengths, inverted-file offsets). Structure (shapes, types, ranges) is always checked."""
_OPEN_RETRIES = 5


@dataclasses.dataclass
class Segment:
    """One segment's validated arrays (memory maps on CPU)."""

    codes: torch.Tensor
    residuals: torch.Tensor
    inv_norms: torch.Tensor
    doclens: np.ndarray
    ivf_pids: torch.Tensor
    ivf_offsets: torch.Tensor


@dataclasses.dataclass
class Snapshot:
    """One committed generation as a reader sees it, from the start of a search to its end. ``groups``: when
    documents are stored as passages, each row's document and each document's rows (``plaid.Groups``); None when
    every row is a document."""

    meta: IndexMeta
    arrays: IndexArrays
    docstore: DocStore
    live: torch.Tensor
    live_count: int  # live rows (a document stored as passages has several)
    stamp: Optional[tuple]
    live_docs: int = -1  # live documents
    groups: Optional[Groups] = None

    @property
    def rows_per_doc(self) -> float:
        return self.live_count / max(1, self.live_docs)


def check_model_matches(path: Path, meta: IndexMeta, model) -> None:
    """Refuse a model whose weights or encoder config differ from those the index was built with. An index built
    from precomputed embeddings with no model named takes any model of its dimension (its queries must come from
    the encoder that made the documents' embeddings; the library cannot check that)."""
    m = meta.model
    if m.get("kind") == "embeddings" and model.identity != m["identity"]:
        dim = m["encoder_config"].get("dim")
        if model.config.dim != dim:
            raise IncompatibleModelError(f"the index at {path} holds {dim}-dimensional embeddings; the model given "
                                         f"makes {model.config.dim}-dimensional ones")
        return
    if model.identity != m["identity"]:
        raise IncompatibleModelError(
            f"the index at {path} was built with model {m['name']!r} (weights {m['identity']}); the model given is "
            f"{model.name!r} (weights {model.identity})"
        )
    try:
        same = model.config.to_dict() == EncoderConfig.from_dict(m["encoder_config"]).to_dict()
    except (InvalidArgument, TypeError) as e:
        raise IndexFormatError(f"{path / layout.METADATA}: model.encoder_config is invalid: {e}") from None
    if not same:
        raise IncompatibleModelError(f"the model's encoder config differs from the one the index at {path} was "
                                     f"built with: {m['encoder_config']}")


class Reader:
    """Loads and caches one index folder's generations for one ``Index`` handle (segments and the codec are
    cached by file name: files are immutable once committed)."""

    def __init__(self, path: Path, model, device: torch.device, verify):
        self.path, self.model, self.device, self.verify = path, model, device, verify
        self.lock = threading.RLock()  # guards the current snapshot and the caches
        self._segments: dict[str, Segment] = {}
        self._codecs: dict[tuple, ResidualCodec] = {}
        self._stores: dict[str, DocStore] = {}  # document store file -> its open connection
        self._store_gens: dict[str, int] = {}  # the generation each was opened for
        self._retired: list[DocStore] = []  # stores no current snapshot names: closed when no search holds one
        self._holds = 0
        self.snap: Optional[Snapshot] = None

    # ---------------------------------------------------------------- generations
    def stamp(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path / layout.METADATA)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> Snapshot:
        """The committed generation; retried when a writer commits (and collects files) while we read."""
        for attempt in range(_OPEN_RETRIES):
            stamp = self.stamp()
            meta = storage.read_metadata(self.path)
            try:
                return self.snapshot_of(meta, stamp)
            except (IndexNotFoundError, IndexFormatError):
                if attempt + 1 < _OPEN_RETRIES and self.stamp() != stamp:
                    continue
                raise
        raise AssertionError("unreachable")

    def reload(self) -> Snapshot:
        with self.lock:
            self.snap = self.load()
            self._retire_others(self.snap.meta.docstore)
            return self.snap

    def current(self) -> Snapshot:
        """The newest committed generation (reloaded if a writer committed since the last call)."""
        with self.lock:
            snap = self.snap
            if snap is None:
                raise IndexClosedError(f"the index at {self.path} was closed; open it again with Index.open")
            stamp = self.stamp()
            if stamp != snap.stamp:
                meta = storage.read_metadata(self.path)
                if meta.generation != snap.meta.generation:
                    self.snap = self.load()
                    self._retire_others(self.snap.meta.docstore)
                else:
                    self.snap = dataclasses.replace(snap, stamp=stamp)
            return self.snap

    @contextlib.contextmanager
    def hold(self):
        """The current snapshot, for the length of one search or read: the document stores it uses stay open until
        the last holder is done, even if a writer commits or ``close`` is called meanwhile."""
        with self.lock:
            snap = self.current()
            self._holds += 1
        try:
            yield snap
        finally:
            with self.lock:
                self._holds -= 1
                self._close_retired()

    def _retire_others(self, keep: Optional[str]) -> None:
        for name in [n for n in self._stores if n != keep]:
            self._retired.append(self._stores.pop(name))
        self._close_retired()

    def _close_retired(self) -> None:
        if self._holds == 0:
            for store in self._retired:
                store.close()
            self._retired = []

    def close(self) -> None:
        """Drop the snapshot and the memory maps, and close the document stores (once no search holds them)."""
        with self.lock:
            self.snap = None
            self._segments, self._codecs = {}, {}
            self._retire_others(None)

    def docstore(self, name: str, generation: int) -> DocStore:
        """The open connection to the document store ``name`` (opened and checked on first use). A read-only
        (immutable) connection is not reused across generations: SQLite assumes an immutable file never changes."""
        with self.lock:
            store = self._stores.get(name)
            if store is not None and store.read_only and self._store_gens.get(name) != generation:
                self._retired.append(self._stores.pop(name))
                self._close_retired()
                store = None
            if store is None:
                store = self._stores[name] = DocStore(self.path / name)
                self._store_gens[name] = generation
            return store

    # ---------------------------------------------------------------- arrays
    def codec_for(self, meta: IndexMeta) -> ResidualCodec:
        c = meta.codec
        key = tuple(sorted(c.files.values()))
        with self.lock:
            if key in self._codecs:
                return self._codecs[key]
        K, dim, nbits = c.num_centroids, self.model.config.dim, c.nbits
        shapes = {"centroids": ((K, dim), np.float16), "bucket_cutoffs": (((1 << nbits) - 1,), np.float32),
                  "bucket_weights": ((1 << nbits,), np.float32)}
        arrays = {}
        for part, (shape, dtype) in shapes.items():
            name = c.files[part]
            arr = storage.load_array(self.path, name, shape, dtype, mmap=False, checksum=c.checksums.get(name))
            if not np.isfinite(arr).all():
                raise IndexFormatError(f"index file {self.path / name} holds NaN or infinite values")
            arrays[part] = arr
        codec = ResidualCodec.from_arrays(arrays, nbits, c.avg_residual, device=self.device)
        with self.lock:
            self._codecs = {key: codec}  # one codec per index at a time
        return codec

    def segment(self, seg: SegmentMeta, codec: ResidualCodec, check_all: bool) -> Segment:
        with self.lock:
            if seg.name in self._segments:
                return self._segments[seg.name]
        p, K, n, d = self.path, codec.num_centroids, seg.num_embeddings, seg.num_docs
        files = seg.files()

        def load(part, shape, dtype, small=False):
            name = files[part]
            crc = seg.checksums.get(name) if (check_all or small) else None
            return storage.load_array(p, name, shape, dtype, checksum=crc)

        def bad(part, why):
            return IndexFormatError(f"index file {p / files[part]} is corrupt: {why}")

        codes = load("codes", (n,), code_dtype(K))
        residuals = load("residuals", (n, codec.packed_dim), np.uint8)
        doclens = load("doclens", (d,), np.int32, small=True)
        if d and (int(doclens.min()) < 0 or int(doclens.sum(dtype=np.int64)) != n):
            raise bad("doclens", f"document lengths must be >= 0 and add up to the segment's {n} embeddings")
        if n and int(codes.max()) >= K:
            raise bad("codes", f"centroid id {int(codes.max())} is out of range (the codec has {K} centroids)")
        dev, t = self.device, storage.as_tensor
        if seg.legacy:  # format v1: derive what v2 stores
            inv = codec.inverse_norms(t(codes).to(dev), t(residuals).to(dev))
            ivf_pids, ivf_off = inverted_file(codes, doclens, K)
        else:
            inv = load("invnorms", (n,), np.float32)
            if n and not (np.isfinite(inv).all() and (inv > 0).all()):
                raise bad("invnorms", "inverse norms must be finite and positive")
            ivf_off = load("ivfoffsets", (K + 1,), np.int64, small=True)
            ivf_pids = load("ivfpids", (None,), np.int32)
            if ivf_off[0] != 0 or (np.diff(ivf_off) < 0).any() or ivf_off[-1] != ivf_pids.shape[0]:
                raise bad("ivfoffsets", "inverted-file offsets must start at 0, never decrease, and end at the "
                                        "number of entries")
            if ivf_pids.shape[0] and (int(ivf_pids.min()) < 0 or int(ivf_pids.max()) >= d):
                raise bad("ivfpids", f"document ids must lie in [0, {d})")
            inv = t(inv).to(dev)
        loaded = Segment(t(codes).to(dev), t(residuals).to(dev), inv, np.asarray(doclens, dtype=np.int64),
                         t(ivf_pids).to(dev), t(np.asarray(ivf_off, dtype=np.int64)).to(dev))
        with self.lock:
            self._segments[seg.name] = loaded
        return loaded

    def size_of(self, meta: IndexMeta) -> int:
        total = 0
        for name in meta.referenced_files():
            with contextlib.suppress(OSError):
                total += os.stat(self.path / name).st_size
        return total

    def snapshot_of(self, meta: IndexMeta, stamp: Optional[tuple]) -> Snapshot:
        check_model_matches(self.path, meta, self.model)
        check_all = (self.verify is True or self.verify == "deep"
                     or (self.verify == "auto" and self.size_of(meta) <= VERIFY_AUTO_BYTES))
        codec = self.codec_for(meta)
        segs = [self.segment(s, codec, check_all) for s in meta.segments]
        with self.lock:  # drop segments no longer referenced
            names = {s.name for s in meta.segments}
            self._segments = {k: v for k, v in self._segments.items() if k in names}
        doclens = np.concatenate([s.doclens for s in segs]) if segs else np.zeros(0, np.int64)
        doc_offsets = offsets_from_lengths(torch.from_numpy(doclens)).to(self.device)
        bases = np.concatenate([[0], np.cumsum([s.num_docs for s in meta.segments])]).astype(np.int64)
        ivf = [IvfPart(s.ivf_pids, s.ivf_offsets, int(b)) for s, b in zip(segs, bases)]
        ivf_sizes = torch.zeros(codec.num_centroids, dtype=torch.long, device=self.device)
        for s in segs:
            ivf_sizes += s.ivf_offsets[1:] - s.ivf_offsets[:-1]
        arrays = IndexArrays(codec=codec, codes=Rows([s.codes for s in segs]),
                             residuals=Rows([s.residuals for s in segs]), inv_norms=Rows([s.inv_norms for s in segs]),
                             doc_offsets=doc_offsets, ivf=ivf, ivf_sizes=ivf_sizes)
        if self.device.type != "cpu":  # the GPU kernels want each column in one tensor
            for rows in (arrays.codes, arrays.residuals, arrays.inv_norms):
                rows.full()
        docstore = self.docstore(meta.docstore, meta.generation)
        n = meta.counts.documents
        live = torch.ones(n, dtype=torch.bool)
        deleted = docstore.deleted_pids(n, meta.generation)
        live[torch.from_numpy(deleted)] = False
        if int(live.sum()) != meta.counts.live:
            raise IndexFormatError(f"{self.path}: the document store has {int(live.sum())} live documents; "
                                   f"metadata.json says {meta.counts.live}")
        if self.verify == "deep":
            problems = docstore.lexical_check(n)
            if problems:
                raise IndexFormatError(f"{self.path / meta.docstore} fails the deep check: {'; '.join(problems)}")
        groups, live_docs = None, meta.counts.live
        cont = docstore.continuation_pids(n)
        if len(cont):
            starts = torch.ones(n, dtype=torch.int32)
            starts[torch.from_numpy(cont)] = 0
            groups = Groups.of(torch.cumsum(starts, 0) - 1)
            live_docs = docstore.count_documents(n, meta.generation)
        return Snapshot(meta, arrays, docstore, live.to(self.device), meta.counts.live, stamp, live_docs, groups)
