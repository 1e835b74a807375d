"""``Index``: build, open, search, add, delete, compact. The public facade: each verb validates its arguments
once and delegates — reading to ``reader``, writing to ``writer`` and ``compaction``, searching to ``retrieval``
(which calls ``plaid``).

Concurrency contract (tested in tests/test_concurrency.py): any number of reader threads and processes; one writer
at a time per index folder (``.lock``; another writer, thread or process, waits up to ``lock_timeout`` seconds,
then gets ``IndexLockedError``). A search works on one committed generation from start to end (a snapshot: arrays,
document store connection, deletion mask) and picks up a newer generation on its next call. Every write starts from
the generation committed on disk (metadata, codec, document store), never from a handle's memory.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from . import _validate
from .codec.residual import ResidualCodec, code_dtype
from .config import CodecConfig, EncoderConfig, SearchConfig
from .device import resolve_device
from .errors import IncompatibleModelError, InvalidArgument, InvalidType
from .hits import Hit, Record
from .indexing import compaction, embedded, writer
from .indexing.external import EmbeddingsOnly
from .kernels import dispatch
from .indexing.ingest import ON_CONFLICT, TRUNCATE_MODES, check_mode, if_exists_mode, prepare_rows
from .indexing.pooling import check_factor
from .model.cache import load_model
from .model.encoder import ColBERT
from .search import parallel, retrieval
from .search.fusion import DEFAULT_FUSION
from .search.reader import Reader, Snapshot, check_model_matches
from .store import storage
from .store.docstore import StaleSnapshot
from .store.filters import compile_filter

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 60.0
_STALE_RETRIES = 3


def _check_model(model: Any) -> None:
    if not isinstance(model, (ColBERT, EmbeddingsOnly)):
        raise InvalidType(f"model must be a ColBERT (e.g. ColBERT.default() or ColBERT.from_pretrained(name)), got "
                          f"{type(model).__name__}")


def _check_verify(verify) -> None:
    if not (verify is True or verify is False or (isinstance(verify, str) and verify in ("auto", "deep"))):
        raise InvalidArgument(f"verify must be True, False, 'auto' or 'deep', got {verify!r}")


class Index:
    """A compressed ColBERT index in one folder. Create with ``Index.build`` or ``Index.open``."""

    def __init__(self, path: Path, model: ColBERT, device=None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 verify: Union[bool, str] = "auto"):
        _check_model(model)
        _check_verify(verify)
        self.path = Path(path)
        self.model = model
        self.device = resolve_device(device) if device is not None else model.device
        self.lock_timeout = _validate.lock_timeout(lock_timeout)
        self.verify = verify
        self._reader = Reader(self.path, model, self.device, verify)
        self._writer = writer.Writer(self.path, model, self.lock_timeout, self._reader)
        self._reader.reload()
        self._warm_kernels()

    def _warm_kernels(self) -> None:
        """Import numba here and start loading (or compiling) the numba kernels this index's searches use, in a
        background thread (``dispatch.warm_numba``; ``COLBERT_RETRIEVER_WARM_KERNELS=0`` opts out): until they are
        ready the searches run the torch kernels, so no search waits for a compilation or an import."""
        if self.device.type == "cpu":
            codec = self._current().arrays.codec
            max_q = None if isinstance(self.model, EmbeddingsOnly) else self.model.config.query_maxlen
            dispatch.warm_numba(code_dtype(codec.num_centroids).name, max_q)

    # ================================================================ construction
    @classmethod
    def build(cls, path: Union[str, Path], texts: Sequence[str], ids: Optional[Sequence[str]] = None,
              metadatas: Optional[Sequence[dict]] = None, model: Optional[ColBERT] = None,
              nbits: Optional[int] = None, *, if_exists: str = "upsert", codec_config: Optional[CodecConfig] = None,
              batch_size: int = 32, chunk_docs: int = 1024, show_progress: Optional[bool] = None,
              overwrite: Optional[bool] = None, provenance: Optional[dict] = None,
              codec: Optional[ResidualCodec] = None, device=None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
              truncate: str = "chunk", lexical: bool = False, report: Optional[dict] = None,
              pool_factor: Optional[int] = None) -> "Index":
        """Encode, compress and write ``texts`` as an index at ``path``.

        ids: unique strings (default "0".."n-1": a re-run over the same texts gives the same ids); metadatas:
        JSON-serialisable dicts; model: a ``ColBERT``, a hub id, a checkpoint folder or "default" (the default;
        names are loaded once per process, see ``load_model``); truncate: texts longer than the model's
        ``doc_maxlen`` — "chunk" (the default: indexed as overlapping passages that fit, under the document's id:
        search returns the document once, with its best passage's score and text; ``get`` returns the whole
        text), "warn" (index their start; one warning states how many tokens were dropped) or "error" (refuse
        before writing); lexical: also build the BM25 side (SQLite FTS5 in the document store; for
        ``search(mode="bm25"|"hybrid"|"bm25_rerank")``); nbits: residual bits per dimension (1, 2 or 4; default
        ``codec_config.nbits``, else 2). ``codec``: an already trained ``ResidualCodec`` to use instead of
        training one (shards of one collection share it). show_progress: None (default) shows a bar only for
        more than 256 texts (passages). report: a dict that receives what the call did (see ``add``).
        pool_factor: merge each document's (each passage's) token embeddings into ceil(n / pool_factor) by
        hierarchical clustering before compression (``indexing.pooling``; queries are not pooled). None (the
        default): a new index (also one written with ``if_exists="overwrite"``) pools by
        ``pooling.DEFAULT_POOL_FACTOR`` = 2 (ceil(n / 2) vectors stored per passage of n tokens; its nDCG@10 is
        measured in BENCHMARKS.md "Token pooling"); an existing index this call upserts into keeps the factor it
        records (1 for one written before pooling existed). 1 turns pooling off. The factor is recorded in the
        index: later adds, upserts and compactions pool alike, and another factor is refused.

        if_exists — what a folder that already holds an index of ours means (the same rule in the CLI and both
        adapters' ``from_documents``): "upsert" (the default: the documents are added, those whose id is already
        there replaced and those unchanged skipped, nothing else is touched, so re-running the same ingestion
        leaves the index as one run left it), "overwrite" (a new index replaces the old one atomically: it stays
        readable until the new one is committed) or "error". A folder with files that are not ours is refused and
        nothing in it is touched. ``overwrite=True`` is the older spelling of ``if_exists="overwrite"``.
        """
        path = _validate.path_arg(path)
        if_exists = if_exists_mode(if_exists, overwrite)
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        given_metadatas = metadatas is not None
        metadatas = _validate.metadata_list(metadatas, len(texts))
        if codec_config is not None and not isinstance(codec_config, CodecConfig):
            raise InvalidType(f"codec_config must be a CodecConfig, got {type(codec_config).__name__}")
        if nbits is not None and codec_config is not None and nbits != codec_config.nbits:
            raise InvalidArgument(f"nbits={nbits} contradicts codec_config.nbits={codec_config.nbits}; give one")
        codec_config = codec_config or CodecConfig(nbits=2 if nbits is None else _validate.positive_int(nbits, "nbits"))
        _validate.flag(lexical, "lexical")
        lock_timeout = _validate.lock_timeout(lock_timeout)
        device = resolve_device(device) if device is not None else None
        model = load_model(model, device=device)
        check_mode("truncate", truncate, TRUNCATE_MODES)
        if pool_factor is not None:
            check_factor(pool_factor)
        if if_exists == "upsert" and storage.holds_our_index(path):
            return cls._upsert_into(path, texts, ids, metadatas if given_metadatas else None, model, codec_config,
                                    codec, device, lock_timeout, truncate, lexical, batch_size, show_progress,
                                    report, pool_factor)
        rows = prepare_rows(model, ids, texts, metadatas, truncate)
        writer.build(path, rows, model, codec_config, batch_size=batch_size, chunk_docs=chunk_docs,
                     show_progress=show_progress, overwrite=if_exists == "overwrite", provenance=provenance,
                     codec=codec, lock_timeout=lock_timeout, lexical=lexical, pool_factor=check_factor(pool_factor))
        if report is not None:
            report.update(added=list(ids), replaced=[], unchanged=[], rebuilt=True)
        return cls(path, model, device, lock_timeout=lock_timeout)

    @classmethod
    def _upsert_into(cls, path, texts, ids, metadatas, model, codec_config, codec, device, lock_timeout, truncate,
                     lexical, batch_size, show_progress, report, pool_factor) -> "Index":
        """``build`` over an existing index with ``if_exists="upsert"``."""
        index = cls.open(path, model=model, device=device, lock_timeout=lock_timeout)
        with index._reader.hold() as snap:  # one snapshot for every check (the writer takes its own)
            have = snap.meta.codec.config["nbits"]
            if have != codec_config.nbits or codec is not None:
                why = f"nbits={have}" if codec is None else "its own codec"
                raise InvalidArgument(f"the index at {path} already exists with {why}; pass if_exists='overwrite' "
                                      f"to rebuild it, or add to it with the settings it has")
            add_lexical = lexical and not snap.docstore.has_lexical()
            others = snap.live_docs - len(snap.docstore.pids_of(ids, snap.meta.counts.documents,
                                                                snap.meta.generation))
        if add_lexical:
            index.add_lexical()
        if others > 0:
            logger.warning("the index at %s already holds %d document(s) this call does not name; they stay "
                           "(if_exists='overwrite' replaces the whole index)", path, others)
        index.upsert(texts, ids, metadatas, truncate=truncate, batch_size=batch_size, show_progress=show_progress,
                     report=report, pool_factor=pool_factor)
        return index

    @classmethod
    def build_from_embeddings(cls, path: Union[str, Path], embeddings: Sequence, ids: Optional[Sequence[str]] = None,
                              metadatas: Optional[Sequence[dict]] = None, texts: Optional[Sequence[str]] = None, *,
                              model=None, name: Optional[str] = None, nbits: Optional[int] = None,
                              codec_config: Optional[CodecConfig] = None, if_exists: str = "upsert",
                              show_progress: Optional[bool] = None, device=None,
                              lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                              lexical: bool = False, pool_factor: Optional[int] = None,
                              codec: Optional[ResidualCodec] = None) -> "Index":
        """An index of precomputed multi-vector embeddings: ``embeddings[i]`` is document i's (tokens, dim)
        tensor or numpy array (any float dtype, any dim with dim x nbits a multiple of 8), from any encoder (a
        PyLate model, ColPali page embeddings, fast-plaid's inputs). ``embeddings`` may be any sequence with
        ``len`` and indexing: it is read a document at a time (a lazy reader keeps memory at one chunk). Rows are
        L2-normalised (scores are cosine MaxSim, as ColBERT's). ids, metadatas, if_exists as in ``build``;
        texts: optional, stored and returned as ``Hit.text`` (needed for ``lexical=True``). model: the
        ``ColBERT`` that made the embeddings, if one did (then ``search("text")`` works and the index records it);
        otherwise ``name`` labels the embeddings' origin and queries are embeddings (``search_embeddings``). Each
        document is checked as it is read (shape, dtype, finite values): a bad one stops the build, naming it,
        and nothing is committed. pool_factor: as in ``build`` (each document's rows pooled; None: 2 for a new
        index, an existing one keeps its own; 1: none). codec: as in ``build`` (an already trained codec, e.g.
        a sharded index's, instead of training one; a new index only)."""
        return embedded.build_from_embeddings(cls, path, embeddings, ids, metadatas, texts, model=model, name=name,
                                              nbits=nbits, codec_config=codec_config, if_exists=if_exists,
                                              show_progress=show_progress, device=device, lock_timeout=lock_timeout,
                                              lexical=lexical, pool_factor=pool_factor, codec=codec)

    def add_embeddings(self, embeddings: Sequence, ids: Optional[Sequence[str]] = None,
                       metadatas: Optional[Sequence[dict]] = None, texts: Optional[Sequence[str]] = None, *,
                       on_conflict: str = "error", show_progress: bool = False, merge: bool = True,
                       pool_factor: Optional[int] = None) -> list[str]:
        """``add`` for precomputed embeddings (see ``build_from_embeddings``); their dim must be the index's."""
        return embedded.add_embeddings(self, embeddings, ids, metadatas, texts, on_conflict=on_conflict,
                                       show_progress=show_progress, merge=merge, pool_factor=pool_factor)

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[ColBERT] = None, device=None, *,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, verify: Union[bool, str] = "auto") -> "Index":
        """Open an index; the model is restored from the index's metadata unless given (then it must match).

        device: where the index arrays live and search runs (default: the model's device). verify: check every
        file's crc32 on open (True), only the small files' (False: shapes and ranges are still checked),
        ``"auto"`` (all files up to ``reader.VERIFY_AUTO_BYTES`` in total), or ``"deep"`` (every crc32, plus
        SQLite's quick check of the document store and FTS5's integrity check of the lexical side against the
        rows each of its tables should hold, its shadow tables and triggers: reads everything; CLI ``info
        --check``). lock_timeout: seconds a write waits for another writer (>= 0). A read-only folder opens and
        searches."""
        path = _validate.path_arg(path)
        _check_verify(verify)
        device = resolve_device(device) if device is not None else None
        meta = storage.read_metadata(path)
        m = meta.model
        if model is None and m.get("kind") == "embeddings":  # built from embeddings, no model named
            model = EmbeddingsOnly(int(m["encoder_config"].get("dim", 0)), m["name"], m["identity"])
        elif model is None or isinstance(model, (str, os.PathLike)):
            try:
                # the index says how its documents were encoded (e.g. a doc_maxlen chosen at build time): a
                # view of the shared model with that config
                # ... and in which precision: documents added later are encoded as the index's were
                recorded = (meta.provenance.get("precision") or {}).get("documents", "auto")
                model = load_model(m["name"] if model is None else model, device=device, dtype=recorded).with_config(
                    EncoderConfig.from_dict(m["encoder_config"]))
            except Exception as e:
                if model is not None:
                    raise IncompatibleModelError(f"model {str(model)!r} cannot be loaded ({e})") from None
                raise IncompatibleModelError(
                    f"the index at {path} was built with model {m['name']!r}, which cannot be loaded here ({e}); "
                    f"pass model=<the checkpoint folder>"
                ) from None
        _check_model(model)
        check_model_matches(path, meta, model)
        return cls(path, model, device, lock_timeout=lock_timeout, verify=verify)

    # ================================================================ state
    def _current(self) -> Snapshot:
        """The newest committed generation (reloaded if a writer committed since the last call)."""
        return self._reader.current()

    def snapshot(self) -> Snapshot:
        """The generation this handle reads, read-only (``meta``; ``arrays``: the codec and inverted lists;
        ``docstore``), for benchmarks and tools that drive ``search.retrieval`` / the codec themselves. Refreshed
        when a writer committed since the last call; never modify it."""
        return self._current()

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
        return self._reader.snap is None

    def __len__(self) -> int:
        """Live documents (a document indexed as passages counts once)."""
        return self._current().live_docs

    def __repr__(self) -> str:
        snap = self._reader.snap
        if snap is None:
            return f"Index({str(self.path)!r}, closed)"
        return f"Index({str(self.path)!r}, live={snap.live_docs}, nbits={snap.arrays.codec.nbits})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release this handle's memory maps and close its document store connection (a search in flight in another
        thread finishes on its snapshot first; the connection closes when it is done). Afterwards this handle holds
        no file of the folder open. Later calls raise ``IndexClosedError``. Idempotent."""
        self._reader.close()

    # ================================================================ search
    def search(self, queries: Union[str, Sequence[str]], k: int = 10, *, filter: Optional[dict] = None,
               ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
               centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
               exhaustive: bool = False, mode: str = "colbert", fusion: str = DEFAULT_FUSION,
               depth: Optional[int] = None, alpha: float = 0.5, kernels: str = "auto",
               threads: Optional[int] = None, trace: Optional[list] = None) -> Union[list[Hit], list[list[Hit]]]:
        """Top-k documents for one query (list[Hit]) or several (list[list[Hit]]), best first.

        filter: metadata filter (see ``filters.compile_filter``); ids: restrict to these document ids.
        ncells, centroid_score_threshold, ndocs: PLAID knobs for this call only (defaults depend on k);
        exhaustive: decompress and score every allowed document (the reference); kernels, threads: how the
        stages run (see ``SearchConfig``); trace: a list that receives one ``plaid.SearchTrace`` per query (which
        stages ran and on how many documents).

        mode: "colbert" (PLAID over the token embeddings; exactly min(k, matching live documents) hits), "bm25"
        (the lexical side only: documents holding at least one query word, up to k), "hybrid" (both, each to
        ``depth`` documents, default max(k, 100), fused by ``fusion``: "normalized" (default: each side's scores
        min-max scaled to [0, 1], weighted ``alpha`` for ColBERT and ``1 - alpha`` for BM25 and summed: a fused
        score in [0, 1]) or "rrf" (reciprocal rank, constant 60, weighted the same way); exactly min(k, matching
        live documents) hits) or "bm25_rerank" (BM25's top ``depth``, re-scored with exact MaxSim over their
        stored embeddings). Filters and ids apply to both sides before fusion. The modes other than "colbert"
        need the lexical side (``lexical=True`` at build, or ``add_lexical()``). Hit.score is MaxSim, BM25 or the
        fused score; Hit.relevance is the same ranking on a 0..1 scale (see ``Hit``).
        """
        single = isinstance(queries, str)
        qs = _validate.texts_list(queries, "query" if single else "queries")
        config = SearchConfig(ncells, centroid_score_threshold, ndocs, exhaustive, kernels, threads)
        req = retrieval.Request.make(k, mode=mode, fusion=fusion, depth=depth, config=config, filter=filter, ids=ids,
                                     alpha=alpha)
        # one generation for the whole call (a closed index fails before encoding)
        with parallel.search_threads(threads), self._reader.hold() as snap:
            Q = None
            if mode != "bm25":
                Q = [q.to(self.device) for q in self.model._query_rows(qs)]  # real rows, float32
            for attempt in range(_STALE_RETRIES):
                try:
                    results = retrieval.run(snap, req, qs, Q, self.model.precision, trace)
                    break
                except StaleSnapshot:  # the lexical side moved past this generation while we read: a newer one
                    if attempt + 1 == _STALE_RETRIES:
                        raise
                    snap = self._current()
        return results[0] if single else results

    def search_embeddings(self, Q: torch.Tensor, k: int, *, filter: Optional[dict] = None,
                          ids: Optional[Sequence[str]] = None, config: SearchConfig = SearchConfig(),
                          trace: Optional[list] = None) -> list[list[Hit]]:
        """Search with query embeddings Q: (n, q_len, dim) float (zero rows are ignored), or a list of
        (q_len_i, dim) tensors. ColBERT mode; the knobs as ``search``'s, in ``config``."""
        req = retrieval.Request.make(k, config=config, filter=filter, ids=ids)
        rows = retrieval.query_rows(Q, self.model.config.dim, self.device)
        with parallel.search_threads(config.threads), self._reader.hold() as snap:
            return retrieval.run(snap, req, [], rows, self.model.precision, trace)

    # ================================================================ updates
    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None, metadatas: Optional[Sequence[dict]] = None,
            *, on_conflict: str = "error", truncate: str = "chunk", batch_size: int = 32,
            show_progress: bool = False, merge: bool = True, report: Optional[dict] = None,
            pool_factor: Optional[int] = None) -> list[str]:
        """Encode and append documents (existing centroids) as a new segment; small segments are merged
        (``writer.MERGE_FACTOR``), so the cost is about proportional to the new documents, not to the index.
        Atomic. Returns their ids (uuid4 hex when not given).

        on_conflict: what an id that is already live means — "error" (refuse the whole call, nothing written) or
        "replace" (an upsert: the old document, all its passages, is replaced in the same commit; a document whose
        text and metadata are unchanged is skipped, nothing re-encoded; without ``metadatas`` a replaced document
        keeps the metadata it had). truncate: as in ``build`` ("chunk" by default). merge: False keeps the new
        segment as it is (tests and benchmarks of many-segment indexes; ``compact`` merges everything). report: a
        dict that receives the ids this call "added", "replaced" and left "unchanged" (each a list, in order).
        pool_factor: None (pooled as the index records, whatever the library's default) or the index's factor;
        another is refused."""
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [uuid.uuid4().hex for _ in texts]
        keep_metadata = metadatas is None
        metadatas = _validate.metadata_list(metadatas, len(texts))
        check_mode("on_conflict", on_conflict, ON_CONFLICT)
        rows = prepare_rows(self.model, ids, texts, metadatas, truncate)
        self._writer.add(rows, on_conflict, batch_size, show_progress, _validate.flag(merge, "merge"),
                         documents=dict(zip(ids, zip(texts, metadatas))), keep_metadata=keep_metadata, report=report,
                         pool_factor=None if pool_factor is None else check_factor(pool_factor))
        return ids

    def upsert(self, texts: Sequence[str], ids: Sequence[str], metadatas: Optional[Sequence[dict]] = None,
               **kwargs) -> list[str]:
        """``add(..., on_conflict="replace")``: documents whose id is live are replaced (unchanged ones skipped;
        without ``metadatas`` they keep their metadata), the others added. Atomic."""
        if ids is None:
            raise InvalidArgument("upsert needs ids (which documents to replace)")
        return self.add(texts, ids, metadatas, on_conflict="replace", **kwargs)

    def get(self, ids: Union[str, Sequence[str]]) -> list[Record]:
        """The live documents with these ids, in the order given (ids not in the index are skipped)."""
        ids = _validate.id_selection(ids, "ids")
        with self._reader.hold() as snap:
            rows = snap.docstore.rows_of(ids, snap.meta.counts.documents, snap.meta.generation)
        return [Record(i, *rows[i]) for i in dict.fromkeys(ids) if i in rows]

    def ids(self, filter: Optional[dict] = None) -> list[str]:
        """Ids of the live documents (those matching ``filter`` if given), in the order they were added."""
        where = self._where(filter)
        with self._reader.hold() as snap:
            return snap.docstore.live_ids(snap.meta.counts.documents, snap.meta.generation, where)

    @staticmethod
    def _where(filter) -> Optional[tuple]:
        if filter is None:
            return None
        if not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        return compile_filter(filter)

    def delete(self, ids: Union[str, Sequence[str], None] = None, *, filter: Optional[dict] = None) -> int:
        """Delete documents by id (unknown ids are ignored), by metadata filter, or both (documents matching both).
        Atomic; gone from results at once. Returns the count."""
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (to delete everything, pass filter={})")
        if ids is not None:
            ids = _validate.id_selection(ids, "ids")
        return self._writer.delete(ids, self._where(filter))

    @property
    def has_lexical(self) -> bool:
        """Whether the index has its lexical (BM25) side."""
        with self._reader.hold() as snap:
            return snap.docstore.has_lexical()

    def add_lexical(self) -> None:
        """Give an existing index its lexical (BM25) side: every stored text (passage) is indexed by SQLite FTS5
        in the document store, in one transaction; later add/delete/compact keep it in step. Idempotent."""
        self._writer.add_lexical()

    @property
    def needs_recluster(self) -> bool:
        """True when the centroids were trained on fewer than 1 / (1 + ``compaction.RECLUSTER_RATIO``) of the
        embeddings added since (``compact()`` would then re-train them)."""
        return compaction.needs_recluster(self._current().meta.codec)

    def compact(self, *, recluster: Optional[bool] = None, reencode: Optional[bool] = None,
                show_progress: bool = False) -> None:
        """Rewrite the index without deleted documents, in one segment. Atomic.

        recluster: re-train the centroids; None (default) does when more than ``compaction.RECLUSTER_RATIO`` of
        the embeddings were added after the centroids were trained. reencode: when re-training, encode the stored
        texts again (exact: what a fresh build gives) instead of re-training on the decompressed embeddings (no
        encoder pass, but every re-training adds the old codec's error, which compounds when a collection grows
        from a few documents); None (default) re-encodes indexes under ``compaction.REENCODE_MAX_EMBEDDINGS``
        embeddings whose documents all came as text (documents given as embeddings are never re-encoded)."""
        if recluster is not None:
            _validate.flag(recluster, "recluster")
        if reencode is not None:
            _validate.flag(reencode, "reencode")
        compaction.compact(self._writer, recluster, reencode, show_progress)
