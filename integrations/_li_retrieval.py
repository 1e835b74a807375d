"""LlamaIndex's retriever, node postprocessor, splitter and filter translation over colbert-retriever. (Private:
import them from ``colbert_retriever.integrations.llama_index``.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from colbert_retriever import ColBERT, Index, InvalidArgument, InvalidType, load_model
from colbert_retriever.serve.client import is_index, open_index

logger = logging.getLogger(__name__)

_OPS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
REF_DOC_KEY = "ref_doc_id"
LEXICAL_REMEDY = ("call index.add_lexical() once (or build with lexical=True)",
                  "open the index once as ColBERTIndex(index_path, lexical=True), or pass lexical=True to "
                  "ColBERTIndex.from_documents")
"""The library's remedy for a missing lexical side, and the LlamaIndex way to say it."""


_LIST_OPS = (FilterOperator.CONTAINS, FilterOperator.ANY, FilterOperator.ALL)


def to_colbert_filter(filters: Union[MetadataFilters, MetadataFilter, dict, None]) -> Optional[dict]:
    """Translate LlamaIndex ``MetadataFilters`` into this library's filter dialect: the comparisons and in/nin as
    they are, and the list operators ``contains`` (the field is a list holding the value: ``$contains``), ``any``
    (a list holding one of the values: ``$in``, element-wise) and ``all`` (holding every value: ``$contains`` for
    each). text_match and is_empty raise ``InvalidArgument``."""
    if filters is None or isinstance(filters, dict):
        return filters
    if isinstance(filters, MetadataFilter):
        op, key, value = filters.operator, filters.key, filters.value
        if op in _OPS:
            return {key: {_OPS[op]: value}}
        if op == FilterOperator.CONTAINS:
            return {key: {"$contains": value}}
        if op in (FilterOperator.ANY, FilterOperator.ALL):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgument(f"LlamaIndex filter operator {op.value!r} on {key!r} takes a non-empty list, "
                                      f"got {value!r}")
            if op == FilterOperator.ANY:
                return {key: {"$in": list(value)}}
            return {"$and": [{key: {"$contains": v}} for v in value]}
        raise InvalidArgument(f"LlamaIndex filter operator {op.value!r} on {key!r} is not supported; supported: "
                              f"{[o.value for o in (*_OPS, *_LIST_OPS)]}")
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


NODE_KEY = "_node_content"
HASH_KEY = "_ref_doc_hash"
"""Stored beside each node (not in it): the hash of the document it came from, for ``refresh_ref_docs``."""
_PROGRESS_MIN_DOCS = 256
SOURCE_KEYS = ("file_path", "file_name", "source", "url")


def stable_node_id(i: int, doc: BaseNode) -> str:
    """A node id that is the same on every run over the same source: sha256 of the document's source (its
    metadata's first of ``SOURCE_KEYS``, else its id), the chunk's position and the document's hash (text and
    metadata), 32 hex digits. SimpleDirectoryReader gives documents random ids but a ``file_path``: re-reading
    the same folder gives the same node ids."""
    source = next((str(doc.metadata[k]) for k in SOURCE_KEYS if doc.metadata.get(k)), doc.id_)
    return hashlib.sha256(json.dumps([source, i, doc.hash]).encode()).hexdigest()[:32]


def colbert_splitter(model: Union[ColBERT, str, None] = None, chunk_overlap: Optional[int] = None):
    """LlamaIndex's ``SentenceSplitter`` sized in ``model``'s own tokens: chunks (with their metadata, which the
    splitter accounts for) fit the model's ``doc_maxlen``; overlap 1/8 of a chunk unless given; node ids by
    ``stable_node_id``."""
    from llama_index.core.node_parser import SentenceSplitter

    model = load_model(model)
    room = model.tokenizer.doc_room()
    hf = model.hf_tokenizer
    return SentenceSplitter(chunk_size=room, chunk_overlap=room // 8 if chunk_overlap is None else chunk_overlap,
                            tokenizer=lambda text: hf.encode(text, add_special_tokens=False, verbose=False),
                            id_func=stable_node_id)


def _nodes_to_rows(nodes: Sequence[BaseNode], hashes: Optional[dict] = None):
    """(texts, ids, metadatas): the text the model sees is the node's content in ``MetadataMode.EMBED`` (as
    LlamaIndex embeds it); the metadata are the node's own keys at the top level (so filters see them),
    ``ref_doc_id``/``doc_id``/``document_id``, the whole node as JSON (``_node_content``, ``_node_type``) and,
    from ``hashes`` (ref doc id -> the document's hash), ``_ref_doc_hash``."""
    texts, ids, metas, skipped = [], [], [], 0
    for i, n in enumerate(nodes):
        if not isinstance(n, BaseNode):
            raise InvalidType(f"nodes[{i}] is {type(n).__name__}, expected a LlamaIndex node")
        if not n.get_content(metadata_mode=MetadataMode.NONE).strip():
            skipped += 1
            continue
        texts.append(n.get_content(metadata_mode=MetadataMode.EMBED))
        ids.append(n.node_id)
        meta = node_to_metadata_dict(n, remove_text=False, flat_metadata=False)
        if hashes and n.ref_doc_id in hashes:
            meta[HASH_KEY] = hashes[n.ref_doc_id]
        metas.append(meta)
    if skipped:
        logger.warning("skipped %d node(s) with empty text", skipped)
    return texts, ids, metas


