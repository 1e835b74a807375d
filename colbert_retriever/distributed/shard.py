"""One shard's process (a Ray actor made by ``ShardedIndex`` and ``build_sharded``): an ``Index`` over its folder,
searched with query embeddings the driver encoded, written with documents routed to it.

Every call answers ``(generation, payload)``: the shard generation it read or committed, which the driver checks
against the manifest (one generation per search). Searching needs no encoder: the shard opens its index with the
recorded model (identity and encoder config, no weights) and loads the real model only for its first write of
texts. A shard that no document was routed to yet has no folder: it answers empty results at generation 0 and
creates its index, with the shared codec, on its first write.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import IndexFormatError
from ..hits import Record
from ..index import Index
from ..indexing import writer
from ..indexing.external import GivenEmbeddings
from ..indexing.ingest import Rows
from ..model.cache import load_model
from ..search import parallel
from ..store import lexical_stats, storage
from ..store.filters import compile_filter
from . import chunks, local
from .manifest import BUILD_STATE, MANIFEST, RecordedModel, codec_config, load_codec

_TERMS_CACHE = 64  # queries whose lexical evidence is kept between a search's statistics round and its scoring


class ShardServer:
    def __init__(self, path: str, root: str, model: dict, codec: dict, lexical: bool, threads: Optional[int] = 1,
                 lock_timeout: float = 60.0):
        if threads:
            torch.set_num_threads(threads)  # this actor's own process
        self.path, self.root = Path(path), Path(root)
        self.recorded = RecordedModel(model)
        self.codec_entry, self.lexical, self.threads, self.lock_timeout = codec, lexical, threads, lock_timeout
        self._index: Optional[Index] = None
        self._encoder = None
        self._terms: dict = {}
        if storage.holds_our_index(self.path):
            self._index = Index.open(self.path, model=self.recorded.reader(), lock_timeout=lock_timeout)

    # ---------------------------------------------------------------- state
    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The Ray node this shard runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def _snap(self):
        if self._index is None:
            if storage.holds_our_index(self.path):  # created by another process since
                self._index = Index.open(self.path, model=self.recorded.reader(), lock_timeout=self.lock_timeout)
            else:
                return None
        return self._index.snapshot()

    def _gen(self) -> int:
        snap = self._snap()
        return 0 if snap is None else snap.meta.generation

    def _state(self, result=None) -> tuple:
        snap = self._snap()
        if snap is None:
            return 0, 0, result
        return snap.meta.generation, snap.live_docs, result

    def count(self) -> tuple:
        gen, live, _ = self._state()
        return gen, live

    def _run(self, fn, empty):
        """``fn(snapshot)`` on one generation (a newer one if the lexical side moved on while reading);
        ``empty`` where the shard has no index yet."""
        if self._snap() is None:
            return 0, empty
        result = {}

        def call(snap):
            result["gen"] = snap.meta.generation
            return fn(snap)

        with parallel.search_threads(self.threads):
            out = local.snapshot_call(self._index, call)
        return result["gen"], out

    # ---------------------------------------------------------------- search rounds
    def colbert_hits(self, Q: list, req, trace: bool) -> tuple:
        """(hits per query, traces, seconds this shard spent on them)."""
        traces = [] if trace else None
        t0 = time.perf_counter()
        gen, hits = self._run(lambda s: local.colbert_hits(s, Q, req, self.recorded.precision, traces),
                              [[] for _ in Q])
        return gen, (hits, traces or [], time.perf_counter() - t0)

    def colbert_rows(self, Q: list, req, depth: int, trace: bool) -> tuple:
        traces = [] if trace else None
        gen, rows = self._run(lambda s: local.colbert_rows(s, Q, req, depth, self.recorded.precision, traces),
                              [[] for _ in Q])
        return gen, (rows, traces or [])

    def _terms_of(self, snap, queries, req):
        local.check_lexical(snap, req)
        gen = snap.meta.generation
        missing = [q for q in dict.fromkeys(queries) if (gen, q) not in self._terms]
        for q, t in zip(missing, local.lexical_terms(snap, missing)):
            if len(self._terms) >= _TERMS_CACHE:
                self._terms.pop(next(iter(self._terms)))
            self._terms[(gen, q)] = t
        return [self._terms[(gen, q)] for q in queries]

    def lexical_statistics(self, queries: Sequence[str], req) -> tuple:
        """Per query (rows, tokens, hits per phrase) of this shard: the driver sums them over the shards."""
        empty = [(0, 0, [0] * len(lexical_stats.phrases(q))) for q in queries]
        return self._run(lambda s: [t.statistics() for t in self._terms_of(s, queries, req)], empty)

    def lexical_rows(self, queries: Sequence[str], statistics: Sequence[tuple], limit: int, req) -> tuple:
        return self._run(lambda s: local.lexical_rows(s, self._terms_of(s, queries, req), statistics, limit, req),
                         [[] for _ in queries])

    def rerank_rows(self, Q: list, rows: Sequence[Sequence[int]], k: int, kernels: str) -> tuple:
        return self._run(lambda s: local.rerank_rows(s, Q, rows, k, kernels), [[] for _ in Q])

    def fetch(self, rows: Sequence[int]) -> tuple:
        return self._run(lambda s: local.fetch(s, rows), {})

    # ---------------------------------------------------------------- reads by id
    def present(self, ids: Sequence[str]) -> tuple:
        def fn(s):
            return sorted(s.docstore.pids_of(list(ids), s.meta.counts.documents, s.meta.generation))
        return self._run(fn, [])

    def get(self, ids: Sequence[str]) -> tuple:
        def fn(s):
            rows = s.docstore.rows_of(list(ids), s.meta.counts.documents, s.meta.generation)
            return [Record(i, *rows[i]) for i in dict.fromkeys(ids) if i in rows]
        return self._run(fn, [])

    def ids(self, filter: Optional[dict]) -> tuple:
        where = compile_filter(filter) if filter is not None else None
        return self._run(lambda s: s.docstore.live_ids(s.meta.counts.documents, s.meta.generation, where), [])

    def has_lexical(self) -> tuple:
        return self._run(lambda s: s.docstore.has_lexical(), self.lexical)

    # ---------------------------------------------------------------- writes
    def _codec(self) -> tuple:
        """The shared codec and its config, from the manifest's entry (a writer started before the codec was
        trained reads it from ``build.json``, or the manifest, when it first needs it)."""
        if self.codec_entry is None:
            for name in (BUILD_STATE, MANIFEST):
                if (self.root / name).exists():
                    self.codec_entry = json.loads((self.root / name).read_text())["codec"]
                    break
            else:
                raise IndexFormatError(f"{self.root} names no codec yet (neither {BUILD_STATE} nor {MANIFEST})")
        return load_codec(self.root, self.codec_entry), codec_config(self.codec_entry)

    def _text_index(self) -> Index:
        """The index opened with the real model (loaded once, on the first write of texts)."""
        if self._encoder is None:
            r = self.recorded
            self._encoder = load_model(r.name, dtype=r.precision.documents).with_config(r.config)
            if self._snap() is not None:
                self._index = Index.open(self.path, model=self._encoder, lock_timeout=self.lock_timeout)
        return self._index

    def add(self, texts: list, ids: list, metadatas: Optional[list], truncate: str, batch_size: int,
            merge: bool) -> tuple:
        """Add or replace (unchanged documents skipped) texts routed to this shard."""
        index = self._text_index()
        if index is None:
            codec, config = self._codec()
            self._index = Index.build(self.path, texts, ids=ids, metadatas=metadatas, model=self._encoder,
                                      codec=codec, codec_config=config, if_exists="error",
                                      truncate=truncate, lexical=self.lexical, batch_size=batch_size,
                                      show_progress=False, lock_timeout=self.lock_timeout,
                                      pool_factor=1)  # sharded indexes are not pooled (as _write_rows' shards)
        else:
            index.add(texts, ids, metadatas, on_conflict="replace", truncate=truncate, batch_size=batch_size,
                      merge=merge)
        return self._state(ids)

    def append_encoded(self, chunk: dict, skip_unchanged: bool = True) -> tuple:
        """Write documents encoded elsewhere (``chunks``): new ids added, known ones replaced (unchanged ones
        skipped), a repeated id's last copy kept. Answers the number of documents written."""
        docs, normalize = chunks.decode(chunk, self.recorded.config.dim)
        snap = self._snap()
        if snap is not None and skip_unchanged:
            stored = snap.docstore.rows_of(list(docs), snap.meta.counts.documents, snap.meta.generation)
            docs = {i: d for i, d in docs.items() if stored.get(i) != (d[0], d[1])}
        if docs:
            rows, embs = chunks.to_rows(docs)
            self._write_rows(rows, GivenEmbeddings(embs, self.recorded.config.dim, normalize=normalize))
        return self._state(len(docs))

    def _write_rows(self, rows: Rows, encoder: GivenEmbeddings) -> None:
        n = len(rows.ids)
        if self._snap() is None:
            codec, config = self._codec()
            writer.build(self.path, rows, self.recorded.writer(), config, batch_size=256, chunk_docs=1024,
                         show_progress=False, overwrite=False, provenance={"source": "sharded"}, codec=codec,
                         lock_timeout=self.lock_timeout, lexical=self.lexical, encoder=encoder, sources=range(n))
            self._snap()
        else:
            self._index._writer.add(rows, "replace", 256, False, True, keep_metadata=False, encoder=encoder,
                                    sources=range(n))

    def add_embeddings(self, embeddings: list, ids: list, metadatas: Optional[list], texts: Optional[list]) -> tuple:
        dim = self.recorded.config.dim
        metas = metadatas or [{} for _ in ids]
        rows = Rows(list(ids), list(texts) if texts is not None else [""] * len(ids), metas)
        if self._snap() is not None and metadatas is None:  # a replaced document keeps its metadata
            s = self._index.snapshot()
            stored = s.docstore.rows_of(list(ids), s.meta.counts.documents, s.meta.generation)
            rows.metadatas = [stored[i][1] if i in stored else {} for i in ids]
        self._write_rows(rows, GivenEmbeddings(embeddings, dim, normalize=True))
        return self._state(list(ids))

    def delete(self, ids: Optional[list], filter: Optional[dict]) -> tuple:
        if self._snap() is None:
            return self._state(0)
        return self._state(self._index.delete(ids, filter=filter))

    def compact(self, reencode: Optional[bool], show_progress: bool = False) -> tuple:
        """Drop deleted documents; the shared codec is kept (re-training it for one shard would make its scores
        incomparable with the others')."""
        if self._snap() is None:
            return self._state()
        self._index.compact(recluster=False, reencode=reencode, show_progress=show_progress)
        return self._state()

    def add_lexical(self) -> tuple:
        self.lexical = True
        if self._snap() is not None:
            self._index.add_lexical()
        return self._state()

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
