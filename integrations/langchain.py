"""LangChain adapters.

- ``ColBERTVectorStore`` (a ``VectorStore``): the LangChain idiom — ``from_documents``, ``add_documents`` (an
  existing id is replaced: upsert), ``delete``, ``get_by_ids``, ``similarity_search[_with_score|
  _with_relevance_scores]``, ``as_retriever(search_kwargs={"k", "filter", "score_threshold"})`` and their async
  twins (run in an executor: the event loop stays free). An empty store is valid: the index folder is created by
  the first add, and the centroids are re-trained as the collection grows (``Index.needs_recluster``).
- ``ColBERTRetriever`` (a ``BaseRetriever`` over an index folder or an ``Index``) and ``ColBERTRerank`` (a
  ``BaseDocumentCompressor`` that reranks any retriever's documents with exact MaxSim; ``ColBERTReranker`` is its
  deprecated name).
- ``ColBERTTextSplitter``: splits text into passages that fit the model (its own tokens, with overlap).

    from colbert_retriever.integrations.langchain import ColBERTVectorStore
    store = ColBERTVectorStore.from_documents(docs, index_path="lc_index")
    store.as_retriever(search_kwargs={"k": 5, "filter": {"source": "report.pdf"}}).invoke("late interaction?")

Re-running ingestion is idempotent: a Document without an id gets one derived from its text and metadata
(``document_id``), and ``from_documents``/``from_texts`` on an existing index upsert (``if_exists="upsert"``, the
rule of ``Index.build``): the same documents give the same index, never a second copy. To sync a changed folder
(edited files' old chunks replaced, removed files' chunks deleted), use LangChain's own indexing API with a record
manager: ``langchain_core.indexing.index(docs, record_manager, store, cleanup="incremental"|"full",
source_id_key="source")`` (``add_documents`` takes its ``batch_size``; ``delete`` returns True when it succeeded).

Long texts are never cut silently: a text longer than the model's ``doc_maxlen`` is indexed as overlapping
passages under its own id (``long_texts="split"``, the default: the index's ``truncate="chunk"``; a search returns
the document once, with its best passage as ``page_content``; ``get_by_ids`` returns the whole text; deleting or
replacing the id removes every passage), or refused (``"error"``), or indexed from its start with a warning that
counts the tokens dropped (``"truncate"``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

try:
    from langchain_core.documents import Document
    from langchain_core.vectorstores import VectorStore
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.langchain needs langchain-core: pip install 'colbert-retriever[langchain]'"
    ) from e

from colbert_retriever import ColBERT, Hit, Index, InvalidArgument, load_model
from colbert_retriever.serve.client import is_url, open_index
from colbert_retriever.store import storage

from ._lc_common import (LONG_TEXTS, PROGRESS_MIN_DOCS, SEARCH_KEYS, check_if_exists, check_search_kwargs,
                         document_id, prepare, query_text, search_index)
from ._lc_retrieval import ColBERTRerank, ColBERTReranker, ColBERTRetriever, ColBERTTextSplitter

logger = logging.getLogger(__name__)

__all__ = ["ColBERTVectorStore", "ColBERTRetriever", "ColBERTRerank", "ColBERTReranker", "ColBERTTextSplitter",
           "document_id", "SEARCH_KEYS"]


class ColBERTVectorStore(VectorStore):
    """A LangChain ``VectorStore`` backed by a colbert-retriever index folder.

    index_path: the folder (created on the first add when it holds no index yet). model: a ``ColBERT``, a hub id,
    a checkpoint folder or "default" (loaded once per process). long_texts: "split" (default), "error" or
    "truncate" (see the module docstring). show_progress: None = a bar when one call adds over 256 texts.
    lexical: keep the BM25 side too, for ``similarity_search(..., mode="hybrid" | "bm25" | "bm25_rerank")``
    (``search_kwargs={"mode": "hybrid"}`` in a retriever). device: "cpu" (default), "cuda" or "auto". Scores are
    the mode's (MaxSim for ColBERT, higher is better); relevance scores are ``Hit.relevance``, in [0, 1] in every
    mode (ColBERT: MaxSim / query tokens). pool_factor: token pooling when the store creates its index
    (``Index.build``'s: None pools a new index by 2, 1 turns pooling off; later adds pool as the index records).
    """

    def __init__(self, index_path: Union[str, Path], model: Union[ColBERT, str, None] = None, *, nbits: int = 2,
                 long_texts: str = "split", show_progress: Optional[bool] = None, auto_recluster: bool = True,
                 lexical: bool = False, device=None, pool_factor: Optional[int] = None):
        if long_texts not in LONG_TEXTS:
            raise InvalidArgument(f"long_texts must be one of {LONG_TEXTS}, got {long_texts!r}")
        self.path = index_path if is_url(index_path) else Path(index_path)
        self.device = device
        self.model = None if is_url(index_path) else load_model(model, device=device)
        self.nbits, self.long_texts, self.show_progress = nbits, long_texts, show_progress
        self.auto_recluster, self.lexical = auto_recluster, lexical
        self.pool_factor = pool_factor  # Index.build's; an existing index pools as it records
        self._index: Optional[Index] = None
        if is_url(index_path) or storage.holds_our_index(self.path):
            self._index = open_index(self.path, model=self.model, device=device)
            self.model = self._index.model
            if lexical and not self._index.has_lexical:
                self._index.add_lexical()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Any = None, metadatas: Optional[list[dict]] = None, *,
                   ids: Optional[list[str]] = None, index_path: Union[str, Path, None] = None,
                   model: Union[ColBERT, str, None] = None, if_exists: str = "upsert",
                   **kwargs: Any) -> "ColBERTVectorStore":
        """Index texts into ``index_path``. ``embedding`` is not used (ColBERT encodes with its own model) and must
        be None. A text without an id gets ``document_id`` of its text and metadata. if_exists: what an existing
        index at ``index_path`` means — "upsert" (the default: the texts are added, same ids replaced, unchanged
        ones skipped, so re-running the same ingestion changes nothing), "overwrite" (start over: the new index
        replaces the old one atomically) or "error" (the rule of ``Index.build``)."""
        if embedding is not None:
            hint = (f" (to index into the folder {str(embedding)!r}, pass index_path={str(embedding)!r})"
                    if isinstance(embedding, (str, Path)) else "")
            raise InvalidArgument(f"ColBERTVectorStore takes no embedding: it encodes with its own ColBERT model "
                                  f"(model=..., default 'default'); name the index folder with index_path=...{hint}")
        if index_path is None:
            raise InvalidArgument("from_texts needs index_path= (the index folder)")
        check_if_exists(if_exists)
        if if_exists == "error" and storage.holds_our_index(index_path):
            raise InvalidArgument(f"an index already exists at {index_path}; if_exists='upsert' adds to it by id, "
                                  f"'overwrite' replaces it")
        store = cls(index_path, model=model, **kwargs)
        if if_exists == "overwrite" and store._index is not None:
            texts, metas, ids = prepare(list(texts), metadatas, ids, "texts")
            store._index = Index.build(store.path, texts, ids=ids, metadatas=metas, model=store.model,
                                       nbits=store.nbits, if_exists="overwrite", truncate=LONG_TEXTS[store.long_texts],
                                       lexical=store.lexical, device=store.device,
                                       show_progress=store._progress(len(texts)), pool_factor=store.pool_factor)
            return store
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_documents(cls, documents: list[Document], embedding: Any = None, **kwargs: Any) -> "ColBERTVectorStore":
        """Index LangChain ``Document``s into ``index_path`` (ids from ``Document.id`` when set, else ``ids=``,
        else derived from text and metadata; if_exists as in ``from_texts``)."""
        if "ids" not in kwargs and any(d.id for d in documents):
            kwargs["ids"] = [d.id for d in documents]
        return cls.from_texts([d.page_content for d in documents], embedding, [d.metadata for d in documents],
                              **kwargs)

    def _progress(self, n: int) -> bool:
        return self.show_progress if self.show_progress is not None else n > PROGRESS_MIN_DOCS

    @property
    def index(self) -> Optional[Index]:
        """The ``Index`` (None while the store is empty and no index was created yet)."""
        return self._index

    @property
    def embeddings(self) -> None:
        return None

    # ---------------------------------------------------------------- writes
    def add_texts(self, texts: Iterable[str], metadatas: Optional[list[dict]] = None, *,
                  ids: Optional[list[str]] = None, batch_size: Optional[int] = None, **kwargs: Any) -> list[str]:
        """Add texts; a text whose id is already in the store replaces it (upsert; unchanged ones are skipped). A
        text without an id gets ``document_id`` of its text and metadata. batch_size: texts per write (each write
        is atomic; default: all in one), what ``langchain_core.indexing.index`` passes. Returns one id per text."""
        if kwargs:
            raise InvalidArgument(f"unknown argument(s) {sorted(kwargs)}; add_texts/add_documents take metadatas, "
                                  f"ids and batch_size")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InvalidArgument(f"batch_size must be an integer >= 1, got {batch_size!r}")
        texts, metas, ids = prepare(list(texts), metadatas, ids, "texts")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("ids must be unique within one call")
        step = batch_size or max(1, len(texts))
        for s in range(0, len(texts), step):
            self._write(texts[s : s + step], metas[s : s + step], ids[s : s + step])
        return ids

    def _write(self, texts: list[str], metas: list[dict], ids: list[str]) -> None:
        truncate = LONG_TEXTS[self.long_texts]
        progress = self._progress(len(texts))
        if self._index is None:  # the first add creates the index (or, if another store did meanwhile, adds to it)
            self._index = Index.build(self.path, texts, ids=ids, metadatas=metas, model=self.model, nbits=self.nbits,
                                      show_progress=progress, truncate=truncate, lexical=self.lexical,
                                      device=self.device, pool_factor=self.pool_factor)
        else:
            self._index.add(texts, ids, metas, on_conflict="replace", show_progress=progress, truncate=truncate)
        if self.auto_recluster and self._index.needs_recluster:
            self._index.compact(recluster=True, show_progress=progress)

    def delete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Delete by ids (a split text's passages go with it), by ``filter=`` (metadata), or both (documents
        matching both). Unknown ids are ignored. Returns True when the deletion succeeded (LangChain's contract:
        False would mean it failed), whether or not a document matched; ``index.delete`` returns the count."""
        flt = kwargs.pop("filter", None)
        if kwargs:
            raise InvalidArgument(f"unknown argument(s) {sorted(kwargs)}; delete takes ids or filter=")
        if ids is None and flt is None:
            raise InvalidArgument("delete needs ids or filter= (to empty the store, pass filter={})")
        if self._index is not None:
            self._index.delete(list(ids) if ids is not None else None, filter=flt)
        return True

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

    def _search(self, query: str, k: int, **kwargs: Any) -> list[Hit]:
        query = query_text(query)
        check_search_kwargs(kwargs)
        if self._index is None:
            if not query.strip():
                raise InvalidArgument("query is empty or whitespace only")
            return []
        return search_index(self._index, query, k, kwargs)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """(Document, score) best first: MaxSim in ColBERT mode (see ``Hit.score`` for the others). kwargs: filter,
        ids, score_threshold (relevance, 0..1), the PLAID knobs ncells, centroid_score_threshold, ndocs,
        exhaustive, and mode, fusion, depth, alpha."""
        return [(self._document(h.id, h.text, h.metadata), h.score) for h in self._search(query, k, **kwargs)]

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4, **kwargs: Any
                                                 ) -> list[tuple[Document, float]]:
        threshold = kwargs.pop("score_threshold", None)
        out = [(self._document(h.id, h.text, h.metadata), h.relevance) for h in self._search(query, k, **kwargs)]
        return [(d, s) for d, s in out if threshold is None or s >= threshold]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:  # pragma: no cover - not reached
        raise NotImplementedError("relevance scores come with every hit (Hit.relevance)")

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      **kwargs: Any) -> list[Document]:
        raise InvalidArgument("search_type='mmr' is not supported by ColBERTVectorStore (MaxSim has no single "
                              "document vector to diversify with); use 'similarity' or 'similarity_score_threshold'")

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        raise InvalidArgument("ColBERT has no single query vector: search with the query text")
