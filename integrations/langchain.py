"""LangChain adapters.

- ``ColBERTVectorStore`` (a ``VectorStore``): the LangChain idiom — ``from_documents``, ``add_documents`` (an
  existing id is replaced: upsert), ``delete``, ``get_by_ids``, ``similarity_search[_with_score|
  _with_relevance_scores]``, ``as_retriever(search_kwargs={"k", "filter", "score_threshold"})`` and their async
  twins (run in an executor: the event loop stays free). An empty store is valid: the index folder is created by
  the first add, and the centroids are re-trained as the collection grows (``Index.needs_recluster``).
- ``ColBERTRetriever`` (a ``BaseRetriever`` over an ``Index``) and ``ColBERTReranker`` (a
  ``BaseDocumentCompressor`` that reranks any retriever's documents with exact MaxSim).
- ``ColBERTTextSplitter``: splits text into passages that fit the model (its own tokens, with overlap).

    from colbert_retriever.integrations.langchain import ColBERTVectorStore
    store = ColBERTVectorStore.from_documents(docs, index_path="my_index")
    store.as_retriever(search_kwargs={"k": 5, "filter": {"source": "report.pdf"}}).invoke("late interaction?")

Long texts are never cut silently: a text longer than the model's ``doc_maxlen`` is indexed as overlapping
passages under its own id (``long_texts="split"``, the default: the index's ``truncate="chunk"``; a search returns
the document once, with its best passage as ``page_content``; ``get_by_ids`` returns the whole text; deleting or
replacing the id removes every passage), or refused (``"error"``), or indexed from its start with a warning that
counts the tokens dropped (``"truncate"``).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore
    from pydantic import ConfigDict, model_validator
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.langchain needs langchain-core: pip install 'colbert-retriever[langchain]'"
    ) from e

from colbert_retriever import ColBERT, Hit, Index, InvalidArgument, InvalidType, SearchConfig, load_model
from colbert_retriever import storage

logger = logging.getLogger(__name__)

__all__ = ["ColBERTVectorStore", "ColBERTRetriever", "ColBERTReranker", "ColBERTTextSplitter"]

SEARCH_KEYS = frozenset({"k", "filter", "score_threshold", "ids", "ncells", "centroid_score_threshold", "ndocs",
                         "exhaustive", "mode", "fusion", "depth"})
"""What ``search_kwargs`` (and keyword arguments to ``invoke``) may hold."""
LONG_TEXTS = {"split": "chunk", "error": "error", "truncate": "warn"}
"""The vector store's ``long_texts`` choices and the ``Index`` ``truncate`` mode each one uses."""
_PROGRESS_MIN_DOCS = 256


