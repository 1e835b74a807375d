"""LangChain adapters: ``ColBERTRetriever`` (a ``BaseRetriever`` over an ``Index``) and ``ColBERTReranker`` (a
``BaseDocumentCompressor`` that reranks any retriever's documents with exact MaxSim).

    from colbert_retriever.integrations.langchain import ColBERTRetriever
    retriever = ColBERTRetriever.from_documents(docs, index_path="my_index")
    retriever.invoke("what is late interaction?", k=5, filter={"source": "report.pdf"})

Documents with empty ``page_content`` are skipped (a warning gives the count); if every document is empty the
build raises ``InvalidArgument``.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, model_validator
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.langchain needs langchain-core: pip install 'colbert-retriever[langchain]'"
    ) from e

from colbert_retriever import ColBERT, Hit, Index, InvalidArgument

logger = logging.getLogger(__name__)

__all__ = ["ColBERTRetriever", "ColBERTReranker"]


def _split_documents(documents: Sequence[Document], ids: Optional[Sequence[str]] = None):
    texts, metas, out_ids, skipped = [], [], [], 0
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise InvalidArgument(f"documents[{i}] is {type(d).__name__}, expected a langchain Document")
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


def _to_document(hit: Hit) -> Document:
    return Document(id=hit.id, page_content=hit.text, metadata={**hit.metadata, "score": hit.score, "rank": hit.rank})


class ColBERTRetriever(BaseRetriever):
    """Retrieve with a colbert-retriever ``Index``.

    ``k``, ``filter`` and ``search_kwargs`` (PLAID knobs: ncells, ndocs, centroid_score_threshold, exhaustive) are
    defaults; ``invoke(query, k=..., filter=..., **search_kwargs)`` overrides them for one call.
    ``index`` may be an ``Index`` or a path to open (with ``model`` if given).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    model: Optional[Any] = None
    k: int = 4
    filter: Optional[dict] = None
    search_kwargs: dict = {}

    @model_validator(mode="before")
    @classmethod
    def _open_index(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("index"), (str, Path)):
            values = dict(values)
            values["index"] = Index.open(values["index"], model=values.get("model"))
        return values

    @classmethod
    def from_documents(cls, documents: Sequence[Document], index_path: Union[str, Path], model: Optional[ColBERT] = None,
                       *, ids: Optional[Sequence[str]] = None, nbits: int = 2, overwrite: bool = False,
                       show_progress: bool = False, **kwargs) -> "ColBERTRetriever":
        """Index LangChain ``Document``s (ids from ``Document.id`` when set) and return a retriever over them."""
        texts, metas, doc_ids = _split_documents(documents, ids)
        index = Index.build(index_path, texts, ids=doc_ids, metadatas=metas, model=model, nbits=nbits,
                            overwrite=overwrite, show_progress=show_progress)
        return cls(index=index, **kwargs)

    @classmethod
    def from_texts(cls, texts: Sequence[str], index_path: Union[str, Path], metadatas: Optional[Sequence[dict]] = None,
                   model: Optional[ColBERT] = None, **kwargs) -> "ColBERTRetriever":
        metadatas = metadatas or [{} for _ in texts]
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metadatas)]
        return cls.from_documents(docs, index_path, model=model, **kwargs)

    @classmethod
    def from_index(cls, path: Union[str, Path], model: Optional[ColBERT] = None, **kwargs) -> "ColBERTRetriever":
        return cls(index=Index.open(path, model=model), **kwargs)

    def add_documents(self, documents: Sequence[Document], ids: Optional[Sequence[str]] = None) -> list[str]:
        texts, metas, doc_ids = _split_documents(documents, ids)
        return self.index.add(texts, ids=doc_ids, metadatas=metas)

    def delete(self, ids: Sequence[str]) -> int:
        return self.index.delete(list(ids))

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: Optional[int] = None, filter: Optional[dict] = None, **kwargs: Any) -> list[Document]:
        params = {**self.search_kwargs, **kwargs}
        hits = self.index.search(query, k=k if k is not None else self.k,
                                 filter=filter if filter is not None else self.filter, **params)
        return [_to_document(h) for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: Optional[int] = None, filter: Optional[dict] = None,
                                       **kwargs: Any) -> list[Document]:
        # searching is CPU work on torch tensors: run it in the default executor so the event loop stays free
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), k=k, filter=filter, **kwargs)


class ColBERTReranker(BaseDocumentCompressor):
    """Rerank documents with exact MaxSim (no index); keeps the best ``top_n`` with ``score``/``rank`` metadata.
    Use inside ``ContextualCompressionRetriever``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = None
    top_n: int = 3

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("model") is None:
            values = dict(values)
            values["model"] = ColBERT.default()
        return values

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> list[Document]:
        docs = [d for d in documents if d.page_content and d.page_content.strip()]
        if not docs:
            return []
        hits = self.model.rerank(query, [d.page_content for d in docs], k=min(self.top_n, len(docs)))
        out = []
        for h in hits:
            d = docs[int(h.id)]
            out.append(Document(id=d.id, page_content=d.page_content,
                                metadata={**d.metadata, "score": h.score, "rank": h.rank}))
        return out
