"""``ShardedIndex``: the ``Index`` surface over a sharded index, one Ray actor per shard.

Reads: the driver encodes the queries once (``load_model``'s fast inference model), the shards search in parallel
and the driver merges (``modes``: exact in every mode, given one codec). Each call reads one manifest generation:
every shard's answer carries the generation it read, and an answer from another generation than the manifest's
(a write in progress elsewhere) makes the call start again on the newer manifest. A shard actor that dies is
restarted by Ray and its call retried (``max_restarts``); one that cannot answer fails the call with a
``ShardError`` naming it, never a silently smaller answer.

Writes: routed by the hash of the id (``routing``): an id lives in one shard only. A write holds the folder's lock,
writes the shards (each atomically), then the manifest's next generation (the commit point). Shards a killed
writer left ahead of the manifest are recorded by the next reader that meets them (each commit is whole).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .. import _validate
from ..config import SearchConfig
from ..errors import IndexClosedError, InvalidArgument, InvalidType
from ..hits import Hit, Record
from ..indexing.external import as_matrix, check_collection
from ..indexing.ingest import ON_CONFLICT, TRUNCATE_MODES, check_mode
from ..search.fusion import DEFAULT_FUSION
from ..search.retrieval import Request, query_rows
from ..store import storage
from . import manifest as mf
from . import modes, routing
from .cluster import ShardError, ray_module, translate
from .shard import ShardServer

logger = logging.getLogger(__name__)
_ATTEMPTS = 4


class _Moved(Exception):
    """A shard answered from another generation than the manifest's."""