def _query_text(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidType(f"the query must be a string, got {type(query).__name__}; pass the question itself, e.g. "
                          f"retriever.invoke(question) or chain the retriever after itemgetter('question')")
    return query


def _check_search_kwargs(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - SEARCH_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown search argument(s) {unknown}; supported: {sorted(SEARCH_KEYS)}")
    return kwargs


def _relevance(hit_score: float, n_query_tokens: int) -> float:
    """MaxSim of L2-normalised vectors is a sum of cosines, one per query token: divided by the number of query
    tokens it is the mean best cosine, clipped to [0, 1]."""
    return min(1.0, max(0.0, hit_score / max(1, n_query_tokens)))


def _search_index(index: Index, query: str, k: int, params: dict) -> tuple[list[Hit], int]:
    """Search with LangChain's keyword arguments (``SEARCH_KEYS`` less k). Returns the hits and the number of
    query tokens (relevance = MaxSim / tokens); ``score_threshold`` keeps hits whose relevance reaches it
    (ColBERT mode only: hybrid and BM25 scores have no fixed scale)."""
    params = dict(params)
    threshold = params.pop("score_threshold", None)
    if params.get("mode", "colbert") != "colbert":
        if threshold is not None:
            raise InvalidArgument("score_threshold applies to mode='colbert' (MaxSim); hybrid and BM25 scores have no "
                                  "fixed scale")
        return index.search(query, k=k, **params), 1
    for key in ("mode", "fusion", "depth"):
        params.pop(key, None)
    Q = index.model.encode_queries([query])
    n_q = int((Q[0].abs().sum(-1) > 0).sum())
    cfg = SearchConfig(ncells=params.pop("ncells", None),
                       centroid_score_threshold=params.pop("centroid_score_threshold", None),
                       ndocs=params.pop("ndocs", None), exhaustive=params.pop("exhaustive", False))
    hits = index.search_embeddings(Q, k, config=cfg, **params)[0]
    if threshold is not None:
        hits = [h for h in hits if _relevance(h.score, n_q) >= threshold]
    return hits, n_q


class ColBERTTextSplitter:
    """Split texts into passages that fit a ColBERT model: windows of at most ``doc_maxlen`` of the model's own
    tokens (less its special tokens), overlapping by ``chunk_overlap`` tokens, ending at a sentence or line end
    where one is near. Works as a LangChain text splitter (``split_text``, ``split_documents``, and as a
    ``DocumentTransformer`` through ``transform_documents``); metadata are copied to every chunk."""

    def __init__(self, model: Union[ColBERT, str, None] = None, chunk_size: Optional[int] = None,
                 chunk_overlap: Optional[int] = None, add_start_index: bool = False):
        self.model = load_model(model)
        self.chunk_size, self.chunk_overlap, self.add_start_index = chunk_size, chunk_overlap, add_start_index

    def spans(self, text: str) -> list[tuple[int, int]]:
        return self.model.passage_spans(text, self.chunk_size, self.chunk_overlap)

    def split_text(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.spans(text)]

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        out = []
        for d in documents:
            for a, b in self.spans(d.page_content):
                meta = dict(d.metadata)
                if self.add_start_index:
                    meta["start_index"] = a
                out.append(Document(page_content=d.page_content[a:b], metadata=meta))
        return out

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> list[Document]:
        return self.split_documents(documents)


def _prepare(documents_or_texts, metadatas, ids, what: str):
    texts, metas = [], []
    for i, t in enumerate(documents_or_texts):
        if not isinstance(t, str):
            raise InvalidType(f"{what}[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise InvalidArgument(f"{what}[{i}] is empty: a document needs some text to be searchable")
        texts.append(t)
    if metadatas is None:
        metas = [{} for _ in texts]
    else:
        metas = [dict(m or {}) for m in metadatas]
        if len(metas) != len(texts):
            raise InvalidArgument(f"got {len(texts)} texts but {len(metas)} metadatas")
    if ids is None:
        ids = [None] * len(texts)
    ids = list(ids)
    if len(ids) != len(texts):
        raise InvalidArgument(f"got {len(texts)} texts but {len(ids)} ids")
    ids = [uuid.uuid4().hex if i is None else i for i in ids]
    return texts, metas, ids


class ColBERTVectorStore(VectorStore):
    """A LangChain ``VectorStore`` backed by a colbert-retriever index folder.

    index_path: the folder (created on the first add when it holds no index yet). model: a ``ColBERT``, a hub id,
    a checkpoint folder or "default" (loaded once per process). long_texts: "split" (default), "error" or
    "truncate" (see the module docstring). show_progress: None = a bar when one call adds over 256 texts.
    lexical: keep the BM25 side too, for ``similarity_search(..., mode="hybrid" | "bm25" | "bm25_rerank")``
    (``search_kwargs={"mode": "hybrid"}`` in a retriever). Scores are MaxSim (higher is better); relevance scores
    are MaxSim / query tokens, in [0, 1] (mode "colbert" only).
    """

    def __init__(self, index_path: Union[str, Path], model: Union[ColBERT, str, None] = None, *, nbits: int = 2,
                 long_texts: str = "split", show_progress: Optional[bool] = None, auto_recluster: bool = True,
                 lexical: bool = False):
        if long_texts not in LONG_TEXTS:
            raise InvalidArgument(f"long_texts must be one of {LONG_TEXTS}, got {long_texts!r}")
        self.path = Path(index_path)
        self.model = load_model(model)
        self.nbits, self.long_texts, self.show_progress = nbits, long_texts, show_progress
        self.auto_recluster, self.lexical = auto_recluster, lexical
        self._index: Optional[Index] = None
        if storage.holds_our_index(self.path):
            self._index = Index.open(self.path, model=self.model)
            self.model = self._index.model
            if lexical and not self._index.has_lexical:
                self._index.add_lexical()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Any = None, metadatas: Optional[list[dict]] = None, *,
                   ids: Optional[list[str]] = None, index_path: Union[str, Path, None] = None,
                   model: Union[ColBERT, str, None] = None, **kwargs: Any) -> "ColBERTVectorStore":
        """``embedding`` is not used (ColBERT encodes with its own model) and must be None."""
        if embedding is not None:
            raise InvalidArgument("ColBERTVectorStore encodes with its ColBERT model: pass model=..., not embedding")
        if index_path is None:
            raise InvalidArgument("from_texts needs index_path= (the index folder)")
        store = cls(index_path, model=model, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_documents(cls, documents: list[Document], embedding: Any = None, **kwargs: Any) -> "ColBERTVectorStore":
        """Index LangChain ``Document``s (ids from ``Document.id`` when set, else ``ids=``) into ``index_path``."""
        if "ids" not in kwargs and any(d.id for d in documents):
            kwargs["ids"] = [d.id for d in documents]
        return cls.from_texts([d.page_content for d in documents], embedding, [d.metadata for d in documents],
                              **kwargs)

    @property
    def index(self) -> Optional[Index]:
        """The ``Index`` (None while the store is empty and no index was created yet)."""
        return self._index

    @property
    def embeddings(self) -> None:
        return None

    # ---------------------------------------------------------------- writes
    def add_texts(self, texts: Iterable[str], metadatas: Optional[list[dict]] = None, *,
                  ids: Optional[list[str]] = None, **kwargs: Any) -> list[str]:
        """Add texts; a text whose id is already in the store replaces it (upsert). Returns one id per text."""
        if kwargs:
            raise InvalidArgument(f"unknown argument(s) {sorted(kwargs)}")
        texts, metas, ids = _prepare(list(texts), metadatas, ids, "texts")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("ids must be unique within one call")
        truncate = LONG_TEXTS[self.long_texts]
        progress = self.show_progress if self.show_progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        built = False
        if self._index is None:
            try:
                self._index = Index.build(self.path, texts, ids=ids, metadatas=metas, model=self.model,
                                          nbits=self.nbits, show_progress=progress, truncate=truncate,
                                          lexical=self.lexical)
                built = True
            except InvalidArgument:
                if not storage.holds_our_index(self.path):
                    raise
                self._index = Index.open(self.path, model=self.model)  # another store created it meanwhile
        if not built:
            self._index.add(texts, ids, metas, on_conflict="replace", show_progress=progress, truncate=truncate)
        if self.auto_recluster and self._index.needs_recluster:
            self._index.compact(recluster=True, show_progress=progress)
        return ids

    def delete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Delete by ids (a split text's passages go with it), by ``filter=`` (metadata), or both (documents
        matching both). Returns True when something was deleted. Unknown ids are ignored."""
        flt = kwargs.pop("filter", None)
        if kwargs:
            raise InvalidArgument(f"unknown argument(s) {sorted(kwargs)}; delete takes ids or filter=")
        if ids is None and flt is None:
            raise InvalidArgument("delete needs ids or filter= (to empty the store, pass filter={})")
        if self._index is None:
            return False
        return self._index.delete(list(ids) if ids is not None else None, filter=flt) > 0

    # ---------------------------------------------------------------- reads
    @staticmethod
    def _document(id_: str, text: str, metadata: dict) -> Document:
        return Document(id=id_, page_content=text, metadata=dict(metadata))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents with these ids, in the order given (missing ids skipped); a text stored as passages comes
        back whole."""
        if self._index is None:
            return []
        return [self._document(r.id, r.text, r.metadata) for r in self._index.get(list(ids))]

    def _search(self, query: str, k: int, **kwargs: Any) -> tuple[list[Hit], int]:
        query = _query_text(query)
        _check_search_kwargs(kwargs)
        if self._index is None:
            if not query.strip():
                raise InvalidArgument("query is empty or whitespace only")
            return [], 1
        return _search_index(self._index, query, k, kwargs)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """(Document, MaxSim score) best first. kwargs: filter, ids, score_threshold (relevance, 0..1) and the
        PLAID knobs ncells, centroid_score_threshold, ndocs, exhaustive."""
        hits, _ = self._search(query, k, **kwargs)
        return [(self._document(h.id, h.text, h.metadata), h.score) for h in hits]

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4, **kwargs: Any
                                                 ) -> list[tuple[Document, float]]:
        threshold = kwargs.pop("score_threshold", None)
        hits, n_q = self._search(query, k, **kwargs)
        out = [(self._document(h.id, h.text, h.metadata), _relevance(h.score, n_q)) for h in hits]
        return [(d, s) for d, s in out if threshold is None or s >= threshold]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:  # pragma: no cover - not reached
        raise NotImplementedError("relevance scores are computed per query (MaxSim / query tokens)")

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      **kwargs: Any) -> list[Document]:
        raise InvalidArgument("search_type='mmr' is not supported by ColBERTVectorStore (MaxSim has no single "
                              "document vector to diversify with); use 'similarity' or 'similarity_score_threshold'")

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        raise InvalidArgument("ColBERT has no single query vector: search with the query text")


def _to_document(hit: Hit, score_key: Optional[str], rank_key: Optional[str]) -> Document:
    meta = dict(hit.metadata)
    for key, value in ((score_key, hit.score), (rank_key, hit.rank)):
        if key is None:
            continue
        if key in meta:
            logger.debug("metadata key %r is the document's own; the retrieval %s is not added", key, key)
            continue
        meta[key] = value
    return Document(id=hit.id, page_content=hit.text, metadata=meta)


def _split_documents(documents: Sequence[Document], ids: Optional[Sequence[str]] = None):
    texts, metas, out_ids, skipped = [], [], [], 0
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise InvalidType(f"documents[{i}] is {type(d).__name__}, expected a langchain Document")
        if not d.page_content or not d.page_content.strip():
            skipped += 1
            continue
        texts.append(d.page_content)
        metas.append(dict(d.metadata or {}))
        out_ids.append(str(ids[i]) if ids is not None else (d.id or uuid.uuid4().hex))
    if skipped:
        logger.warning("skipped %d document(s) with empty page_content", skipped)
    if not texts:
        raise InvalidArgument("no documents to index: every document has empty page_content")
    return texts, metas, out_ids


class ColBERTRetriever(BaseRetriever):
    """Retrieve with a colbert-retriever ``Index``.

    ``k``, ``filter`` and ``search_kwargs`` (LangChain's names: k, filter, score_threshold; and the PLAID knobs
    ncells, ndocs, centroid_score_threshold, exhaustive) are defaults; ``invoke(query, **same)`` overrides them
    for one call. ``search_type``: "similarity" or "similarity_score_threshold" ("mmr" is refused).
    ``index`` may be an ``Index`` or a path to open; ``model`` a ``ColBERT``, hub id, folder or "default".
    Documents carry ``score`` and ``rank`` in their metadata (``score_key``/``rank_key``; None leaves them out;
    a document's own key of that name is kept, never overwritten).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    model: Optional[Any] = None
    k: int = 4
    filter: Optional[dict] = None
    search_type: str = "similarity"
    search_kwargs: dict = {}
    score_key: Optional[str] = "score"
    rank_key: Optional[str] = "rank"

    @model_validator(mode="before")
    @classmethod
    def _open_index(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            st = values.get("search_type", "similarity")
            if st == "mmr":
                raise InvalidArgument("search_type='mmr' is not supported by ColBERTRetriever; use 'similarity' or "
                                      "'similarity_score_threshold'")
            if st not in ("similarity", "similarity_score_threshold"):
                raise InvalidArgument(f"search_type must be 'similarity' or 'similarity_score_threshold', got {st!r}")
            skw = dict(values.get("search_kwargs") or {})
            _check_search_kwargs(skw)
            if st == "similarity_score_threshold" and skw.get("score_threshold") is None:
                raise InvalidArgument("search_type='similarity_score_threshold' needs search_kwargs={'score_threshold':"
                                      " <0..1>}")
            values["search_kwargs"] = skw
            if isinstance(values.get("index"), (str, Path)):
                values["index"] = Index.open(values["index"], model=values.get("model"))
        return values

    @classmethod
    def from_documents(cls, documents: Sequence[Document], index_path: Union[str, Path],
                       model: Union[ColBERT, str, None] = None, *, ids: Optional[Sequence[str]] = None,
                       nbits: int = 2, overwrite: bool = False, show_progress: Optional[bool] = None,
                       split: bool = True, **kwargs) -> "ColBERTRetriever":
        """Index LangChain ``Document``s (ids from ``Document.id`` when set) and return a retriever over them.
        split: documents longer than the model are indexed as passages under their own id (``truncate="chunk"``:
        a hit is the document with its best passage as ``page_content``); False: index their start, with a
        warning that counts the tokens dropped."""
        texts, metas, doc_ids = _split_documents(documents, ids)
        progress = show_progress if show_progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        index = Index.build(index_path, texts, ids=doc_ids, metadatas=metas, model=model, nbits=nbits,
                            overwrite=overwrite, show_progress=progress, truncate="chunk" if split else "warn")
        return cls(index=index, **kwargs)

    @classmethod
    def from_texts(cls, texts: Sequence[str], index_path: Union[str, Path], metadatas: Optional[Sequence[dict]] = None,
                   model: Union[ColBERT, str, None] = None, **kwargs) -> "ColBERTRetriever":
        metadatas = metadatas or [{} for _ in texts]
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metadatas)]
        return cls.from_documents(docs, index_path, model=model, **kwargs)

    @classmethod
    def from_index(cls, path: Union[str, Path], model: Union[ColBERT, str, None] = None,
                   **kwargs) -> "ColBERTRetriever":
        return cls(index=Index.open(path, model=model), **kwargs)

    def add_documents(self, documents: Sequence[Document], ids: Optional[Sequence[str]] = None, *,
                      split: bool = True) -> list[str]:
        """Add (or, for ids already present, replace) documents. Returns the ids stored."""
        texts, metas, doc_ids = _split_documents(documents, ids)
        return self.index.add(texts, ids=doc_ids, metadatas=metas, on_conflict="replace",
                              truncate="chunk" if split else "warn")

    def delete(self, ids: Optional[Sequence[str]] = None, *, filter: Optional[dict] = None) -> int:
        return self.index.delete(list(ids) if ids is not None else None, filter=filter)

    def _params(self, kwargs: dict) -> dict:
        params = {"k": self.k, "filter": self.filter, **self.search_kwargs, **_check_search_kwargs(kwargs)}
        if params.get("filter") is None:
            params.pop("filter")
        return params

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        query = _query_text(query)
        params = self._params(kwargs)
        if params.get("score_threshold") is None and self.search_type == "similarity_score_threshold":
            raise InvalidArgument("score_threshold is missing")
        hits, _ = _search_index(self.index, query, params.pop("k"), params)
        return [_to_document(h, self.score_key, self.rank_key) for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        # searching is CPU work on torch tensors: run it in the default executor so the event loop stays free
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), **kwargs)


class ColBERTReranker(BaseDocumentCompressor):
    """Rerank documents with exact MaxSim (no index); keeps the best ``top_n``, adding ``score``/``rank`` metadata
    (never over a document's own key). Use inside ``ContextualCompressionRetriever``. ``model``: a ``ColBERT``,
    hub id, folder or "default" (the default)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = None
    top_n: int = 3
    score_key: Optional[str] = "score"
    rank_key: Optional[str] = "rank"

    @model_validator(mode="before")
    @classmethod
    def _load_model(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            values["model"] = load_model(values.get("model"))
        return values

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> list[Document]:
        query = _query_text(query)
        docs = [d for d in documents if d.page_content and d.page_content.strip()]
        if not docs:
            return []
        hits = self.model.rerank(query, [d.page_content for d in docs], k=min(self.top_n, len(docs)))
        out = []
        for h in hits:
            d = docs[int(h.id)]
            scored = _to_document(Hit(h.id, h.score, h.rank, d.page_content, dict(d.metadata)), self.score_key,
                                  self.rank_key)
            out.append(Document(id=d.id, page_content=d.page_content, metadata=scored.metadata))
        return out
