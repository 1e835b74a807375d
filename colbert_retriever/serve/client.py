"""``RemoteIndex``: the ``Index`` surface over HTTP, for a server started with ``colbert-retriever serve`` (or
``colbert_retriever.serve.start``). Standard library only (no Ray, no framework): ``search`` returns ``Hit``s,
``get`` ``Record``s, and the server's errors are raised as the library's exceptions with its one-line message.
The adapters take the server's URL where they take an index folder."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any, Optional, Sequence, Union

from .. import errors
from ..hits import Hit, Record


class ServerError(errors.ColbertRetrieverError, ConnectionError):
    """The server could not be reached, or answered with something that is not this API."""


def is_url(value: Any) -> bool:
    """Whether an ``index_path``-like argument is a server's URL (http:// or https://)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def open_index(path: Any, model=None, device=None):
    """What an adapter's ``index_path`` names: a server's URL (``RemoteIndex``), a sharded index's folder
    (``ShardedIndex``, extra ``[distributed]``) or an index folder (``Index.open``)."""
    if is_url(path):
        return RemoteIndex(path)
    from pathlib import Path

    if (Path(path) / "shards.json").exists():
        from ..distributed import ShardedIndex

        return ShardedIndex.open(path, model=model)
    from ..index import Index

    return Index.open(path, model=model, device=device)


def is_index(obj: Any) -> bool:
    """Whether ``obj`` has the ``Index`` surface: an ``Index``, a ``ShardedIndex`` or a ``RemoteIndex``."""
    from ..index import Index

    if isinstance(obj, (Index, RemoteIndex)):
        return True
    from ..distributed.sharded import ShardedIndex

    return isinstance(obj, ShardedIndex)


def _raise(status: int, payload: Any, url: str):
    if isinstance(payload, dict) and "error" in payload:
        cls = getattr(errors, str(payload.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.ColbertRetrieverError)):
            cls = errors.InvalidArgument if 400 <= status < 500 else ServerError
        raise cls(payload["error"])
    raise ServerError(f"{url} answered HTTP {status}: {str(payload)[:200]}")


class RemoteIndex:
    """An index served over HTTP. ``url``: the server's address (``http://127.0.0.1:8000``); ``timeout``: seconds
    a call waits. Thread-safe (one keep-alive connection per thread)."""

    def __init__(self, url: str, timeout: float = 60.0):
        if not is_url(url):
            raise errors.InvalidArgument(f"url must start with http:// or https://, got {url!r}")
        self.path = self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, parts.port
        self._prefix = parts.path
        self.timeout = float(timeout)
        self._local = threading.local()
        self.model = None  # queries are encoded by the server

    # ---------------------------------------------------------------- transport
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.timeout)
        return conn

    def _request(self, method: str, route: str, body: Optional[dict] = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        while True:
            reused = getattr(self._local, "conn", None) is not None
            conn = self._conn()
            try:
                conn.request(method, self._prefix + route, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                if not reused:  # a kept-alive connection the server had closed is tried again, once, anew
                    raise ServerError(f"cannot reach the colbert-retriever server at {self.url}: {e}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw[:200].decode("utf-8", "replace")
        if resp.status >= 400:
            _raise(resp.status, payload, self.url)
        return payload

    # ---------------------------------------------------------------- the Index surface
    def health(self) -> dict:
        return self._request("GET", "/health")

    def __len__(self) -> int:
        return int(self.health()["documents"])

    @property
    def generation(self) -> int:
        return int(self.health()["generation"])

    @property
    def needs_recluster(self) -> bool:
        return False

    @property
    def has_lexical(self) -> bool:
        return bool(self.health().get("lexical"))

    def add_lexical(self) -> None:
        raise errors.InvalidArgument(f"the index served at {self.url} has no lexical (BM25) side; give it one "
                                     f"where it is stored (`colbert-retriever lexical INDEX`) and restart the server")

    def search(self, queries: Union[str, Sequence[str]], k: int = 10, **params) -> Union[list[Hit], list[list[Hit]]]:
        """``Index.search`` on the server (same keyword arguments but ``kernels``/``threads``/``trace``)."""
        single = isinstance(queries, str)
        body = {"query": queries} if single else {"queries": list(queries)}
        body.update(k=k, **params)
        out = self._request("POST", "/search", body)
        if single:
            return [Hit(**h) for h in out["hits"]]
        return [[Hit(**h) for h in hits] for hits in out["results"]]

    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None,
            metadatas: Optional[Sequence[dict]] = None, *, on_conflict: str = "error", truncate: str = "chunk",
            **ignored) -> list[str]:
        """``Index.add`` on the server (``batch_size``, ``show_progress``, ``merge`` are the server's)."""
        body = {"texts": _list(texts), "ids": _list(ids), "metadatas": _list(metadatas), "on_conflict": on_conflict,
                "truncate": truncate}
        return self._request("POST", "/add", body)["ids"]

    def upsert(self, texts: Sequence[str], ids: Sequence[str], metadatas: Optional[Sequence[dict]] = None, *,
               truncate: str = "chunk", **ignored) -> list[str]:
        body = {"texts": _list(texts), "ids": _list(ids), "metadatas": _list(metadatas), "truncate": truncate}
        return self._request("POST", "/upsert", body)["ids"]

    def delete(self, ids: Union[str, Sequence[str], None] = None, *, filter: Optional[dict] = None) -> int:
        return self._request("POST", "/delete", {"ids": _list(ids), "filter": filter})["deleted"]

    def get(self, ids: Union[str, Sequence[str]]) -> list[Record]:
        return [Record(**d) for d in self._request("POST", "/get", {"ids": _list(ids)})["documents"]]

    def ids(self, filter: Optional[dict] = None) -> list[str]:
        return self._request("POST", "/ids", {"filter": filter})["ids"]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RemoteIndex({self.url!r})"


def _list(x):
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return list(x)
