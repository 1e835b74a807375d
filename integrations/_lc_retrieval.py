"""LangChain's retriever, reranker and text splitter over colbert-retriever. (Private: import them from
``colbert_retriever.integrations.langchain``.)"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, model_validator

from colbert_retriever import ColBERT, Hit, Index, InvalidArgument, InvalidType, load_model
from colbert_retriever.serve.client import is_index, open_index

from ._lc_common import (PROGRESS_MIN_DOCS, check_if_exists, check_search_kwargs, document_id, query_text,
                         search_index)

logger = logging.getLogger(__name__)


def to_document(hit: Hit, score_key: Optional[str], rank_key: Optional[str]) -> Document:
    """A hit as a LangChain Document; ``score``/``rank`` go into the metadata under these keys, never over a key
    the document has."""
    meta = dict(hit.metadata)
    for key, value in ((score_key, hit.score), (rank_key, hit.rank)):
        if key is None:
            continue
        if key in meta:
            logger.debug("metadata key %r is the document's own; the retrieval %s is not added", key, key)
            continue
        meta[key] = value
    return Document(id=hit.id, page_content=hit.text, metadata=meta)


def split_documents(documents: Sequence[Document], ids: Optional[Sequence[str]] = None):
    """(texts, metadatas, ids) of Documents; empty ones are skipped (counted in a warning); a Document without an
    id gets ``document_id`` of its text and metadata (the same on every run)."""
    texts, metas, out_ids, skipped, seen = [], [], [], 0, {}
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise InvalidType(f"documents[{i}] is {type(d).__name__}, expected a langchain Document")
        if not d.page_content or not d.page_content.strip():
            skipped += 1
            continue
        texts.append(d.page_content)
        metas.append(dict(d.metadata or {}))
        given = ids[i] if ids is not None else d.id
        out_ids.append(str(given) if given is not None else document_id(d.page_content, d.metadata, seen))
    if skipped:
        logger.warning("skipped %d document(s) with empty page_content", skipped)
    if not texts:
        raise InvalidArgument("no documents to index: every document has empty page_content")
    return texts, metas, out_ids


class ColBERTTextSplitter:
    """Split texts into passages that fit a ColBERT model: windows of at most ``doc_maxlen`` of the model's own
    tokens (less its special tokens), overlapping by ``chunk_overlap`` tokens, ending at a sentence or line end
    where one is near. Works as a LangChain text splitter (``split_text``, ``split_documents``, and as a
    ``DocumentTransformer`` through ``transform_documents``); metadata are copied to every chunk."""

    def __init__(self, model: Union[ColBERT, str, None] = None, chunk_size: Optional[int] = None,
                 chunk_overlap: Optional[int] = None, add_start_index: bool = False, device=None):
        self.model = load_model(model, device=device)
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


class ColBERTRetriever(BaseRetriever):
    """Retrieve with a colbert-retriever index.

    ``index_path`` (a folder) or ``index`` (an open ``Index``) says which; ``model`` is a ``ColBERT``, hub id,
    folder or "default". ``k``, ``filter`` and ``search_kwargs`` (LangChain's names: k, filter, score_threshold on
    the 0..1 relevance; the PLAID knobs ncells, ndocs, centroid_score_threshold, exhaustive; mode, fusion, depth,
    alpha for the lexical and hybrid modes) are defaults; ``invoke(query, **same)`` overrides them for one call.
    ``search_type``: "similarity" or "similarity_score_threshold" ("mmr" is refused). Documents carry ``score``
    and ``rank`` in their metadata (``score_key``/``rank_key``; None leaves them out; a document's own key of
    that name is kept, never overwritten).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = None
    index_path: Optional[Union[str, Path]] = None
    model: Optional[Any] = None
    device: Optional[Any] = None
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
            check_search_kwargs(skw)
            if st == "similarity_score_threshold" and skw.get("score_threshold") is None:
                raise InvalidArgument("search_type='similarity_score_threshold' needs search_kwargs={'score_threshold':"
                                      " <0..1>}")
            values["search_kwargs"] = skw
            index, path = values.get("index"), values.get("index_path")
            if isinstance(index, (str, Path)):
                warnings.warn("ColBERTRetriever(index=<path>) is deprecated: pass index_path=<path>",
                              DeprecationWarning, stacklevel=4)
                index, path = None, index
            if index is None:
                if path is None:
                    raise InvalidArgument("ColBERTRetriever needs index_path=<folder> (or index=<an open Index>)")
                index = open_index(path, model=values.get("model"), device=values.get("device"))
            elif not is_index(index):
                raise InvalidType(f"index must be a colbert_retriever.Index, got {type(index).__name__}")
            values["index"], values["index_path"] = index, str(index.path)
        return values

    @classmethod
    def from_documents(cls, documents: Sequence[Document], index_path: Union[str, Path],
                       model: Union[ColBERT, str, None] = None, *, ids: Optional[Sequence[str]] = None,
                       nbits: int = 2, if_exists: str = "upsert", overwrite: Optional[bool] = None,
                       show_progress: Optional[bool] = None, split: bool = True, device=None,
                       pool_factor: Optional[int] = None, **kwargs) -> "ColBERTRetriever":
        """Index LangChain ``Document``s (ids from ``Document.id``, else ``document_id`` of text and metadata)
        and return a retriever over them. if_exists: what an existing index at ``index_path`` means — "upsert"
        (the default: documents added, same ids replaced, unchanged ones skipped: a re-run changes nothing),
        "overwrite" or "error" (the rule of ``Index.build``). split: documents longer than the model are indexed
        as passages under their own id (a hit is the document with its best passage as ``page_content``);
        False: index their start, with a warning that counts the tokens dropped."""
        texts, metas, doc_ids = split_documents(documents, ids)
        if overwrite is not None:
            warnings.warn("overwrite= is deprecated: pass if_exists='overwrite'", DeprecationWarning, stacklevel=2)
            if_exists = "overwrite" if overwrite else "error"
        progress = show_progress if show_progress is not None else len(texts) > PROGRESS_MIN_DOCS
        index = Index.build(index_path, texts, ids=doc_ids, metadatas=metas, model=model, nbits=nbits,
                            if_exists=check_if_exists(if_exists), show_progress=progress,
                            truncate="chunk" if split else "warn", device=device, pool_factor=pool_factor)
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
        return cls(index_path=path, model=model, **kwargs)

    def add_documents(self, documents: Sequence[Document], ids: Optional[Sequence[str]] = None, *,
                      split: bool = True) -> list[str]:
        """Add (or, for ids already present, replace) documents. Returns the ids stored."""
        texts, metas, doc_ids = split_documents(documents, ids)
        return self.index.add(texts, ids=doc_ids, metadatas=metas, on_conflict="replace",
                              truncate="chunk" if split else "warn")

    def delete(self, ids: Optional[Sequence[str]] = None, *, filter: Optional[dict] = None) -> int:
        return self.index.delete(list(ids) if ids is not None else None, filter=filter)

    def _params(self, kwargs: dict) -> dict:
        params = {"k": self.k, "filter": self.filter, **self.search_kwargs, **check_search_kwargs(kwargs)}
        if params.get("filter") is None:
            params.pop("filter")
        return params

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        query = query_text(query)
        params = self._params(kwargs)
        if params.get("score_threshold") is None and self.search_type == "similarity_score_threshold":
            raise InvalidArgument("score_threshold is missing")
        hits = search_index(self.index, query, params.pop("k"), params)
        return [to_document(h, self.score_key, self.rank_key) for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        # searching is CPU work on torch tensors: run it in the default executor so the event loop stays free
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), **kwargs)


