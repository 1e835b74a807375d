"""The HTTP API (FastAPI, served by Ray Serve): one deployment over an ``Index`` or a ``ShardedIndex``.

    GET  /health          status, documents, generation, kind, and the batches/queries encoded so far
    POST /search          {"query": str | "queries": [str], "k", "mode", "filter", "ids", "fusion", "depth",
                           "alpha", "ncells", "centroid_score_threshold", "ndocs", "exhaustive"}
                          -> {"hits": [...]} (or {"results": [[...], ...]} for "queries")
    POST /add, /upsert    {"texts", "ids", "metadatas", "on_conflict" (add), "truncate"} -> {"ids": [...]}
    POST /delete          {"ids" and/or "filter"} -> {"deleted": n}
    POST /get             {"ids"} -> {"documents": [{"id", "text", "metadata"}]}
    POST /ids             {"filter"} -> {"ids": [...]}
    GET  /openapi.json    this API's OpenAPI description (and /docs)

Concurrent searches are batched (``serve.batch``): the queries of every request waiting in a batch are encoded in
one forward pass, then each request is searched with its own arguments. A bad request gets a 4xx answer whose
``error`` is the library's one-line message (``type``: its exception class).
"""


import asyncio
import logging
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from .. import errors
from .._version import __version__
from .backend import open_backend

logger = logging.getLogger(__name__)
STATUS = {"InvalidArgument": 400, "InvalidType": 400, "IndexNotFoundError": 404, "IncompatibleModelError": 409,
          "IndexLockedError": 409, "IndexClosedError": 503, "ShardError": 503}
"""HTTP status of each library error (others: 500)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchBody(_Body):
    query: Optional[str] = Field(None, description="one query (the answer is {'hits': [...]})")
    queries: Optional[list[str]] = Field(None, description="several queries (the answer is {'results': [...]})")
    k: int = Field(10, description="hits per query")
    mode: str = Field("colbert", description="colbert, bm25, hybrid or bm25_rerank")
    filter: Optional[dict] = Field(None, description="metadata filter, e.g. {'year': {'$gte': 2020}}")
    ids: Optional[list[str]] = Field(None, description="search only these document ids")
    fusion: str = Field("normalized", description="hybrid fusion: normalized or rrf")
    depth: Optional[int] = Field(None, description="documents each side ranks before fusion (hybrid, bm25_rerank)")
    alpha: float = Field(0.5, description="hybrid: the ColBERT side's weight")
    ncells: Optional[int] = None
    centroid_score_threshold: Optional[float] = None
    ndocs: Optional[int] = None
    exhaustive: bool = False

    def params(self) -> dict:
        return self.model_dump(exclude={"query", "queries"})


class AddBody(_Body):
    texts: list[str]
    ids: Optional[list[str]] = None
    metadatas: Optional[list[dict]] = None
    on_conflict: str = Field("error", description="an id already there: error or replace")
    truncate: str = Field("chunk", description="texts longer than the model: chunk, warn or error")


class UpsertBody(_Body):
    texts: list[str]
    ids: list[str]
    metadatas: Optional[list[dict]] = None
    truncate: str = "chunk"


class DeleteBody(_Body):
    ids: Optional[list[str]] = None
    filter: Optional[dict] = None


class GetBody(_Body):
    ids: list[str]


class IdsBody(_Body):
    filter: Optional[dict] = None


def _hit(h) -> dict:
    return {"id": h.id, "score": h.score, "rank": h.rank, "text": h.text, "metadata": h.metadata,
            "passage": h.passage, "relevance": h.relevance}


def _error(e: BaseException) -> JSONResponse:
    name = type(e).__name__
    message = " ".join(str(e).split())
    return JSONResponse({"error": message, "type": name}, status_code=STATUS.get(name, 500))


api = FastAPI(title="colbert-retriever", version=__version__,
              description="ColBERT late-interaction search over one index or a sharded index.")


@api.exception_handler(errors.ColbertRetrieverError)
async def _library_error(request, e: errors.ColbertRetrieverError):
    return _error(e)


@api.exception_handler(RequestValidationError)
async def _bad_body(request, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return JSONResponse({"error": f"{where}: {first.get('msg')}" if where else first.get("msg"),
                         "type": "InvalidArgument"}, status_code=422)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class IndexServer:
    """One replica: the index opened once (its model through ``load_model``), searches batched."""

    def __init__(self, path: str, max_batch_size: int = 32, batch_wait_s: float = 0.005,
                 threads: Optional[int] = None, model: Optional[str] = None):
        self.backend = open_backend(Path(path), model=model, threads=threads)
        self._search_batch.set_max_batch_size(max_batch_size)
        self._search_batch.set_batch_wait_timeout_s(batch_wait_s)

    @api.get("/health")
    async def health(self) -> dict:
        return await asyncio.to_thread(self.backend.health)

    @api.post("/search")
    async def search(self, body: SearchBody) -> dict:
        if (body.query is None) == (body.queries is None):
            raise errors.InvalidArgument("give either 'query' (one text) or 'queries' (a list of texts)")
        result = await self._search_batch(body)
        if isinstance(result, BaseException):
            raise result
        if body.query is not None:
            return {"hits": [_hit(h) for h in result[0]]}
        return {"results": [[_hit(h) for h in hits] for hits in result]}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _search_batch(self, bodies: list[SearchBody]) -> list[Any]:
        requests = [([b.query] if b.query is not None else list(b.queries), b.params()) for b in bodies]
        return await asyncio.to_thread(self.backend.search_many, requests)

    @api.post("/add")
    async def add(self, body: AddBody) -> dict:
        ids = await asyncio.to_thread(self.backend.index.add, body.texts, body.ids, body.metadatas,
                                      on_conflict=body.on_conflict, truncate=body.truncate)
        return {"ids": ids}

    @api.post("/upsert")
    async def upsert(self, body: UpsertBody) -> dict:
        ids = await asyncio.to_thread(self.backend.index.upsert, body.texts, body.ids, body.metadatas,
                                      truncate=body.truncate)
        return {"ids": ids}

    @api.post("/delete")
    async def delete(self, body: DeleteBody) -> dict:
        n = await asyncio.to_thread(self.backend.index.delete, body.ids, filter=body.filter)
        return {"deleted": n}

    @api.post("/get")
    async def get(self, body: GetBody) -> dict:
        records = await asyncio.to_thread(self.backend.index.get, body.ids)
        return {"documents": [{"id": r.id, "text": r.text, "metadata": r.metadata} for r in records]}

    @api.post("/ids")
    async def ids(self, body: IdsBody) -> dict:
        return {"ids": await asyncio.to_thread(self.backend.index.ids, body.filter)}


def application(path: Union[str, Path], *, replicas: int = 1, max_batch_size: int = 32, batch_wait_ms: float = 5.0,
                threads: Optional[int] = None, model: Optional[str] = None):
    """The Serve application for the index at ``path`` (a folder of ``Index`` or ``ShardedIndex``)."""
    return IndexServer.options(num_replicas=replicas, max_ongoing_requests=max(64, 4 * max_batch_size)).bind(
        str(path), max_batch_size, batch_wait_ms / 1000.0, threads, model)
