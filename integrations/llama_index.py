"""LlamaIndex adapters: ``ColBERTRetriever`` (a ``BaseRetriever`` returning ``NodeWithScore``) and ``ColBERTRerank``
(a ``BaseNodePostprocessor``).

    from colbert_retriever.integrations.llama_index import ColBERTRetriever
    retriever = ColBERTRetriever.from_documents(SimpleDirectoryReader("docs").load_data(), index_path="my_index")
    nodes = retriever.retrieve("what is late interaction?")

llama-index-core makes no network call here: it ships its NLTK and tiktoken caches, and nothing in these adapters
reads ``Settings.llm`` or ``Settings.embed_model``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.llama_index needs llama-index-core: "
        "pip install 'colbert-retriever[llama-index]'"
    ) from e

from colbert_retriever import ColBERT, Index, InvalidArgument

logger = logging.getLogger(__name__)

__all__ = ["ColBERTRetriever", "ColBERTRerank", "to_colbert_filter"]

_OPS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
REF_DOC_KEY = "ref_doc_id"


def to_colbert_filter(filters: Union[MetadataFilters, MetadataFilter, dict, None]) -> Optional[dict]:
    """Translate LlamaIndex ``MetadataFilters`` into this library's filter dialect. Operators without an
    equivalent (text_match, contains, any, all, is_empty) raise ``InvalidArgument``."""
    if filters is None or isinstance(filters, dict):
        return filters
    if isinstance(filters, MetadataFilter):
        op = filters.operator
        if op not in _OPS:
            raise InvalidArgument(f"LlamaIndex filter operator {op.value!r} on {filters.key!r} is not supported; "
                                  f"supported: {[o.value for o in _OPS]}")
        return {filters.key: {_OPS[op]: filters.value}}
    parts = [to_colbert_filter(f) for f in filters.filters]
    if not parts:
        return None
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.AND:
        return {"$and": parts}
    if cond == FilterCondition.OR:
        return {"$or": parts}
    if cond == FilterCondition.NOT:
        return {"$not": {"$and": parts}}
    raise InvalidArgument(f"filter condition {cond!r} is not supported")


def _nodes_to_rows(nodes: Sequence[BaseNode]):
    texts, ids, metas, skipped = [], [], [], 0
    for i, n in enumerate(nodes):
        if not isinstance(n, BaseNode):
            raise InvalidArgument(f"nodes[{i}] is {type(n).__name__}, expected a LlamaIndex node")
        text = n.get_content(metadata_mode=MetadataMode.NONE)
        if not text or not text.strip():
            skipped += 1
            continue
        meta = dict(n.metadata or {})
        if n.ref_doc_id is not None:
            meta.setdefault(REF_DOC_KEY, n.ref_doc_id)
        texts.append(text)
        ids.append(n.node_id)
        metas.append(meta)
    if skipped:
        logger.warning("skipped %d node(s) with empty text", skipped)
    if not texts:
        raise InvalidArgument("no nodes to index: every node has empty text")
    return texts, ids, metas


class ColBERTRetriever(BaseRetriever):
    """Retrieve ``NodeWithScore`` from a colbert-retriever ``Index``; node ids and metadata are preserved."""

    def __init__(self, index: Union[Index, str, Path], model: Optional[ColBERT] = None, similarity_top_k: int = 4,
                 filters: Union[MetadataFilters, dict, None] = None, search_kwargs: Optional[dict] = None,
                 callback_manager=None, verbose: bool = False):
        self.index = index if isinstance(index, Index) else Index.open(index, model=model)
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self.search_kwargs = dict(search_kwargs or {})
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_nodes(cls, nodes: Sequence[BaseNode], index_path: Union[str, Path], model: Optional[ColBERT] = None, *,
                   nbits: int = 2, overwrite: bool = False, show_progress: bool = False, **kwargs) -> "ColBERTRetriever":
        texts, ids, metas = _nodes_to_rows(nodes)
        index = Index.build(index_path, texts, ids=ids, metadatas=metas, model=model, nbits=nbits,
                            overwrite=overwrite, show_progress=show_progress)
        return cls(index, **kwargs)

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], index_path: Union[str, Path],
                       model: Optional[ColBERT] = None, *, transformations: Optional[list] = None,
                       **kwargs) -> "ColBERTRetriever":
        """Split documents into nodes (default ``SentenceSplitter()``) and index them."""
        from llama_index.core.ingestion import run_transformations
        from llama_index.core.node_parser import SentenceSplitter

        nodes = run_transformations(list(documents), transformations or [SentenceSplitter()])
        return cls.from_nodes(nodes, index_path, model=model, **kwargs)

    @classmethod
    def from_index(cls, path: Union[str, Path], model: Optional[ColBERT] = None, **kwargs) -> "ColBERTRetriever":
        return cls(Index.open(path, model=model), **kwargs)

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        texts, ids, metas = _nodes_to_rows(nodes)
        return self.index.add(texts, ids=ids, metadatas=metas)

    def delete_nodes(self, node_ids: Sequence[str]) -> int:
        return self.index.delete(list(node_ids))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(query_bundle.query_str, k=self.similarity_top_k,
                                 filter=to_colbert_filter(self.filters), **self.search_kwargs)
        return [NodeWithScore(node=TextNode(id_=h.id, text=h.text, metadata=dict(h.metadata)), score=h.score)
                for h in hits]


class ColBERTRerank(BaseNodePostprocessor):
    """Rerank nodes with exact MaxSim and keep the best ``top_n``."""

    model: Any = Field(default=None, description="a colbert_retriever.ColBERT (default: ColBERT.default())")
    top_n: int = Field(default=3)

    @classmethod
    def class_name(cls) -> str:
        return "ColBERTRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: Optional[QueryBundle] = None
                           ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise InvalidArgument("ColBERTRerank needs the query (query_bundle is None)")
        keep = [n for n in nodes if n.node.get_content(metadata_mode=MetadataMode.NONE).strip()]
        if not keep:
            return []
        if self.model is None:
            self.model = ColBERT.default()
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in keep]
        hits = self.model.rerank(query_bundle.query_str, texts, k=min(self.top_n, len(keep)))
        return [NodeWithScore(node=keep[int(h.id)].node, score=h.score) for h in hits]