def _to_node(hit) -> BaseNode:
    """The stored node (lossless) or, for an index built without node JSON, a ``TextNode`` from the hit."""
    if NODE_KEY in hit.metadata:
        return metadata_dict_to_node(hit.metadata)
    return TextNode(id_=hit.id, text=hit.text, metadata=dict(hit.metadata))


class ColBERTRetriever(BaseRetriever):
    """Retrieve ``NodeWithScore`` from a colbert-retriever index; node ids and metadata are preserved.

    ``index_path`` (a folder) or ``index`` (an open ``Index``, or a folder for compatibility); ``model``: a
    ``ColBERT``, hub id, folder or "default". ``search_kwargs``: PLAID knobs, and ``mode``/``fusion``/``depth``/
    ``alpha`` for the lexical and hybrid modes. ``NodeWithScore.score`` is the mode's score (MaxSim in ColBERT
    mode, see ``colbert_retriever.Hit``), or its 0..1 relevance with ``normalize_scores=True`` (for cutoffs such
    as ``SimilarityPostprocessor``)."""

    def __init__(self, index: Union[Index, str, Path, None] = None, model: Union[ColBERT, str, None] = None,
                 similarity_top_k: int = 4, filters: Union[MetadataFilters, dict, None] = None,
                 search_kwargs: Optional[dict] = None, callback_manager=None, verbose: bool = False, *,
                 index_path: Union[str, Path, None] = None, normalize_scores: bool = False, device=None):
        if index is not None and not is_index(index):
            index_path, index = index, None  # a folder given positionally (the older spelling)
        if index is None:
            if index_path is None:
                raise InvalidArgument("ColBERTRetriever needs index_path=<folder> (or an open Index)")
            index = open_index(index_path, model=model, device=device)
        self.index = index
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self.search_kwargs = dict(search_kwargs or {})
        self.normalize_scores = normalize_scores
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_nodes(cls, nodes: Sequence[BaseNode], index_path: Union[str, Path],
                   model: Union[ColBERT, str, None] = None, *, nbits: int = 2, if_exists: str = "upsert",
                   overwrite: Optional[bool] = None, show_progress: Optional[bool] = None, device=None,
                   pool_factor: Optional[int] = None, **kwargs) -> "ColBERTRetriever":
        """Index nodes (by their ids) at ``index_path``; ``if_exists`` as in ``Index.build`` (upsert by default)."""
        texts, ids, metas = _nodes_to_rows(nodes)
        if not texts:
            raise InvalidArgument("no nodes to index: every node has empty text")
        progress = show_progress if show_progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        index = Index.build(index_path, texts, ids=ids, metadatas=metas, model=model, nbits=nbits,
                            if_exists=_if_exists(if_exists, overwrite), show_progress=progress, device=device,
                            pool_factor=pool_factor)
        return cls(index, **kwargs)

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], index_path: Union[str, Path],
                       model: Union[ColBERT, str, None] = None, *, transformations: Optional[list] = None,
                       device=None, **kwargs) -> "ColBERTRetriever":
        """Split documents into nodes (default ``colbert_splitter(model)``: chunks that fit the model, stable ids)
        and index them."""
        from llama_index.core.ingestion import run_transformations

        model = load_model(model, device=device)
        nodes = run_transformations(list(documents), transformations or [colbert_splitter(model)])
        return cls.from_nodes(nodes, index_path, model=model, device=device, **kwargs)

    @classmethod
    def from_index(cls, path: Union[str, Path], model: Union[ColBERT, str, None] = None,
                   **kwargs) -> "ColBERTRetriever":
        return cls(index_path=path, model=model, **kwargs)

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Add nodes (a node id already present is replaced). Returns the ids stored."""
        texts, ids, metas = _nodes_to_rows(nodes)
        if not texts:
            return []
        return self.index.add(texts, ids=ids, metadatas=metas, on_conflict="replace")

    def delete_nodes(self, node_ids: Sequence[str]) -> int:
        return self.index.delete(list(node_ids))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        try:
            hits = self.index.search(query_bundle.query_str, k=self.similarity_top_k,
                                     filter=to_colbert_filter(self.filters), **self.search_kwargs)
        except InvalidArgument as e:
            if LEXICAL_REMEDY[0] in str(e):
                raise InvalidArgument(str(e).replace(*LEXICAL_REMEDY)) from None
            raise
        return [NodeWithScore(node=_to_node(h), score=h.relevance if self.normalize_scores else h.score)
                for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # CPU work on torch tensors: in a worker thread, so concurrent aretrieve calls overlap
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _if_exists(if_exists: str, overwrite: Optional[bool]) -> str:
    if overwrite is not None:
        warnings.warn("overwrite= is deprecated: pass if_exists='overwrite'", DeprecationWarning, stacklevel=3)
        return "overwrite" if overwrite else "error"
    return if_exists


class ColBERTRerank(BaseNodePostprocessor):
    """Rerank nodes with exact MaxSim and keep the best ``top_n``. A node longer than the model is scored whole,
    by its best passage (``long_texts="split"``, the default; "truncate" scores its first ``doc_maxlen``
    tokens)."""

    model: Any = Field(default=None, description="a colbert_retriever.ColBERT, a hub id, a folder or 'default'")
    top_n: int = Field(default=3)
    long_texts: str = Field(default="split", description="'split' (best passage) or 'truncate'")

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
        if not isinstance(self.model, ColBERT):
            self.model = load_model(self.model)
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in keep]
        hits = self.model.rerank(query_bundle.query_str, texts, k=min(self.top_n, len(keep)),
                                 long_texts=self.long_texts)
        return [NodeWithScore(node=keep[int(h.id)].node, score=h.score) for h in hits]