class ShardedIndex:
    """A sharded index (``build_sharded``): ``search`` (every mode), ``search_embeddings``, ``add``/``upsert``/
    ``add_embeddings``/``delete``, ``get``, ``ids``, ``len``, ``compact``, as ``Index``. Open with
    ``ShardedIndex.open``."""

    def __init__(self, root: Path, model, *, threads_per_shard: Optional[int] = 1,
                 num_cpus_per_shard: Optional[float] = None, max_restarts: int = 3, timeout_s: float = 300.0,
                 lock_timeout: float = 60.0):
        self.path = Path(root)
        self.model = model
        self.device = model.device if getattr(model, "device", None) is not None else None
        self._threads, self._num_cpus = threads_per_shard, num_cpus_per_shard
        self._max_restarts = _validate.positive_int(max_restarts + 1, "max_restarts + 1") - 1
        self._timeout, self.lock_timeout = float(timeout_s), _validate.lock_timeout(lock_timeout)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _writing in the thread holding _lock
        self._actors: Optional[dict] = {}
        self._manifest = mf.read(self.path)
        self._stamp = mf.stamp(self.path)
        for s in self._manifest.shards:
            self._actor(s.name)

    @classmethod
    def open(cls, path: Union[str, Path], model=None, *, threads_per_shard: Optional[int] = 1,
             num_cpus_per_shard: Optional[float] = None, max_restarts: int = 3, timeout_s: float = 300.0,
             lock_timeout: float = 60.0) -> "ShardedIndex":
        """Open a sharded index and start one Ray actor per shard (on the cluster ``ray.init`` connected to, else
        a local one). model: the driver's query encoder (default: the manifest's model through ``load_model``;
        a given one must be the same weights). threads_per_shard: each shard's search threads;
        num_cpus_per_shard: the CPUs Ray reserves for each shard actor (None: Ray's default for actors);
        max_restarts: how often Ray restarts a dead shard actor (its calls are retried); timeout_s: how long a
        call waits for a shard before failing with ``ShardError``."""
        root = _validate.path_arg(path)
        m = mf.read(root)
        return cls(root, mf.driver_model(root, m.model, model), threads_per_shard=threads_per_shard,
                   num_cpus_per_shard=num_cpus_per_shard, max_restarts=max_restarts, timeout_s=timeout_s,
                   lock_timeout=lock_timeout)

    # ---------------------------------------------------------------- the shards' actors
    def _actor(self, name: str):
        if self._actors is None:
            raise IndexClosedError(f"the sharded index at {self.path} was closed; open it again")
        if name not in self._actors:
            ray = ray_module()
            m = self._manifest
            opts = {"max_restarts": self._max_restarts, "max_task_retries": self._max_restarts,
                    "scheduling_strategy": "SPREAD"}
            if self._num_cpus is not None:
                opts["num_cpus"] = self._num_cpus
            self._actors[name] = ray.remote(ShardServer).options(**opts).remote(
                str(self.path / name), str(self.path), m.model, m.codec, m.lexical, self._threads,
                self.lock_timeout)
        return self._actors[name]

    def _gather(self, requests: list) -> list:
        """Run [(shard, method, args)] at once; each answer, or the error its failure is (``translate``)."""
        ray = ray_module()
        futures = [getattr(self._actor(n), method).remote(*args) for n, method, args in requests]
        out = []
        for (name, _, _), fut in zip(requests, futures):
            try:
                out.append(ray.get(fut, timeout=self._timeout))
            except ray.exceptions.RayError as e:
                out.append(translate(e, f"shard {name} of {self.path}"))
        return out

    def _call(self, requests: list, expect: Optional[dict] = None, raw: bool = False) -> list:
        """``_gather``'s payloads (``raw``: the whole answers), raising the first failure. ``expect``: shard -> the
        generation each answer must come from (else ``_Moved``)."""
        out = []
        for (name, _, _), answer in zip(requests, self._gather(requests)):
            if isinstance(answer, BaseException):
                raise answer
            if expect is not None and answer[0] != expect[name]:
                if answer[0] < expect[name]:
                    raise ShardError(f"shard {name} of {self.path} is at generation {answer[0]}, behind the "
                                     f"manifest's {expect[name]}: its folder was lost or replaced")
                raise _Moved(name)
            out.append(answer if raw else answer[1])
        return out

    # ---------------------------------------------------------------- generations
    def _current(self) -> mf.Manifest:
        with self._lock:
            if self._actors is None:
                raise IndexClosedError(f"the sharded index at {self.path} was closed; open it again")
            stamp = mf.stamp(self.path)
            if stamp != self._stamp:
                self._manifest, self._stamp = mf.read(self.path), stamp
            return self._manifest

    def _read(self, fn):
        """``fn(call)`` with every shard answering from the manifest's generation; started again on a newer
        manifest when a shard moved on (a write elsewhere), recording shards a killed writer left ahead."""
        for attempt in range(_ATTEMPTS):
            m = self._current()
            expect = m.generations()
            try:
                return fn(lambda requests: self._call(requests, expect), [s.name for s in m.shards])
            except _Moved as e:
                moved = str(e)
                if attempt + 1 < _ATTEMPTS:
                    self._settle()
        raise ShardError(f"shard {moved} of {self.path} kept changing generation during the call ({_ATTEMPTS} "
                         f"tries); another process is writing without end?")

    def _settle(self) -> None:
        """Wait for a writer in progress (the folder's lock), then record shards that are ahead of the manifest
        (a writer killed between its shards' commits)."""
        with contextlib.suppress(Exception), self._writing() as m:
            names = [s.name for s in m.shards]
            counts = self._call([(n, "count", ()) for n in names], raw=True)
            ahead = {n: c for n, c in zip(names, counts) if c[0] != m.generations()[n]}
            if ahead:
                logger.warning("recording shards %s of %s committed after the manifest (a killed writer?)",
                               sorted(ahead), self.path)
                self._commit(m, ahead)

    @contextlib.contextmanager
    def _writing(self):
        """One write: this handle's lock and the folder's, the manifest as committed on disk (re-entrant: a write
        inside a write keeps the outer one's lock)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._manifest
                finally:
                    self._depth -= 1
                return
            with storage.write_lock(self.path, self.lock_timeout):
                self._manifest, self._stamp = mf.read(self.path), mf.stamp(self.path)
                self._depth = 1
                try:
                    yield self._manifest
                finally:
                    self._depth = 0

    def _commit(self, m: mf.Manifest, updates: dict, **changes) -> None:
        new = m.advanced({n: (int(g), int(d)) for n, (g, d) in updates.items()}, **changes)
        mf.write(self.path, new)
        self._manifest, self._stamp = new, mf.stamp(self.path)

    def _write(self, requests: list, **changes) -> list:
        """Run write requests [(shard, method, args)] (each answers (generation, live documents, result)) and
        commit the next manifest generation with every shard that committed; the results in order, or the first
        failure (raised once the others are recorded)."""
        with self._writing() as m:
            answers = self._gather(requests)
            self._commit(m, {n: a[:2] for (n, _, _), a in zip(requests, answers) if not isinstance(a, BaseException)},
                         **changes)
        for a in answers:
            if isinstance(a, BaseException):
                raise a
        return [a[2] for a in answers]

    @property
    def generation(self) -> int:
        """The manifest generation this handle reads (refreshed when a writer committed since)."""
        return self._current().generation

    @property
    def metadata(self) -> dict:
        """A copy of the manifest (``shards.json``) of the generation last seen."""
        return json.loads(self._current().to_json())

    @property
    def num_shards(self) -> int:
        return self._current().num_shards

    def __len__(self) -> int:
        """Live documents over every shard (one generation)."""
        return self._read(lambda call, names: sum(call([(n, "count", ()) for n in names])))

    def __repr__(self) -> str:
        if self._actors is None:
            return f"ShardedIndex({str(self.path)!r}, closed)"
        return f"ShardedIndex({str(self.path)!r}, shards={self._manifest.num_shards})"

    # ---------------------------------------------------------------- search
    def search(self, queries: Union[str, Sequence[str]], k: int = 10, *, filter: Optional[dict] = None,
               ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
               centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
               exhaustive: bool = False, mode: str = "colbert", fusion: str = DEFAULT_FUSION,
               depth: Optional[int] = None, alpha: float = 0.5, kernels: str = "auto",
               threads: Optional[int] = None, trace: Optional[list] = None) -> Union[list[Hit], list[list[Hit]]]:
        """``Index.search`` over every shard (same arguments, same ``Hit`` fields, same modes); ``trace``
        receives each shard's ``SearchTrace`` per query (shard by shard)."""
        single = isinstance(queries, str)
        qs = _validate.texts_list(queries, "query" if single else "queries")
        config = SearchConfig(ncells, centroid_score_threshold, ndocs, exhaustive, kernels, threads)
        req = Request.make(k, mode=mode, fusion=fusion, depth=depth, config=config, filter=filter, ids=ids,
                           alpha=alpha)
        rows = None if mode == "bm25" else [q.cpu() for q in self.model._query_rows(qs)]
        out = self._read(lambda call, names: modes.run(call, names, qs, rows, req, trace))
        return out[0] if single else out

    def search_encoded(self, queries: Sequence[str], Q, k: int = 10, *, filter: Optional[dict] = None,
                       ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
                       centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
                       exhaustive: bool = False, mode: str = "colbert", fusion: str = DEFAULT_FUSION,
                       depth: Optional[int] = None, alpha: float = 0.5, kernels: str = "auto",
                       threads: Optional[int] = None, trace: Optional[list] = None) -> list[list[Hit]]:
        """``search`` with the queries already encoded (Q: ``model.encode_query_rows(queries)``, or
        ``encode_queries``'s padded tensor; None in BM25 mode)."""
        config = SearchConfig(ncells, centroid_score_threshold, ndocs, exhaustive, kernels, threads)
        req = Request.make(k, mode=mode, fusion=fusion, depth=depth, config=config, filter=filter, ids=ids,
                           alpha=alpha)
        rows = None if mode == "bm25" else query_rows(Q, self.model.config.dim, torch.device("cpu"))
        return self._read(lambda call, names: modes.run(call, names, list(queries), rows, req, trace))

    def search_embeddings(self, Q, k: int, *, filter: Optional[dict] = None, ids: Optional[Sequence[str]] = None,
                          config: SearchConfig = SearchConfig(), trace: Optional[list] = None) -> list[list[Hit]]:
        """``Index.search_embeddings`` over every shard: Q (n, q_len, dim) or a list of (q_len_i, dim)."""
        req = Request.make(k, config=config, filter=filter, ids=ids)
        rows = query_rows(Q, self.model.config.dim, torch.device("cpu"))
        return self._read(lambda call, names: modes.colbert(call, names, rows, req, trace))

    # ---------------------------------------------------------------- reads by id
    def get(self, ids: Union[str, Sequence[str]]) -> list[Record]:
        """The live documents with these ids, in the order given (ids not in the index are skipped)."""
        ids = _validate.id_selection(ids, "ids")

        def fn(call, names):
            groups = routing.split(ids, len(names))
            found = call([(names[s], "get", ([ids[p] for p in pos],)) for s, pos in groups.items()])
            return {r.id: r for part in found for r in part}

        records = self._read(fn)
        return [records[i] for i in dict.fromkeys(ids) if i in records]

    def ids(self, filter: Optional[dict] = None) -> list[str]:
        """Ids of the live documents (matching ``filter``), shard by shard, each in the order it was added."""
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        return self._read(lambda call, names: [i for part in call([(n, "ids", (filter,)) for n in names])
                                               for i in part])

    @property
    def has_lexical(self) -> bool:
        return self._read(lambda call, names: all(call([(n, "has_lexical", ()) for n in names])))

    @property
    def needs_recluster(self) -> bool:
        """Always False: a sharded index keeps the codec it was built with (see ``compact``)."""
        return False

    # ---------------------------------------------------------------- writes
    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None,
            metadatas: Optional[Sequence[dict]] = None, *, on_conflict: str = "error", truncate: str = "chunk",
            batch_size: int = 32, show_progress: bool = False, merge: bool = True) -> list[str]:
        """``Index.add``: each document goes to the shard its id hashes to (encoded there). on_conflict "error"
        refuses the whole call, nothing written, when an id is already live; "replace" upserts."""
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [uuid.uuid4().hex for _ in texts]
        keep_metadata = metadatas is None
        metadatas = _validate.metadata_list(metadatas, len(texts))
        check_mode("on_conflict", on_conflict, ON_CONFLICT)
        check_mode("truncate", truncate, TRUNCATE_MODES)
        batch_size = _validate.positive_int(batch_size, "batch_size")
        merge = _validate.flag(merge, "merge")
        self._routed("add", ids, on_conflict, lambda pos: (
            [texts[p] for p in pos], [ids[p] for p in pos], None if keep_metadata else [metadatas[p] for p in pos],
            truncate, batch_size, merge))
        return ids

    def _routed(self, method: str, ids: list, on_conflict: str, args_of) -> None:
        """Write each shard its part (``args_of(positions in ids)``); with ``on_conflict="error"`` the whole call
        is refused first, nothing written, when an id is already live in its shard."""
        names = [s.name for s in self._current().shards]
        groups = routing.split(ids, len(names))
        with self._writing():
            if on_conflict == "error":
                present = self._call([(names[s], "present", ([ids[p] for p in pos],)) for s, pos in groups.items()])
                clash = sorted(i for part in present for i in part)
                if clash:
                    raise InvalidArgument(f"ids already in the index: {clash[:10]} (pass on_conflict='replace' or "
                                          f"use upsert to replace them)")
            self._write([(names[s], method, args_of(pos)) for s, pos in groups.items()])

    def upsert(self, texts: Sequence[str], ids: Sequence[str], metadatas: Optional[Sequence[dict]] = None,
               **kwargs) -> list[str]:
        """``add(..., on_conflict="replace")``."""
        if ids is None:
            raise InvalidArgument("upsert needs ids (which documents to replace)")
        return self.add(texts, ids, metadatas, on_conflict="replace", **kwargs)

    def add_embeddings(self, embeddings: Sequence, ids: Optional[Sequence[str]] = None,
                       metadatas: Optional[Sequence[dict]] = None, texts: Optional[Sequence[str]] = None, *,
                       on_conflict: str = "error", show_progress: bool = False, merge: bool = True) -> list[str]:
        """``Index.add_embeddings``, routed by id."""
        dim = self.model.config.dim
        check_collection(embeddings, dim)
        n = len(embeddings)
        ids = _validate.ids_list(ids, n) if ids is not None else [uuid.uuid4().hex for _ in range(n)]
        metas = _validate.metadata_list(metadatas, n) if metadatas is not None else None
        texts = _validate.texts_list(texts, "texts") if texts is not None else None
        if texts is not None and len(texts) != n:
            raise InvalidArgument(f"texts has {len(texts)} entries but there are {n} documents' embeddings")
        check_mode("on_conflict", on_conflict, ON_CONFLICT)
        mats = [as_matrix(embeddings[i], i, dim).numpy() for i in range(n)]
        self._routed("add_embeddings", ids, on_conflict, lambda pos: (
            [mats[p] for p in pos], [ids[p] for p in pos], None if metas is None else [metas[p] for p in pos],
            None if texts is None else [texts[p] for p in pos]))
        return ids

    def delete(self, ids: Union[str, Sequence[str], None] = None, *, filter: Optional[dict] = None) -> int:
        """``Index.delete``: by id (one shard each), by metadata filter (every shard), or both."""
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (to delete everything, pass filter={})")
        if filter is not None and not isinstance(filter, dict):
            raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
        names = [s.name for s in self._current().shards]
        if ids is not None:
            ids = _validate.id_selection(ids, "ids")
            requests = [(names[s], "delete", ([ids[p] for p in pos], filter))
                        for s, pos in routing.split(ids, len(names)).items()]
        else:
            requests = [(n, "delete", (None, filter)) for n in names]
        return sum(self._write(requests))

    def compact(self, *, recluster: Optional[bool] = None, reencode: Optional[bool] = None,
                show_progress: bool = False) -> None:
        """Rewrite every shard without its deleted documents. The codec stays the one the shards share (each
        shard re-training its own would make their scores incomparable): ``recluster=True`` is refused (rebuild
        with ``build_sharded`` to re-train it for the whole collection)."""
        if recluster:
            raise InvalidArgument("a sharded index keeps the one codec its shards share; compact(recluster=True) "
                                  "is not supported (rebuild it with build_sharded to re-train the centroids)")
        self._write([(s.name, "compact", (reencode, show_progress)) for s in self._current().shards])

    def add_lexical(self) -> None:
        """Give every shard its lexical (BM25) side (and later shards too)."""
        self._write([(s.name, "add_lexical", ()) for s in self._current().shards], lexical=True)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the shard actors. Idempotent; later calls raise ``IndexClosedError``."""
        with self._lock:
            actors, self._actors = self._actors, None
        if actors:
            ray = ray_module()
            for a in actors.values():
                with contextlib.suppress(Exception):
                    ray.kill(a)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
