"""What a server replica holds: an ``Index`` or a ``ShardedIndex`` (a folder with ``shards.json``), and the batched
search: the queries of several requests encoded in one forward pass, each request then searched with its own
arguments (a bad request fails alone, never its batch). No HTTP here (``app`` is the HTTP side)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Optional

from .. import _validate
from .._version import __version__
from ..index import Index
from ..search.retrieval import SEARCH_MODES


def open_backend(path: Path, model: Optional[str] = None, threads: Optional[int] = None) -> "Backend":
    """The index at ``path``: sharded when the folder holds ``shards.json``, else an ``Index``."""
    from ..distributed import manifest as mf

    if (Path(path) / mf.MANIFEST).exists():
        from ..distributed import ShardedIndex

        return Backend(ShardedIndex.open(path, model=model), "sharded", threads)
    return Backend(Index.open(path, model=model), "index", threads)


class Backend:
    def __init__(self, index, kind: str, threads: Optional[int] = None):
        self.index, self.kind, self.threads = index, kind, threads
        self.batches = self.queries = 0
        self._lock = threading.Lock()

    def health(self) -> dict:
        with self._lock:
            batches, queries = self.batches, self.queries
        return {"status": "ok", "kind": self.kind, "documents": len(self.index), "generation": self.index.generation,
                "lexical": self.index.has_lexical, "model": getattr(self.index.model, "name", None),
                "batches": batches, "queries": queries, "version": __version__}

    def _search(self, queries: list[str], Q, params: dict):
        if self.kind == "sharded":
            return self.index.search_encoded(queries, Q, **params)
        from ..distributed.local import search_encoded

        return search_encoded(self.index, queries, Q, **params)

    def search_many(self, requests: list[tuple[Any, dict]]) -> list[Any]:
        """For each (queries, search arguments): its hit lists, or the error it raised. The queries of every
        request are encoded in one forward pass; requests with the same arguments are searched in one call (one
        snapshot; for a sharded index, one fan-out), each alone again if that call fails."""
        out: list[Any] = [None] * len(requests)
        texts, spans, groups, checked = [], {}, {}, {}
        for i, (queries, params) in enumerate(requests):
            try:
                queries = checked[i] = _validate.texts_list(queries, "queries")
                key = json.dumps(params, sort_keys=True)
            except Exception as e:
                out[i] = e
                continue
            if params.get("mode", "colbert") in SEARCH_MODES and params.get("mode") != "bm25":
                spans[i] = (len(texts), len(texts) + len(queries))
                texts += queries
            groups.setdefault(key, []).append(i)
        Q = self.index.model._query_rows(texts) if texts else None  # one pass for the batch (texts checked above)
        if texts:
            with self._lock:
                self.batches += 1
                self.queries += len(texts)

        def rows(i):
            return Q[spans[i][0] : spans[i][1]] if i in spans else None

        for members in groups.values():
            params = {**requests[members[0]][1], "threads": self.threads}
            if len(members) > 1:
                try:
                    queries = [q for i in members for q in checked[i]]
                    hits = self._search(queries, None if members[0] not in spans else
                                        [q for i in members for q in rows(i)], params)
                    for i in members:
                        n = len(checked[i])
                        out[i], hits = hits[:n], hits[n:]
                    continue
                except Exception:  # noqa: BLE001 - each request again, alone: the error is its own
                    pass
            for i in members:
                try:
                    out[i] = self._search(checked[i], rows(i), params)
                except Exception as e:  # this request's mistake (or failure) is its own
                    out[i] = e
        return out