class ColBERTRerank(BaseDocumentCompressor):
    """Rerank documents with exact MaxSim (no index); keeps the best ``top_n``, adding ``score``/``rank`` metadata
    (never over a document's own key). A document longer than the model is scored whole, by its best passage
    (``long_texts="split"``, the default; "truncate" scores its first ``doc_maxlen`` tokens). Use inside
    ``ContextualCompressionRetriever``. ``model``: a ``ColBERT``, hub id, folder or "default" (the default)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = None
    top_n: int = 3
    long_texts: str = "split"
    score_key: Optional[str] = "score"
    rank_key: Optional[str] = "rank"

    @model_validator(mode="before")
    @classmethod
    def _load_model(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            values["model"] = load_model(values.get("model"), device=values.pop("device", None))
        return values

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> list[Document]:
        query = query_text(query)
        docs = [d for d in documents if d.page_content and d.page_content.strip()]
        if not docs:
            return []
        hits = self.model.rerank(query, [d.page_content for d in docs], k=min(self.top_n, len(docs)),
                                 long_texts=self.long_texts)
        out = []
        for h in hits:
            d = docs[int(h.id)]
            scored = to_document(Hit(h.id, h.score, h.rank, d.page_content, dict(d.metadata)), self.score_key,
                                 self.rank_key)
            out.append(Document(id=d.id, page_content=d.page_content, metadata=scored.metadata))
        return out


class ColBERTReranker(ColBERTRerank):
    """Deprecated name of ``ColBERTRerank`` (the name LlamaIndex's adapter has too)."""

    def __init__(self, **kwargs: Any):
        warnings.warn("ColBERTReranker is deprecated: use ColBERTRerank", DeprecationWarning, stacklevel=2)
        super().__init__(**kwargs)
