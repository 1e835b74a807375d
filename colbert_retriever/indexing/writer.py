"""The writer side of an index folder: one write transaction (writer lock, the committed generation re-read from
disk, a killed writer's leftovers removed and its uncommitted rows rolled back, format v1 upgraded), and the
writes that run inside it: build, add (upsert), delete, the lexical side. ``compaction.py`` runs in it too.

Every write starts from the generation committed on disk (metadata, codec, document store), never from a
handle's memory; new files are written beside the old ones and ``metadata.json`` is replaced last (the commit
point), then files no generation names are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .._version import __version__
from ..codec.residual import ResidualCodec
from ..config import CodecConfig
from ..errors import IndexFormatError, InvalidArgument, InvalidType
from ..search.reader import Reader, Segment, check_model_matches
from ..store import layout, storage
from ..store.docstore import DocStore
from ..store.layout import Counts, IndexMeta, SegmentMeta
from .builder import (SegmentWriter, StageTimes, encode_and_compress, progress_bar, rows_unit, train_codec,
                      write_segment)
from .external import EmbeddingsOnly
from .ingest import Rows
from .pooling import pooled

logger = logging.getLogger(__name__)

MERGE_FACTOR = 4
"""``add`` merges the newest segment into the one before it while the newest holds at least 1/MERGE_FACTOR of its
embeddings (cascading): segment sizes fall geometrically, so an index has O(log n) segments and an embedding is
copied O(log n) times over any sequence of adds."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def model_meta(model) -> dict:
    meta = {"name": model.name, "identity": model.identity, "encoder_config": model.config.to_dict()}
    if isinstance(model, EmbeddingsOnly):
        meta["kind"] = "embeddings"  # built from precomputed embeddings, no model named
    return meta


def write_codec(path: Path, codec: ResidualCodec) -> tuple[dict, dict]:
    """The codec's arrays as new files; returns (part -> file name, file name -> crc32)."""
    files = layout.new_codec_files()
    sums = {files[part]: storage.save_array(path, files[part], arr) for part, arr in codec.arrays().items()}
    return files, sums


def copy_segments(path: Path, loaded: list[Segment], codec: ResidualCodec, chunk_docs: int = 8192) -> SegmentMeta:
    """One new segment holding the given segments' documents in order (no re-encoding, no re-compression)."""
    def chunks():
        for s in loaded:
            offsets = np.concatenate([[0], np.cumsum(s.doclens)])
            for a in range(0, len(s.doclens), chunk_docs):
                b = min(a + chunk_docs, len(s.doclens))
                lo, hi = int(offsets[a]), int(offsets[b])
                yield (s.codes[lo:hi].to(torch.int64), s.residuals[lo:hi], torch.from_numpy(s.doclens[a:b]),
                       s.inv_norms[lo:hi])
    return write_segment(path, codec, chunks())


def build(path: Path, rows: Rows, model, codec_config: CodecConfig, *, batch_size: int, chunk_docs: int,
          show_progress: Optional[bool], overwrite: bool, provenance: Optional[dict], codec: Optional[ResidualCodec],
          lock_timeout: float, lexical: bool, encoder=None, sources: Optional[Sequence] = None,
          pool_factor: int = 1) -> None:
    """Encode, compress and commit ``rows`` as a new index at ``path`` (see ``Index.build``). A first build that
    fails leaves no folder behind; an existing index stays readable until the new one is committed, and a failed
    rebuild leaves none of its files. encoder and sources: what is encoded (default: ``model`` over the rows'
    texts; ``external.GivenEmbeddings`` over document numbers for precomputed embeddings). show_progress: None
    shows a bar only for more than ``builder.PROGRESS_MIN_ROWS`` rows. pool_factor: each row's token embeddings
    pooled by this factor (``pooling``; 1: none), recorded in the metadata so that later writes pool alike."""
    if codec is not None:
        if not isinstance(codec, ResidualCodec):
            raise InvalidType(f"codec must be a ResidualCodec (an index's, or ResidualCodec.fit's), got "
                              f"{type(codec).__name__}")
        if codec.nbits != codec_config.nbits or codec.dim != model.config.dim:
            raise InvalidArgument(f"the codec given has nbits={codec.nbits}, dim={codec.dim}; expected "
                                  f"nbits={codec_config.nbits}, dim={model.config.dim}")
        codec = codec.as_stored()  # as a trained codec is: rows compressed with the centroids search uses
    encoder = pooled(model if encoder is None else encoder, pool_factor)
    sources = rows.texts if sources is None else sources
    if provenance is not None and len(json.dumps(provenance, default=str)) > layout.METADATA_MAX_BYTES // 2:
        raise InvalidArgument(f"provenance is larger than {layout.METADATA_MAX_BYTES // 2} bytes as JSON; "
                              f"{layout.METADATA} must stay under {layout.METADATA_MAX_BYTES}")
    storage.check_ownership(path)  # before the lock file is created
    created = not path.exists()
    t_start = time.perf_counter()
    try:
        with storage.write_errors(path), storage.write_lock(path, lock_timeout) as lock, \
                storage.write_errors(path, lock):
            try:
                _build_locked(path, rows, model, codec_config, batch_size, chunk_docs, show_progress, overwrite,
                              provenance, codec, lexical, encoder, sources, lock, t_start, pool_factor)
            except BaseException:
                if not created and lock.held():
                    _remove_uncommitted(path)
                raise
    except BaseException:
        if created and path.is_dir() and not storage.holds_our_index(path):
            storage.collect_garbage(path, set())  # a first build that failed leaves no folder behind
            with contextlib.suppress(OSError):
                (path / layout.LOCK).unlink()
                path.rmdir()
        raise


