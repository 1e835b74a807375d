"""``Index``: build, open, search, add, delete, compact. Wires encoder + codec + storage + docstore + PLAID.

Concurrency contract (tested in tests/test_concurrency.py): any number of reader threads and processes; one writer
at a time per index folder (``.lock``; another writer, thread or process, waits up to ``lock_timeout`` seconds,
then gets ``IndexLockedError``). A search works on one committed generation from start to end (a snapshot: arrays,
document store connection, deletion mask) and picks up a newer generation on its next call. Every write starts from
the generation committed on disk (metadata, codec, document store), never from a handle's memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import platform
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__, _validate, layout, storage
from .builder import SegmentWriter, StageTimes, encode_and_compress, train_codec, write_segment
from .codec import ResidualCodec, code_dtype
from .config import CodecConfig, EncoderConfig, SearchConfig
from .docstore import DocStore
from .encoder import ColBERT, load_model
from .errors import (IncompatibleModelError, IndexClosedError, IndexFormatError, IndexNotFoundError, InvalidArgument,
                     InvalidType)
from .hits import Hit, Record
from .layout import Counts, IndexMeta, SegmentMeta
from . import plaid
from .plaid import IndexArrays, IvfPart, Rows, exact_scores
from .strided import gather_rows, inverted_file, offsets_from_lengths

logger = logging.getLogger(__name__)

RECLUSTER_RATIO = 0.5
"""``compact`` re-trains the centroids when the embeddings added since they were trained exceed this fraction of
the embeddings they were trained for (added / at-training > 0.5)."""
MERGE_FACTOR = 4
"""``add`` merges the newest segment into the one before it while the newest holds at least 1/MERGE_FACTOR of its
embeddings (cascading): segment sizes fall geometrically, so an index has O(log n) segments and an embedding is
copied O(log n) times over any sequence of adds."""
VERIFY_AUTO_BYTES = 1 << 30
"""``verify="auto"`` checks the crc32 of every file of an index up to this size on open; above it, of the small
files only (codec, document lengths, inverted-file offsets). Structure (shapes, types, ranges) is always checked."""
SEARCH_MODES = ("colbert", "bm25", "hybrid", "bm25_rerank")
FUSIONS = ("rrf", "normalized")
DEFAULT_FUSION = "normalized"
"""Hybrid fusion when none is given (chosen on the shared judged sets: see BENCHMARKS.md "Hybrid")."""
RRF_K = 60
HYBRID_DEPTH = 100
"""Documents each side of a hybrid search ranks before fusion (at least k)."""
REENCODE_MAX_EMBEDDINGS = 200_000
"""``compact`` re-trains by re-encoding the stored texts (not from decompressed embeddings) below this many
embeddings (about 5,000 passages of 40 tokens: a minute or two of encoding on 2 CPU cores)."""
DEFAULT_LOCK_TIMEOUT = 60.0
_OPEN_RETRIES = 5


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _model_meta(model: ColBERT) -> dict:
    return {"name": model.name, "identity": model.identity, "encoder_config": model.config.to_dict()}


def _check_model(model: Any) -> None:
    if not isinstance(model, ColBERT):
        raise InvalidType(f"model must be a ColBERT (e.g. ColBERT.default() or ColBERT.from_pretrained(name)), got "
                          f"{type(model).__name__}")


TRUNCATE_MODES = ("warn", "error", "chunk")
ON_CONFLICT = ("error", "replace")


@dataclasses.dataclass
class _Rows:
    """What goes into the document store: one row per document, or per passage of a chunked document."""

    ids: list
    texts: list
    metadatas: list
    spans: Optional[list] = None  # (passage, start, end) per row; None: no passages


def _rows(model: ColBERT, ids: list, texts: list, metadatas: list, truncate: str) -> _Rows:
    """Apply ``truncate`` to texts longer than the model keeps: "warn" (index the start; the encoder warns with
    the number of tokens dropped), "error" (refuse before anything is written) or "chunk" (passages that fit,
    overlapping, stored under the document's id)."""
    if truncate not in TRUNCATE_MODES:
        raise InvalidArgument(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
    if truncate == "warn":
        return _Rows(ids, texts, metadatas)
    room = model.tokenizer.doc_room()
    counts = model.tokenizer.count_tokens(texts)
    long = [i for i, c in enumerate(counts) if c > room]
    if not long:
        return _Rows(ids, texts, metadatas)
    if truncate == "error":
        i = long[0]
        raise InvalidArgument(f"{len(long)} text(s) exceed the model's {room} document tokens (doc_maxlen="
                              f"{model.config.doc_maxlen}); texts[{i}] has {counts[i]}. Pass truncate='chunk' to "
                              f"index them as passages, or truncate='warn' to index only their start")
    rows = _Rows([], [], [], [])
    for id_, text, meta, n in zip(ids, texts, metadatas, counts):
        spans = model.passage_spans(text) if n > room else [None]
        for j, sp in enumerate(spans):
            rows.ids.append(id_)
            rows.metadatas.append(meta)
            rows.texts.append(text if sp is None else text[sp[0] : sp[1]])
            rows.spans.append(None if sp is None else (j, sp[0], sp[1]))
    return rows


@dataclasses.dataclass
class _Segment:
    """One segment's validated arrays (memory maps on CPU)."""

    codes: torch.Tensor
    residuals: torch.Tensor
    inv_norms: torch.Tensor
    doclens: np.ndarray
    ivf_pids: torch.Tensor
    ivf_offsets: torch.Tensor


@dataclasses.dataclass
class _Snapshot:
    """One committed generation as a reader sees it, from the start of a search to its end."""

    meta: IndexMeta
    arrays: IndexArrays
    docstore: DocStore
    live: torch.Tensor
    live_count: int  # live rows (a document stored as passages has several)
    stamp: Optional[tuple]
    live_docs: int = -1  # live documents

    @property
    def passages(self) -> bool:
        return self.live_docs != self.live_count


class Index:
    """A compressed ColBERT index in one folder. Create with ``Index.build`` or ``Index.open``."""

    def __init__(self, path: Path, model: ColBERT, device=None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 verify: Union[bool, str] = "auto"):
        _check_model(model)
        if verify not in (True, False, "auto"):
            raise InvalidArgument(f"verify must be True, False or 'auto', got {verify!r}")
        self.path = Path(path)
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        self.lock_timeout = _validate.number(lock_timeout, "lock_timeout")
        self.verify = verify
        self._lock = threading.RLock()  # guards the current snapshot and the caches
        self._write_mutex = threading.Lock()  # one writer per handle (the file lock covers other handles)
        self._segments: dict[str, _Segment] = {}
        self._codecs: dict[tuple, ResidualCodec] = {}
        self._snap: Optional[_Snapshot] = None
        self._snap = self._load_snapshot()

    # ================================================================ construction
    @classmethod
    def build(cls, path: Union[str, Path], texts: Sequence[str], ids: Optional[Sequence[str]] = None,
              metadatas: Optional[Sequence[dict]] = None, model: Optional[ColBERT] = None,
              nbits: Optional[int] = None, *, codec_config: Optional[CodecConfig] = None, batch_size: int = 32,
              chunk_docs: int = 1024, show_progress: bool = True, overwrite: bool = False,
              provenance: Optional[dict] = None, codec: Optional[ResidualCodec] = None, device=None,
              lock_timeout: float = DEFAULT_LOCK_TIMEOUT, truncate: str = "warn", lexical: bool = False) -> "Index":
        """Encode, compress and write ``texts`` as a new index at ``path``.

        ids: unique strings (default "0".."n-1"); metadatas: JSON-serialisable dicts; model: a ``ColBERT``, a hub
        id, a checkpoint folder or "default" (the default; names are loaded once per process, see
        ``load_model``); truncate: what to do with texts longer than the model's ``doc_maxlen`` — "warn" (index
        their start; one warning states how many tokens were dropped), "error" (refuse before writing) or
        "chunk" (index overlapping passages that fit, under the document's id: search returns the document once,
        with its best passage's score and text; ``get`` returns the whole text); lexical: also build the BM25
        side (SQLite FTS5 in the document store; for ``search(mode="bm25"|"hybrid"|"bm25_rerank")``); nbits: residual bits per dimension (1, 2 or 4; default ``codec_config.nbits``, else
        2). ``path`` must be new, empty, or hold an index of ours: a folder with other files is refused and nothing
        in it is touched. An existing index is replaced only with ``overwrite=True``, atomically (it stays readable
        until the new one is committed; files that are not ours stay). ``codec``: an already trained
        ``ResidualCodec`` to use instead of training one (shards of one collection share it).
        """
        path = _validate.path_arg(path)
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        metadatas = _validate.metadata_list(metadatas, len(texts))
        if codec_config is not None and not isinstance(codec_config, CodecConfig):
            raise InvalidType(f"codec_config must be a CodecConfig, got {type(codec_config).__name__}")
        if nbits is not None and codec_config is not None and nbits != codec_config.nbits:
            raise InvalidArgument(f"nbits={nbits} contradicts codec_config.nbits={codec_config.nbits}; give one")
        codec_config = codec_config or CodecConfig(nbits=2 if nbits is None else _validate.positive_int(nbits, "nbits"))
        _validate.flag(overwrite, "overwrite")
        _validate.flag(lexical, "lexical")
        model = load_model(model, device=device)
        rows = _rows(model, ids, texts, metadatas, truncate)
        storage.check_ownership(path)  # before the lock file is created
        created = not path.exists()
        t_start = time.perf_counter()
        try:
            with storage.write_lock(path, lock_timeout):
                storage.check_ownership(path)
                old = None
                if storage.holds_our_index(path):
                    if not overwrite:
                        raise InvalidArgument(f"an index already exists at {path}; pass overwrite=True (CLI: "
                                              f"--overwrite) to replace it")
                    with contextlib.suppress(IndexFormatError):
                        old = storage.read_metadata(path)
                storage.collect_garbage(path, old.referenced_files() if old else set())
                times = StageTimes()
                if codec is None:
                    codec, cache, est = train_codec(model, rows.texts, codec_config, batch_size, show_progress, times)
                else:
                    if codec.nbits != codec_config.nbits or codec.dim != model.config.dim:
                        raise InvalidArgument(f"the codec given has nbits={codec.nbits}, dim={codec.dim}; expected "
                                              f"nbits={codec_config.nbits}, dim={model.config.dim}")
                    cache, est = {}, 0
                with SegmentWriter(path, codec) as writer:
                    encode_and_compress(model, codec, rows.texts, writer, cache, batch_size, chunk_docs, show_progress,
                                        times)
                    seg = writer.finish()
                t0 = time.perf_counter()
                docstore = layout.new_docstore_name()
                with DocStore(path / docstore, create=True, lexical=lexical) as ds:
                    ds.insert(0, rows.ids, rows.texts, rows.metadatas, rows.spans)
                    ds.checkpoint()
                codec_meta = layout.CodecMeta(codec_config.to_dict(), codec.num_centroids, codec.avg_residual,
                                              *cls._write_codec(path, codec), est or seg.num_embeddings, 0)
                times.write_s += time.perf_counter() - t0
                meta = IndexMeta(
                    generation=(old.generation + 1) if old else 1, library_version=__version__,
                    model=_model_meta(model), codec=codec_meta, segments=(seg,), docstore=docstore,
                    counts=Counts(len(rows.texts), 0, len(rows.texts), seg.num_embeddings),
                    provenance={"created": _now(), "updated": _now(), "host": platform.node(),
                                "python": platform.python_version(), "torch": torch.__version__,
                                "build_seconds": round(time.perf_counter() - t_start, 3),
                                "stages": times.as_dict(), **(provenance or {})})
                storage.write_metadata(path, meta)
                storage.collect_garbage(path, meta.referenced_files())
        except BaseException:
            if created and path.is_dir() and not storage.holds_our_index(path):
                storage.collect_garbage(path, set())  # a first build that failed leaves no folder behind
                with contextlib.suppress(OSError):
                    (path / layout.LOCK).unlink()
                    path.rmdir()
            raise
        return cls(path, model, device, lock_timeout=lock_timeout)

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[ColBERT] = None, device=None, *,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, verify: Union[bool, str] = "auto") -> "Index":
        """Open an index; the model is restored from the index's metadata unless given (then it must match).

        device: where the index arrays live and search runs (default: the model's device). verify: check every
        file's crc32 on open (True), only the small files' (False: shapes and ranges are still checked), or
        ``"auto"`` (all files up to ``VERIFY_AUTO_BYTES`` in total). A read-only folder opens and searches."""
        path = _validate.path_arg(path)
        meta = storage.read_metadata(path)
        m = meta.model
        if model is None or isinstance(model, (str, os.PathLike)):
            try:
                # the index says how its documents were encoded (e.g. a doc_maxlen chosen at build time): a
                # view of the shared model with that config
                model = load_model(m["name"] if model is None else model, device=device).with_config(
                    EncoderConfig.from_dict(m["encoder_config"]))
            except Exception as e:
                if model is not None:
                    raise IncompatibleModelError(f"model {str(model)!r} cannot be loaded ({e})") from None
                raise IncompatibleModelError(
                    f"the index at {path} was built with model {m['name']!r}, which cannot be loaded here ({e}); "
                    f"pass model=<the checkpoint folder>"
                ) from None
        _check_model(model)
        cls._check_model_matches(path, meta, model)
        return cls(path, model, device, lock_timeout=lock_timeout, verify=verify)

    @staticmethod
    def _check_model_matches(path: Path, meta: IndexMeta, model: ColBERT) -> None:
        m = meta.model
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

    # ================================================================ loading
    @staticmethod
    def _write_codec(path: Path, codec: ResidualCodec) -> tuple[dict, dict]:
        files = layout.new_codec_files()
        sums = {files[part]: storage.save_array(path, files[part], arr) for part, arr in codec.arrays().items()}
        return files, sums

    def _stamp(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path / layout.METADATA)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load_snapshot(self) -> _Snapshot:
        """The committed generation; retried when a writer commits (and collects files) while we read."""
        for attempt in range(_OPEN_RETRIES):
            stamp = self._stamp()
            meta = storage.read_metadata(self.path)
            try:
                return self._snapshot_of(meta, stamp)
            except (IndexNotFoundError, IndexFormatError):
                if attempt + 1 < _OPEN_RETRIES and self._stamp() != stamp:
                    continue
                raise
        raise AssertionError("unreachable")

    def _codec_for(self, meta: IndexMeta) -> ResidualCodec:
        c = meta.codec
        key = tuple(sorted(c.files.values()))
        with self._lock:
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
        with self._lock:
            self._codecs = {key: codec}  # one codec per index at a time
        return codec

    def _segment(self, seg: SegmentMeta, codec: ResidualCodec, check_all: bool) -> _Segment:
        with self._lock:
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
        if seg.legacy:  # format v1: derive what v2 stores
            inv = codec.inverse_norms(storage.as_tensor(codes).to(self.device), storage.as_tensor(residuals).to(self.device))
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
        dev = self.device
        t = storage.as_tensor
        loaded = _Segment(t(codes).to(dev), t(residuals).to(dev), t(inv).to(dev) if isinstance(inv, np.ndarray) else inv,
                          np.asarray(doclens, dtype=np.int64), t(ivf_pids).to(dev),
                          t(np.asarray(ivf_off, dtype=np.int64)).to(dev))
        with self._lock:
            self._segments[seg.name] = loaded
        return loaded

    def _snapshot_of(self, meta: IndexMeta, stamp: Optional[tuple]) -> _Snapshot:
        self._check_model_matches(self.path, meta, self.model)
        check_all = self.verify is True or (self.verify == "auto" and self._size_of(meta) <= VERIFY_AUTO_BYTES)
        codec = self._codec_for(meta)
        segs = [self._segment(s, codec, check_all) for s in meta.segments]
        with self._lock:  # drop segments no longer referenced
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
        docstore = DocStore(self.path / meta.docstore)
        n = meta.counts.documents
        live = torch.ones(n, dtype=torch.bool)
        deleted = docstore.deleted_pids(n, meta.generation)
        live[torch.from_numpy(deleted)] = False
        if int(live.sum()) != meta.counts.live:
            raise IndexFormatError(f"{self.path}: the document store has {int(live.sum())} live documents; "
                                   f"metadata.json says {meta.counts.live}")
        live_docs = docstore.count_documents(n, meta.generation) if docstore.has_spans() else meta.counts.live
        return _Snapshot(meta, arrays, docstore, live.to(self.device), meta.counts.live, stamp, live_docs)

    def _size_of(self, meta: IndexMeta) -> int:
        total = 0
        for name in meta.referenced_files():
            with contextlib.suppress(OSError):
                total += os.stat(self.path / name).st_size
        return total

    def _current(self) -> _Snapshot:
        """The newest committed generation (reloaded if a writer committed since the last call)."""
        with self._lock:
            snap = self._snap
            if snap is None:
                raise IndexClosedError(f"the index at {self.path} was closed; open it again with Index.open")
            stamp = self._stamp()
            if stamp != snap.stamp:
                meta = storage.read_metadata(self.path)
                if meta.generation != snap.meta.generation:
                    self._snap = self._load_snapshot()
                else:
                    self._snap = dataclasses.replace(snap, stamp=stamp)
            return self._snap

    # ================================================================ properties
    @property
    def metadata(self) -> dict:
        """A copy of metadata.json of the generation last seen."""
        return self._current().meta.to_dict()

    @property
    def generation(self) -> int:
        """The committed generation this handle reads (refreshed if a writer committed since)."""
        return self._current().meta.generation

    @property
    def closed(self) -> bool:
        return self._snap is None

    def __len__(self) -> int:
        """Live documents (a document indexed as passages counts once)."""
        return self._current().live_docs

    def __repr__(self) -> str:
        if self._snap is None:
            return f"Index({str(self.path)!r}, closed)"
        return f"Index({str(self.path)!r}, live={self._snap.live_docs}, nbits={self._snap.arrays.codec.nbits})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release this handle's memory maps and database connection (a search in flight in another thread
        finishes on its snapshot first). Later calls raise ``IndexClosedError``. Idempotent."""
        with self._lock:
            self._snap = None
            self._segments, self._codecs = {}, {}

    # ================================================================ search
    def search(self, queries: Union[str, Sequence[str]], k: int = 10, *, filter: Optional[dict] = None,
               ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
               centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
               exhaustive: bool = False, mode: str = "colbert", fusion: str = DEFAULT_FUSION,
               depth: Optional[int] = None) -> Union[list[Hit], list[list[Hit]]]:
        """Top-k documents for one query (list[Hit]) or several (list[list[Hit]]), best first.

        filter: metadata filter (see ``docstore.compile_filter``); ids: restrict to these document ids.
        ncells, centroid_score_threshold, ndocs: PLAID knobs for this call only (defaults depend on k);
        exhaustive: decompress and score every allowed document (the reference).

        mode: "colbert" (PLAID over the token embeddings; exactly min(k, matching live documents) hits), "bm25"
        (the lexical side only: documents holding at least one query word, up to k), "hybrid" (both, each to
        ``depth`` documents, default max(k, 100), fused by ``fusion``: "normalized" (default: each side's scores
        min-max scaled to [0, 1], summed) or "rrf" (reciprocal rank, constant 60); exactly min(k, matching live documents) hits) or "bm25_rerank"
        (BM25's top ``depth``, re-scored with exact MaxSim over their stored embeddings). Filters and ids apply
        to both sides before fusion. The modes other than "colbert" need the lexical side (``lexical=True``
        at build, or ``add_lexical()``). Hit.score is MaxSim, BM25 or the fused score.
        """
        single = isinstance(queries, str)
        qs = _validate.texts_list(queries, "query" if single else "queries")
        k = _validate.positive_int(k, "k")
        cfg = self._search_config(ncells, centroid_score_threshold, ndocs, exhaustive)
        if mode not in SEARCH_MODES:
            raise InvalidArgument(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise InvalidArgument(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        depth = max(k, HYBRID_DEPTH) if depth is None else max(k, _validate.positive_int(depth, "depth"))
        snap = self._current()  # a closed index fails before encoding
        if mode == "colbert":
            Q = self.model.encode_queries(qs).to(self.device)
            results = self.search_embeddings(Q, k, filter=filter, ids=ids, config=cfg)
            return results[0] if single else results
        if not snap.docstore.has_lexical():
            raise InvalidArgument(f"mode={mode!r} needs the lexical (BM25) side, which the index at {self.path} "
                                  f"lacks: call index.add_lexical() once (or build with lexical=True)")
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        if ids is not None:
            ids = _validate.id_selection(ids, "ids")
        n, gen = snap.meta.counts.documents, snap.meta.generation
        lexical = [snap.docstore.bm25(q, k if mode == "bm25" else depth, n, gen, filter, ids) for q in qs]
        if mode == "bm25":
            out = [([p for p, _ in r], [sc for _, sc in r]) for r in lexical]
        else:
            Q = self.model.encode_queries(qs).to(self.device).float()
            if mode == "bm25_rerank":
                out = [self._rerank(snap, Q[i], [p for p, _ in r], k) for i, r in enumerate(lexical)]
            else:
                dense = self._colbert_top(snap, Q, depth, filter, ids, cfg)
                out = [self._fuse(snap, d, ([p for p, _ in r], [sc for _, sc in r]), k, fusion)
                       for d, r in zip(dense, lexical)]
        results = self._hits(snap, out)
        return results[0] if single else results

    @staticmethod
    def _search_config(ncells, threshold, ndocs, exhaustive) -> SearchConfig:
        if ncells is not None:
            _validate.positive_int(ncells, "ncells")
        if ndocs is not None:
            _validate.positive_int(ndocs, "ndocs")
        if threshold is not None:
            threshold = _validate.number(threshold, "centroid_score_threshold")
        return SearchConfig(ncells, threshold, ndocs, _validate.flag(exhaustive, "exhaustive"))

    def search_embeddings(self, Q: torch.Tensor, k: int, *, filter: Optional[dict] = None,
                          ids: Optional[Sequence[str]] = None, config: SearchConfig = SearchConfig()) -> list[list[Hit]]:
        """Search with query embeddings Q: (n, q_len, dim) (zero rows are ignored)."""
        dim = self.model.config.dim
        if not isinstance(Q, torch.Tensor) or Q.dim() != 3 or Q.shape[-1] != dim:
            shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
            raise InvalidArgument(f"query embeddings have shape {shape}; expected (n, q_len, {dim})")
        k = _validate.positive_int(k, "k")
        if not isinstance(config, SearchConfig):
            raise InvalidType(f"config must be a SearchConfig, got {type(config).__name__}")
        Q = Q.to(self.device).float()
        if not torch.isfinite(Q).all():
            raise InvalidArgument("query embeddings hold NaN or infinite values")
        snap = self._current()
        return self._hits(snap, self._colbert_top(snap, Q, k, filter, ids, config))

    def _colbert_top(self, snap: _Snapshot, Q: torch.Tensor, k: int, filter, ids, config) -> list[tuple[list, list]]:
        """(pids, MaxSim scores) of the top-k documents per query of Q, by PLAID."""
        allowed, n_allowed = self._allowed(snap, filter, ids)
        out = []
        with torch.inference_mode():
            # query by query over its real (non-zero) rows: padding rows would cost up to a third of the centroid
            # product on short queries. One product per query (``ResidualCodec.centroid_scores``, fbgemm's fp16
            # GEMM on CPU) measured ~2x faster per query than one float32 product for a group of 64 queries
            # (45 vs 88 ms for 64 x 22 rows x 16k centroids), and keeps memory at one query's (K, q_len) scores
            real = Q.abs().sum(-1) > 0  # (n, q_len)
            for qi in range(Q.shape[0]):
                out.append(self._top_documents(snap, Q[qi][real[qi]], k, config, allowed, n_allowed))
        return out

    @staticmethod
    def _hits(snap: _Snapshot, out: list[tuple[list, list]]) -> list[list[Hit]]:
        docs = snap.docstore.fetch(sorted({p for pids, _ in out for p in pids}))
        return [[Hit(id=docs[p][0], score=s, rank=r + 1, text=docs[p][1], metadata=docs[p][2], passage=docs[p][3])
                 for r, (p, s) in enumerate(zip(pids, scores))] for pids, scores in out]

    def _rerank(self, snap: _Snapshot, q: torch.Tensor, pids: list, k: int) -> tuple[list, list]:
        """Exact MaxSim of the given rows (best passages) against one query, top k."""
        if not pids:
            return [], []
        q = q[q.abs().sum(-1) > 0]
        arrays = snap.arrays
        t = torch.tensor(sorted(pids), dtype=torch.long, device=arrays.doc_offsets.device)
        with torch.inference_mode():
            scores = exact_scores(q, arrays, t)
        top = torch.topk(scores, min(k, t.numel()))
        return t[top.indices].cpu().tolist(), top.values.cpu().tolist()

    @staticmethod
    def _fuse(snap: _Snapshot, dense: tuple[list, list], lexical: tuple[list, list], k: int,
              fusion: str) -> tuple[list, list]:
        """Fuse two ranked lists of rows by document id (a document's row: the dense side's best passage)."""
        ids = snap.docstore.fetch(sorted(set(dense[0]) | set(lexical[0])))
        fused: dict[str, float] = {}
        row: dict[str, int] = {}
        for pids, scores in (dense, lexical):
            if not pids:
                continue
            if fusion == "rrf":
                contrib = [1.0 / (RRF_K + r + 1) for r in range(len(pids))]
            else:
                lo, hi = min(scores), max(scores)
                contrib = [1.0 if hi == lo else (sc - lo) / (hi - lo) for sc in scores]
            for p, c in zip(pids, contrib):
                doc = ids[p][0]
                fused[doc] = fused.get(doc, 0.0) + c
                row.setdefault(doc, p)
        best = sorted(fused, key=lambda d: (-fused[d], row[d]))[:k]
        return [row[d] for d in best], [fused[d] for d in best]

    @staticmethod
    def _top_documents(snap: _Snapshot, q, k, config, allowed, n_allowed) -> tuple[list, list]:
        """Top-k rows, then (when documents are stored as passages) the best passage of each document, asking
        for more rows until k documents are found or every allowed row was ranked. The first request covers the
        mean number of rows per document, and every request is planned for k documents (not for the rows asked:
        a k=10 search must not take the k=100 plan because documents are split)."""
        k_rows = k
        if snap.passages and snap.live_docs > 0:
            k_rows = min(n_allowed, -(-k * snap.live_count // snap.live_docs) + k)
        while True:
            pids, scores = plaid.search(q, snap.arrays, k_rows, config, allowed, n_allowed, plan_k=k)
            pids, scores = pids.cpu().tolist(), scores.cpu().tolist()
            if not snap.passages:
                return pids, scores
            ids = snap.docstore.doc_ids(pids)
            seen, keep = set(), []
            for i, p in enumerate(pids):  # best first: the first row of a document is its best passage
                if ids[p] not in seen:
                    seen.add(ids[p])
                    keep.append(i)
            if len(keep) >= k or len(pids) < k_rows or k_rows >= n_allowed:
                keep = keep[:k]
                return [pids[i] for i in keep], [scores[i] for i in keep]
            k_rows = min(n_allowed, 2 * k_rows + k)

    @staticmethod
    def _allowed(snap: _Snapshot, filter: Optional[dict], ids: Optional[Sequence[str]]):
        n, gen = snap.meta.counts.documents, snap.meta.generation
        if filter is None and ids is None:
            if snap.live_count == n:
                return None, n
            return snap.live, snap.live_count
        mask = snap.live.clone()
        if filter is not None:
            if not isinstance(filter, dict):
                raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
            keep = torch.zeros_like(mask)
            keep[torch.from_numpy(snap.docstore.filter_pids(filter, n, gen)).to(mask.device)] = True
            mask &= keep
        if ids is not None:
            ids = _validate.id_selection(ids, "ids")
            keep = torch.zeros_like(mask)
            found = [p for ps in snap.docstore.pids_of(ids, n, gen).values() for p in ps]
            keep[torch.tensor(found, dtype=torch.long, device=mask.device)] = True
            mask &= keep
        return mask, int(mask.sum())

    # ================================================================ updates
    @contextlib.contextmanager
    def _write(self):
        """Hold the writer lock and yield the committed generation (v1 upgraded to v2 in new files, not yet
        committed). Before that: our files that no committed generation names (a killed writer's) are removed and
        its uncommitted document rows rolled back."""
        with self._write_mutex:
            self._current()  # not closed
            with storage.write_lock(self.path, self.lock_timeout):
                meta = storage.read_metadata(self.path)
                self._check_model_matches(self.path, meta, self.model)
                storage.collect_garbage(self.path, meta.referenced_files())
                with DocStore(self.path / meta.docstore) as ds:
                    ds.rollback_uncommitted(meta.counts.documents, meta.generation)
                if meta.is_legacy:
                    meta = self._upgrade(meta)
                yield meta

    def _commit(self, meta: IndexMeta) -> None:
        meta = dataclasses.replace(meta, provenance={**meta.provenance, "updated": _now(),
                                                     "library_version": __version__})
        storage.write_metadata(self.path, meta)
        storage.collect_garbage(self.path, meta.referenced_files())
        with self._lock:
            self._snap = self._load_snapshot()

    def _upgrade(self, meta: IndexMeta) -> IndexMeta:
        """Format v1 -> v2: copy each segment into a v2 segment (inverse norms, own inverted file, checksums)."""
        codec = self._codec_for(meta)
        segments = []
        for seg in meta.segments:
            loaded = self._segment(seg, codec, True)
            segments.append(self._copy_segments([loaded], codec))
        sums = {name: storage.file_crc(self.path / name) for name in meta.codec.files.values()}
        logger.info("upgraded the index at %s from format version %d to %d", self.path, meta.format_version,
                    layout.FORMAT_VERSION)
        return meta.upgraded(tuple(segments), sums)

    def _copy_segments(self, loaded: list[_Segment], codec: ResidualCodec, chunk_docs: int = 8192) -> SegmentMeta:
        """One new segment holding the given segments' documents in order (no re-encoding, no re-compression)."""
        def chunks():
            for s in loaded:
                offsets = np.concatenate([[0], np.cumsum(s.doclens)])
                for a in range(0, len(s.doclens), chunk_docs):
                    b = min(a + chunk_docs, len(s.doclens))
                    lo, hi = int(offsets[a]), int(offsets[b])
                    yield (s.codes[lo:hi].to(torch.int64), s.residuals[lo:hi], torch.from_numpy(s.doclens[a:b]),
                           s.inv_norms[lo:hi])
        return write_segment(self.path, codec, chunks())

    def _merge_tail(self, segments: tuple, codec: ResidualCodec) -> tuple:
        while len(segments) > 1 and segments[-1].num_embeddings * MERGE_FACTOR >= segments[-2].num_embeddings:
            loaded = [self._segment(s, codec, False) for s in segments[-2:]]
            segments = segments[:-2] + (self._copy_segments(loaded, codec),)
        return segments

    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None, metadatas: Optional[Sequence[dict]] = None,
            *, on_conflict: str = "error", truncate: str = "warn", batch_size: int = 32,
            show_progress: bool = False) -> list[str]:
        """Encode and append documents (existing centroids) as a new segment; small segments are merged
        (``MERGE_FACTOR``), so the cost is about proportional to the new documents, not to the index. Atomic.
        Returns their ids (uuid4 hex when not given).

        on_conflict: what an id that is already live means — "error" (refuse the whole call, nothing written) or
        "replace" (the old document, all its passages, is deleted in the same commit: an upsert). truncate: as
        in ``build``."""
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [uuid.uuid4().hex for _ in texts]
        metadatas = _validate.metadata_list(metadatas, len(texts))
        if on_conflict not in ON_CONFLICT:
            raise InvalidArgument(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
        rows = _rows(self.model, ids, texts, metadatas, truncate)
        with self._write() as meta:
            n, gen = meta.counts.documents, meta.generation
            with DocStore(self.path / meta.docstore) as ds:
                clash = ds.pids_of(ids, n, gen)
                if clash and on_conflict == "error":
                    raise InvalidArgument(f"ids already in the index: {sorted(clash)[:10]} (pass "
                                          f"on_conflict='replace' or use upsert to replace them)")
                codec = self._codec_for(meta)  # the committed codec, whatever this handle saw before
                with SegmentWriter(self.path, codec) as writer:
                    encode_and_compress(self.model, codec, rows.texts, writer, None, batch_size, 4096, show_progress,
                                        StageTimes(), desc="adding")
                    seg = writer.finish()
                replaced = sorted(p for ps in clash.values() for p in ps)
                if replaced:
                    ds.mark_deleted(np.array(replaced, dtype=np.int64), gen + 1)
                ds.insert(n, rows.ids, rows.texts, rows.metadatas, rows.spans)
                ds.checkpoint()
            c, added = meta.counts, len(rows.texts)
            self._commit(dataclasses.replace(
                meta, generation=gen + 1, segments=self._merge_tail(meta.segments + (seg,), codec),
                counts=Counts(c.documents + added, c.deleted + len(replaced), c.live + added - len(replaced),
                              c.embeddings + seg.num_embeddings),
                codec=dataclasses.replace(meta.codec, embeddings_added=meta.codec.embeddings_added + seg.num_embeddings)))
        return ids

    def upsert(self, texts: Sequence[str], ids: Sequence[str], metadatas: Optional[Sequence[dict]] = None,
               **kwargs) -> list[str]:
        """``add(..., on_conflict="replace")``: documents whose id is live are replaced, the others added. Atomic."""
        if ids is None:
            raise InvalidArgument("upsert needs ids (which documents to replace)")
        return self.add(texts, ids, metadatas, on_conflict="replace", **kwargs)

    def get(self, ids: Union[str, Sequence[str]]) -> list[Record]:
        """The live documents with these ids, in the order given (ids not in the index are skipped)."""
        ids = _validate.id_selection(ids, "ids")
        snap = self._current()
        rows = snap.docstore.rows_of(ids, snap.meta.counts.documents, snap.meta.generation)
        return [Record(i, *rows[i]) for i in dict.fromkeys(ids) if i in rows]

    def ids(self, filter: Optional[dict] = None) -> list[str]:
        """Ids of the live documents (those matching ``filter`` if given), in the order they were added."""
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        snap = self._current()
        return snap.docstore.live_ids(snap.meta.counts.documents, snap.meta.generation, filter)

    def delete(self, ids: Union[str, Sequence[str], None] = None, *, filter: Optional[dict] = None) -> int:
        """Delete documents by id (unknown ids are ignored), by metadata filter, or both (documents matching both).
        Atomic; gone from results at once. Returns the count."""
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (to delete everything, pass filter={})")
        if ids is not None:
            ids = _validate.id_selection(ids, "ids")
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        with self._write() as meta:
            n, gen = meta.counts.documents, meta.generation
            with DocStore(self.path / meta.docstore) as ds:
                chosen = None
                if ids is not None:
                    chosen = {p for ps in ds.pids_of(ids, n, gen).values() for p in ps}
                if filter is not None:
                    matching = set(ds.filter_pids(filter, n, gen).tolist())
                    chosen = matching if chosen is None else chosen & matching
                pids = np.array(sorted(chosen), dtype=np.int64)
                if len(pids) == 0:
                    return 0
                ds.mark_deleted(pids, gen + 1)
                ds.checkpoint()
            c = meta.counts
            self._commit(dataclasses.replace(meta, generation=gen + 1,
                                             counts=Counts(c.documents, c.deleted + len(pids), c.live - len(pids),
                                                           c.embeddings)))
        return len(pids)

    @property
    def has_lexical(self) -> bool:
        """Whether the index has its lexical (BM25) side."""
        return self._current().docstore.has_lexical()

    def add_lexical(self) -> None:
        """Give an existing index its lexical (BM25) side: every stored text (passage) is indexed by SQLite FTS5
        in the document store, in one transaction; later add/delete/compact keep it in step. Idempotent."""
        with self._write() as meta:
            with DocStore(self.path / meta.docstore) as ds:
                if ds.has_lexical():
                    return
                ds.add_lexical()
                ds.checkpoint()
            self._commit(dataclasses.replace(meta, generation=meta.generation + 1))

    @property
    def needs_recluster(self) -> bool:
        """True when the centroids were trained on fewer than 1 / (1 + ``RECLUSTER_RATIO``) of the embeddings
        added since (``compact()`` would then re-train them)."""
        c = self._current().meta.codec
        return c.embeddings_added > RECLUSTER_RATIO * max(1, c.embeddings_at_training)

    def compact(self, *, recluster: Optional[bool] = None, reencode: Optional[bool] = None,
                show_progress: bool = False) -> None:
        """Rewrite the index without deleted documents, in one segment. Atomic.

        recluster: re-train the centroids; None (default) does when more than ``RECLUSTER_RATIO`` of the embeddings
        were added after the centroids were trained. reencode: when re-training, encode the stored texts again
        (exact: what a fresh build gives) instead of re-training on the decompressed embeddings (no encoder pass,
        but every re-training adds the old codec's error, which compounds when a collection grows from a few
        documents); None (default) re-encodes indexes under ``REENCODE_MAX_EMBEDDINGS`` embeddings."""
        if recluster is not None:
            _validate.flag(recluster, "recluster")
        if reencode is not None:
            _validate.flag(reencode, "reencode")
        with self._write() as meta:
            snap = self._snapshot_of(meta, None)  # the committed generation's arrays
            arrays, n, gen = snap.arrays, meta.counts.documents, meta.generation
            offsets = arrays.doc_offsets.cpu()
            live = snap.live.nonzero().flatten().cpu()
            c = meta.codec
            config = CodecConfig.from_dict(c.config)
            if recluster is None:
                recluster = c.embeddings_added > RECLUSTER_RATIO * max(1, c.embeddings_at_training)
            old_codec = codec = arrays.codec
            if reencode is None:
                reencode = meta.counts.embeddings < REENCODE_MAX_EMBEDDINGS
            if recluster and reencode and len(live):  # exact: encode the stored texts (rows) again
                texts = [r[2] for rows in snap.docstore.iter_visible(n, gen) for r in rows]
                times = StageTimes()
                codec, cache, _ = train_codec(self.model, texts, config, 32, show_progress, times)
                with SegmentWriter(self.path, codec) as writer:
                    encode_and_compress(self.model, codec, texts, writer, cache, 32, 1024, show_progress, times,
                                        desc="re-encoding")
                    seg = writer.finish()
            else:
                if recluster and len(live):  # re-train on a sample of the decompressed embeddings
                    idx, _ = gather_rows(offsets, live)
                    sample = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
                    sample = sample[: config.kmeans_sample_tokens].sort().values
                    embs = codec.decompress(arrays.codes.take(sample), arrays.residuals.take(sample))
                    codec = ResidualCodec.fit(embs, config, int(idx.numel()))
                    codec = ResidualCodec.from_arrays(codec.arrays(), codec.nbits, codec.avg_residual,
                                                      device=self.device)

                def chunks():
                    for s in range(0, live.numel(), 8192):
                        idx, sub = gather_rows(offsets, live[s : s + 8192])
                        codes, residuals = arrays.codes.take(idx), arrays.residuals.take(idx)
                        if recluster:  # re-compress the decompressed embeddings against the new centroids
                            codes, residuals = codec.compress(old_codec.decompress(codes, residuals))
                            yield codes, residuals, sub[1:] - sub[:-1]
                        else:
                            yield codes.to(torch.int64), residuals, sub[1:] - sub[:-1], arrays.inv_norms.take(idx)

                seg = write_segment(self.path, codec, chunks())
            docstore = layout.new_docstore_name()
            with DocStore(self.path / docstore, create=True, lexical=snap.docstore.has_lexical()) as new_ds:
                pid = 0
                for rows in snap.docstore.iter_visible(n, gen):
                    new_ds.insert(pid, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                                  [r[4] for r in rows])
                    pid += len(rows)
                new_ds.checkpoint()
            codec_meta = c
            if recluster:
                files, sums = self._write_codec(self.path, codec)
                codec_meta = layout.CodecMeta(c.config, codec.num_centroids, codec.avg_residual, files, sums,
                                              seg.num_embeddings, 0)
            del snap
            self._commit(dataclasses.replace(
                meta, generation=gen + 1, segments=(seg,), docstore=docstore, codec=codec_meta,
                counts=Counts(seg.num_docs, 0, seg.num_docs, seg.num_embeddings)))