def _remove_uncommitted(path: Path) -> None:
    """After a failed write, still holding the lock: remove our files that the generation committed on disk does
    not name (what the failed write left; the next writer would remove them too). Best effort."""
    with contextlib.suppress(Exception):
        keep = storage.read_metadata(path).referenced_files() if storage.holds_our_index(path) else set()
        storage.collect_garbage(path, keep)


def _build_locked(path, rows, model, codec_config, batch_size, chunk_docs, show_progress, overwrite, provenance,
                  codec, lexical, encoder, sources, lock, t_start, pool_factor) -> None:
    storage.check_ownership(path)
    old = None
    if storage.holds_our_index(path):
        if not overwrite:
            raise InvalidArgument(f"an index already exists at {path}; if_exists='upsert' adds to it by "
                                  f"id, 'overwrite' replaces it")
        with contextlib.suppress(IndexFormatError):
            old = storage.read_metadata(path)
    storage.collect_garbage(path, old.referenced_files() if old else set())
    times = StageTimes()
    with progress_bar(len(rows.texts), show_progress, "encoding", rows_unit(rows)) as bar:
        if codec is None:
            codec, cache, est = train_codec(encoder, sources, codec_config, batch_size, show_progress, times, bar)
        else:
            cache, est = {}, 0
        with SegmentWriter(path, codec) as writer:
            encode_and_compress(encoder, codec, sources, writer, cache, batch_size, chunk_docs, show_progress,
                                times, bar=bar)
            t0 = time.perf_counter()
            seg = writer.finish()
            times.segment_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    docstore = layout.new_docstore_name()
    with DocStore(path / docstore, create=True) as ds:
        ds.insert(0, rows.ids, rows.texts, rows.metadatas, rows.spans)
        if lexical:
            ds.add_lexical(len(rows.texts))
        ds.checkpoint()
    codec_meta = layout.CodecMeta(codec_config.to_dict(), codec.num_centroids, codec.avg_residual,
                                  *write_codec(path, codec), est or seg.num_embeddings, 0)
    times.write_s += time.perf_counter() - t0
    meta = IndexMeta(
        generation=(old.generation + 1) if old else 1, library_version=__version__,
        model=model_meta(model), codec=codec_meta, segments=(seg,), docstore=docstore,
        counts=Counts(len(rows.texts), 0, len(rows.texts), seg.num_embeddings), pool_factor=pool_factor,
        provenance={"created": now(), "updated": now(), "host": platform.node(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "precision": model.precision.to_dict(),
                    "build_seconds": round(time.perf_counter() - t_start, 3),
                    "stages": times.as_dict(), **(provenance or {})})
    lock.check()
    storage.write_metadata(path, meta)
    storage.collect_garbage(path, meta.referenced_files())


EMBEDDINGS_ADDED = "embeddings_added"
"""Provenance flag: documents were added to this text index as precomputed embeddings (``add_embeddings``)."""


def texts_encodable(meta: IndexMeta) -> bool:
    """Whether encoding the stored texts again gives the index's documents: not when they were given as embeddings
    (built from embeddings, or some added so): their stored texts, empty or not, are not what was encoded."""
    return meta.provenance.get("source") != "embeddings" and not meta.provenance.get(EMBEDDINGS_ADDED)


def check_pool_factor(path: Path, meta: IndexMeta, pool_factor: Optional[int]) -> None:
    """Refuse a write that asks for a pool factor other than the index's. Why not one factor per segment: a
    document pooled harder has fewer, blurrier vectors and a systematically lower MaxSim, so one index mixing
    factors would rank documents partly by how they were pooled."""
    if pool_factor is not None and pool_factor != meta.pool_factor:
        raise InvalidArgument(f"the index at {path} pools documents with pool_factor={meta.pool_factor}; documents "
                              f"added to it are pooled the same way (omit pool_factor, or rebuild the index with "
                              f"if_exists='overwrite' to change it), got pool_factor={pool_factor}")


def _skip_unchanged(rows: Rows, clash: dict, stored: dict, documents: dict, keep_metadata: bool):
    """Upsert: leave out the documents stored exactly as given (``documents``: id -> (text, metadata); empty for
    precomputed embeddings, which are never skipped), and give replaced documents their stored metadata when none
    was given. Returns the rows left and the ids they replace."""
    same = set()
    for id_, (text, metadata) in documents.items():
        if id_ in stored:
            old_text, old_meta = stored[id_]
            if keep_metadata:
                metadata = old_meta
            if text == old_text and metadata == old_meta:
                same.add(id_)
    keep = [i for i, id_ in enumerate(rows.ids) if id_ not in same]
    out = Rows([rows.ids[i] for i in keep], [rows.texts[i] for i in keep],
               [stored[rows.ids[i]][1] if keep_metadata and rows.ids[i] in stored else rows.metadatas[i]
                for i in keep], None if rows.spans is None else [rows.spans[i] for i in keep])
    return out, {k: v for k, v in clash.items() if k not in same}


class Writer:
    """Writes to one index folder for one ``Index`` handle (one writer per handle; the file lock covers other
    handles and processes)."""

    def __init__(self, path: Path, model, lock_timeout: float, reader: Reader):
        self.path, self.model, self.lock_timeout, self.reader = path, model, lock_timeout, reader
        self._mutex = threading.Lock()
        self._lock: Optional[storage.WriteLock] = None  # held during a transaction

    @contextlib.contextmanager
    def transaction(self) -> Iterator[IndexMeta]:
        """Hold the writer lock and yield the committed generation (v1 upgraded to v2 in new files, not yet
        committed). Before that: our files that no committed generation names (a killed writer's) are removed and
        its uncommitted document rows rolled back. A write that fails removes the files it wrote (while it still
        holds the lock); operating-system failures become ``IndexWriteError``/``DiskFullError``, and any failure
        after the lock file was deleted or replaced ``IndexLockedError`` (``storage.write_errors``)."""
        with self._mutex:
            self.reader.current()  # not closed
            with storage.write_errors(self.path), storage.write_lock(self.path, self.lock_timeout) as lock, \
                    storage.write_errors(self.path, lock):
                self._lock = lock
                try:
                    meta = storage.read_metadata(self.path)
                    check_model_matches(self.path, meta, self.model)
                    storage.collect_garbage(self.path, meta.referenced_files())
                    with DocStore(self.path / meta.docstore) as ds:
                        ds.prepare_write(meta.counts.documents, meta.generation)
                    if meta.is_legacy:
                        meta = self._upgrade(meta)
                    yield meta
                except BaseException:
                    if lock.held():
                        _remove_uncommitted(self.path)
                    raise
                finally:
                    self._lock = None

    def commit(self, meta: IndexMeta) -> None:
        """Replace metadata.json (the commit point), remove what no generation names, reload the reader. Refused
        when the writer lock was lost meanwhile."""
        meta = dataclasses.replace(meta, provenance={**meta.provenance, "updated": now(),
                                                     "library_version": __version__})
        self._lock.check()
        storage.write_metadata(self.path, meta)
        storage.collect_garbage(self.path, meta.referenced_files())
        self.reader.reload()

    def _upgrade(self, meta: IndexMeta) -> IndexMeta:
        """Format v1 -> v2: copy each segment into a v2 segment (inverse norms, own inverted file, checksums)."""
        codec = self.reader.codec_for(meta)
        segments = tuple(copy_segments(self.path, [self.reader.segment(seg, codec, True)], codec)
                         for seg in meta.segments)
        sums = {name: storage.file_crc(self.path / name) for name in meta.codec.files.values()}
        logger.info("upgraded the index at %s from format version %d to %d", self.path, meta.format_version,
                    layout.FORMAT_VERSION)
        return meta.upgraded(segments, sums)

    def _merge_tail(self, segments: tuple, codec: ResidualCodec) -> tuple:
        while len(segments) > 1 and segments[-1].num_embeddings * MERGE_FACTOR >= segments[-2].num_embeddings:
            loaded = [self.reader.segment(s, codec, False) for s in segments[-2:]]
            segments = segments[:-2] + (copy_segments(self.path, loaded, codec),)
        return segments

    def add(self, rows: Rows, on_conflict: str, batch_size: int, show_progress: bool, merge: bool = True, *,
            documents: Optional[dict] = None, keep_metadata: bool = False, encoder=None,
            sources: Optional[Sequence] = None, report: Optional[dict] = None,
            pool_factor: Optional[int] = None) -> None:
        """Encode and append ``rows`` as a new segment (existing centroids); ids already live are refused
        (``on_conflict="error"``) or replaced in the same commit ("replace"). documents: id -> (text, metadata) as
        given (before chunking): with "replace", a live document with the same text and metadata is skipped;
        keep_metadata: a replaced document keeps its stored metadata (none was given). merge: merge small tail
        segments (``MERGE_FACTOR``). encoder and sources: as in ``build``. report: receives the ids "added",
        "replaced" and "unchanged" once the write is committed (or found to have nothing to write). pool_factor:
        None (documents pooled as the index records) or that same factor; another is refused
        (``check_pool_factor``)."""
        with self.transaction() as meta:
            check_pool_factor(self.path, meta, pool_factor)
            embedded = encoder is not None  # precomputed embeddings (``add_embeddings``), not the model over texts
            encoder = pooled(self.model if encoder is None else encoder, meta.pool_factor)
            n, gen = meta.counts.documents, meta.generation
            with DocStore(self.path / meta.docstore) as ds:
                given = list(dict.fromkeys(rows.ids))
                clash = ds.pids_of(given, n, gen)
                if clash and on_conflict == "error":
                    raise InvalidArgument(f"ids already in the index: {sorted(clash)[:10]} (pass "
                                          f"on_conflict='replace' or use upsert to replace them)")
                present = set(clash)
                if clash and (documents is not None or keep_metadata):
                    rows, clash = _skip_unchanged(rows, clash, ds.rows_of(sorted(clash), n, gen), documents or {},
                                                  keep_metadata)
                done = {"added": [i for i in given if i not in present], "replaced": [i for i in given if i in clash],
                        "unchanged": [i for i in given if i in present and i not in clash]}
                if not rows.ids:
                    if report is not None:
                        report.update(done)
                    return  # every document given is already there as given: nothing to write
                codec = self.reader.codec_for(meta)  # the committed codec, whatever this handle saw before
                with SegmentWriter(self.path, codec) as writer:
                    encode_and_compress(encoder, codec, rows.texts if sources is None else sources, writer, None,
                                        batch_size, 4096, show_progress, StageTimes(), desc="adding",
                                        unit=rows_unit(rows))
                    seg = writer.finish()
                replaced = sorted(p for ps in clash.values() for p in ps)
                if replaced:
                    ds.mark_deleted(np.array(replaced, dtype=np.int64), gen + 1)
                ds.insert(n, rows.ids, rows.texts, rows.metadatas, rows.spans)
                ds.lexical_advance(n, n + len(rows.texts))  # uncommitted rows reach no reader's BM25 statistics
                ds.checkpoint()
            c, added = meta.counts, len(rows.texts)
            if embedded and meta.provenance.get("source") != "embeddings":  # see ``texts_encodable``
                meta = dataclasses.replace(meta, provenance={**meta.provenance, EMBEDDINGS_ADDED: True})
            self.commit(dataclasses.replace(
                meta, generation=gen + 1,
                segments=self._merge_tail(meta.segments + (seg,), codec) if merge else meta.segments + (seg,),
                counts=Counts(c.documents + added, c.deleted + len(replaced), c.live + added - len(replaced),
                              c.embeddings + seg.num_embeddings),
                codec=dataclasses.replace(meta.codec,
                                          embeddings_added=meta.codec.embeddings_added + seg.num_embeddings)))
        if report is not None:
            report.update(done)

    def delete(self, ids: Optional[list], where: Optional[tuple]) -> int:
        """Delete the documents with these ids, or matching the compiled filter ``where``, or both."""
        with self.transaction() as meta:
            n, gen = meta.counts.documents, meta.generation
            with DocStore(self.path / meta.docstore) as ds:
                chosen = None
                if ids is not None:
                    chosen = {p for ps in ds.pids_of(ids, n, gen).values() for p in ps}
                if where is not None:
                    matching = set(ds.filter_pids(where, n, gen).tolist())
                    chosen = matching if chosen is None else chosen & matching
                pids = np.array(sorted(chosen), dtype=np.int64)
                if len(pids) == 0:
                    return 0
                ds.mark_deleted(pids, gen + 1)
                ds.checkpoint()
            c = meta.counts
            self.commit(dataclasses.replace(meta, generation=gen + 1,
                                            counts=Counts(c.documents, c.deleted + len(pids), c.live - len(pids),
                                                          c.embeddings)))
        return len(pids)

    def add_lexical(self) -> None:
        with self.transaction() as meta:
            with DocStore(self.path / meta.docstore) as ds:
                if ds.has_lexical():
                    return
                ds.add_lexical(meta.counts.documents)
                ds.checkpoint()
            self.commit(dataclasses.replace(meta, generation=meta.generation + 1))
