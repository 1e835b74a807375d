"""LlamaIndex adapters.

- ``ColBERTIndex``: a managed index (the shape of LlamaIndex's managed indices): ``from_documents``, ``insert``,
  ``insert_nodes``, ``delete_ref_doc``, ``delete_nodes``, ``update_ref_doc``, ``ref_doc_info``,
  ``as_retriever(similarity_top_k, filters)``, ``as_query_engine(llm=...)``. It persists in its index folder:
  ``ColBERTIndex(index_path)`` reopens it. Each node is stored whole (its own JSON, as LlamaIndex vector stores do:
  relationships, ``ref_doc_id``, offsets, excluded metadata keys, node type), so retrieval returns the nodes that
  were inserted.
- ``ColBERTRetriever`` (a ``BaseRetriever`` over an ``Index``; ``aretrieve`` runs in a worker thread) and
  ``ColBERTRerank`` (a ``BaseNodePostprocessor``).

    from colbert_retriever.integrations.llama_index import ColBERTIndex
    index = ColBERTIndex.from_documents(SimpleDirectoryReader("docs").load_data(), index_path="my_index")
    nodes = index.as_retriever(similarity_top_k=5).retrieve("what is late interaction?")

The default splitter (``colbert_splitter``) is LlamaIndex's ``SentenceSplitter`` counting the model's own tokens,
with chunks that fit ``doc_maxlen`` (metadata included, as the splitter does) and a 1/8 overlap: nothing is
truncated.

llama-index-core makes no network call here: it ships its NLTK and tiktoken caches, and nothing in these adapters
reads ``Settings.llm`` or ``Settings.embed_model``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.data_structs.data_structs import IndexDict
    from llama_index.core.indices.managed.base import BaseManagedIndex
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
    from llama_index.core.storage.docstore.types import RefDocInfo
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.llama_index needs llama-index-core: "
        "pip install 'colbert-retriever[llama-index]'"
    ) from e

from colbert_retriever import ColBERT, Index, InvalidArgument, InvalidType, load_model
from colbert_retriever import storage

logger = logging.getLogger(__name__)

__all__ = ["ColBERTIndex", "ColBERTRetriever", "ColBERTRerank", "colbert_splitter", "to_colbert_filter"]

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


NODE_KEY = "_node_content"
_PROGRESS_MIN_DOCS = 256


def colbert_splitter(model: Union[ColBERT, str, None] = None, chunk_overlap: Optional[int] = None):
    """LlamaIndex's ``SentenceSplitter`` sized in ``model``'s own tokens: chunks (with their metadata, which the
    splitter accounts for) fit the model's ``doc_maxlen``; overlap 1/8 of a chunk unless given."""
    from llama_index.core.node_parser import SentenceSplitter

    model = load_model(model)
    room = model.tokenizer.doc_room()
    hf = model.hf_tokenizer
    return SentenceSplitter(chunk_size=room, chunk_overlap=room // 8 if chunk_overlap is None else chunk_overlap,
                            tokenizer=lambda text: hf.encode(text, add_special_tokens=False, verbose=False))


def _nodes_to_rows(nodes: Sequence[BaseNode]):
    """(texts, ids, metadatas): the text the model sees is the node's content in ``MetadataMode.EMBED`` (as
    LlamaIndex embeds it); the metadata are the node's own keys at the top level (so filters see them),
    ``ref_doc_id``/``doc_id``/``document_id`` and the whole node as JSON (``_node_content``, ``_node_type``)."""
    texts, ids, metas, skipped = [], [], [], 0
    for i, n in enumerate(nodes):
        if not isinstance(n, BaseNode):
            raise InvalidType(f"nodes[{i}] is {type(n).__name__}, expected a LlamaIndex node")
        if not n.get_content(metadata_mode=MetadataMode.NONE).strip():
            skipped += 1
            continue
        texts.append(n.get_content(metadata_mode=MetadataMode.EMBED))
        ids.append(n.node_id)
        metas.append(node_to_metadata_dict(n, remove_text=False, flat_metadata=False))
    if skipped:
        logger.warning("skipped %d node(s) with empty text", skipped)
    return texts, ids, metas


def _to_node(hit) -> BaseNode:
    """The stored node (lossless) or, for an index built without node JSON, a ``TextNode`` from the hit."""
    if NODE_KEY in hit.metadata:
        return metadata_dict_to_node(hit.metadata)
    return TextNode(id_=hit.id, text=hit.text, metadata=dict(hit.metadata))


class ColBERTRetriever(BaseRetriever):
    """Retrieve ``NodeWithScore`` from a colbert-retriever ``Index``; node ids and metadata are preserved."""

    def __init__(self, index: Union[Index, str, Path], model: Union[ColBERT, str, None] = None,
                 similarity_top_k: int = 4,
                 filters: Union[MetadataFilters, dict, None] = None, search_kwargs: Optional[dict] = None,
                 callback_manager=None, verbose: bool = False):
        self.index = index if isinstance(index, Index) else Index.open(index, model=model)
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self.search_kwargs = dict(search_kwargs or {})
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_nodes(cls, nodes: Sequence[BaseNode], index_path: Union[str, Path],
                   model: Union[ColBERT, str, None] = None, *, nbits: int = 2, overwrite: bool = False,
                   show_progress: Optional[bool] = None, **kwargs) -> "ColBERTRetriever":
        texts, ids, metas = _nodes_to_rows(nodes)
        if not texts:
            raise InvalidArgument("no nodes to index: every node has empty text")
        progress = show_progress if show_progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        index = Index.build(index_path, texts, ids=ids, metadatas=metas, model=model, nbits=nbits,
                            overwrite=overwrite, show_progress=progress)
        return cls(index, **kwargs)

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], index_path: Union[str, Path],
                       model: Union[ColBERT, str, None] = None, *, transformations: Optional[list] = None,
                       **kwargs) -> "ColBERTRetriever":
        """Split documents into nodes (default ``colbert_splitter(model)``: chunks that fit the model) and
        index them."""
        from llama_index.core.ingestion import run_transformations

        model = load_model(model)
        nodes = run_transformations(list(documents), transformations or [colbert_splitter(model)])
        return cls.from_nodes(nodes, index_path, model=model, **kwargs)

    @classmethod
    def from_index(cls, path: Union[str, Path], model: Union[ColBERT, str, None] = None,
                   **kwargs) -> "ColBERTRetriever":
        return cls(Index.open(path, model=model), **kwargs)

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Add nodes (a node id already present is replaced). Returns the ids stored."""
        texts, ids, metas = _nodes_to_rows(nodes)
        if not texts:
            return []
        return self.index.add(texts, ids=ids, metadatas=metas, on_conflict="replace")

    def delete_nodes(self, node_ids: Sequence[str]) -> int:
        return self.index.delete(list(node_ids))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(query_bundle.query_str, k=self.similarity_top_k,
                                 filter=to_colbert_filter(self.filters), **self.search_kwargs)
        return [NodeWithScore(node=_to_node(h), score=h.score) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # CPU work on torch tensors: in a worker thread, so concurrent aretrieve calls overlap
        return await asyncio.to_thread(self._retrieve, query_bundle)


class ColBERTIndex(BaseManagedIndex):
    """A LlamaIndex managed index over a colbert-retriever index folder.

    ``ColBERTIndex(index_path)`` opens the index there (or starts empty: the folder is created by the first
    insert); ``ColBERTIndex.from_documents(documents, index_path=...)`` splits (``colbert_splitter`` unless
    ``transformations`` are given) and indexes. model: a ``ColBERT``, hub id, folder or "default".
    """

    def __init__(self, index_path: Union[str, Path], model: Union[ColBERT, str, None] = None,
                 nodes: Optional[Sequence[BaseNode]] = None, *, nbits: int = 2, overwrite: bool = False,
                 show_progress: Optional[bool] = None, transformations: Optional[list] = None,
                 lexical: bool = False, callback_manager=None, **kwargs: Any) -> None:
        self.path = Path(index_path)
        self.model = load_model(model)
        self.nbits, self.progress, self.lexical = nbits, show_progress, lexical
        self._colbert: Optional[Index] = None
        if storage.holds_our_index(self.path) and not overwrite:
            self._colbert = Index.open(self.path, model=self.model)
            self.model = self._colbert.model
            if lexical and not self._colbert.has_lexical:
                self._colbert.add_lexical()
        super().__init__(index_struct=IndexDict(summary="colbert-retriever index"), show_progress=bool(show_progress),
                         callback_manager=callback_manager, transformations=transformations or
                         [colbert_splitter(self.model)], **kwargs)
        if nodes is not None:
            self._add(nodes, overwrite=overwrite)

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], storage_context=None, show_progress: bool = False,
                       callback_manager=None, transformations: Optional[list] = None, *,
                       index_path: Union[str, Path, None] = None, model: Union[ColBERT, str, None] = None,
                       **kwargs: Any) -> "ColBERTIndex":
        from llama_index.core.ingestion import run_transformations

        if index_path is None:
            raise InvalidArgument("ColBERTIndex.from_documents needs index_path= (the index folder)")
        model = load_model(model)
        transformations = transformations or [colbert_splitter(model)]
        nodes = run_transformations(list(documents), transformations, show_progress=show_progress)
        return cls(index_path, model, nodes, show_progress=show_progress or None,
                   callback_manager=callback_manager, transformations=transformations, **kwargs)

    @property
    def colbert_index(self) -> Optional[Index]:
        """The underlying ``colbert_retriever.Index`` (None while empty)."""
        return self._colbert

    def _add(self, nodes: Sequence[BaseNode], overwrite: bool = False) -> None:
        texts, ids, metas = _nodes_to_rows(nodes)
        if not texts:
            return
        progress = self.progress if self.progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        if self._colbert is None or overwrite:
            self._colbert = Index.build(self.path, texts, ids=ids, metadatas=metas, model=self.model,
                                        nbits=self.nbits, overwrite=overwrite, show_progress=progress,
                                        lexical=self.lexical)
        else:
            self._colbert.add(texts, ids=ids, metadatas=metas, on_conflict="replace", show_progress=progress)
        if self._colbert.needs_recluster:
            self._colbert.compact(recluster=True, show_progress=progress)

    # the BaseIndex hooks --------------------------------------------------------------------------------
    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        self._add(nodes)

    def insert_nodes(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        """Insert nodes (an existing node id is replaced). The folder is the store: nothing is kept in memory."""
        with self._callback_manager.as_trace("insert_nodes"):
            self._add(nodes)

    async def ainsert_nodes(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        await asyncio.to_thread(self.insert_nodes, nodes)

    def _delete_node(self, node_id: str, **delete_kwargs: Any) -> None:
        self.delete_nodes([node_id])

    def delete_nodes(self, node_ids: list[str], delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        if self._colbert is not None:
            self._colbert.delete(list(node_ids))

    def delete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Delete every node of a source document."""
        if self._colbert is not None:
            self._colbert.delete(filter={REF_DOC_KEY: ref_doc_id})

    def update_ref_doc(self, document, **update_kwargs: Any) -> None:
        """Replace a source document's nodes with those of its new version."""
        self.delete_ref_doc(document.id_)
        self.insert(document, **update_kwargs)

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        out: dict[str, RefDocInfo] = {}
        if self._colbert is None:
            return out
        ids = self._colbert.ids()
        for s in range(0, len(ids), 1000):
            for r in self._colbert.get(ids[s : s + 1000]):
                ref = r.metadata.get(REF_DOC_KEY)
                if ref is not None:
                    info = out.setdefault(ref, RefDocInfo(node_ids=[], metadata={}))
                    info.node_ids.append(r.id)
                    if not info.metadata:
                        info.metadata = {k: v for k, v in r.metadata.items()
                                         if k not in (NODE_KEY, "_node_type", "doc_id", "document_id", REF_DOC_KEY)}
        return out

    def as_retriever(self, **kwargs: Any) -> "ColBERTRetriever":
        """``similarity_top_k`` (default 4), ``filters`` (``MetadataFilters`` or a dict), ``search_kwargs``
        (PLAID knobs; ``mode``/``fusion`` for hybrid search), ``vector_store_query_mode`` (LlamaIndex's name:
        "default" = ColBERT, "hybrid", "sparse"/"text_search" = BM25; needs ``lexical=True``)."""
        if self._colbert is None:
            raise InvalidArgument(f"the ColBERTIndex at {self.path} is empty: insert documents first")
        qmode = kwargs.pop("vector_store_query_mode", None)
        if qmode is not None:
            qmode = getattr(qmode, "value", qmode)
            modes = {"default": "colbert", "hybrid": "hybrid", "sparse": "bm25", "text_search": "bm25"}
            if qmode not in modes:
                raise InvalidArgument(f"vector_store_query_mode {qmode!r} is not supported; use one of {sorted(modes)}")
            kwargs["search_kwargs"] = {**kwargs.get("search_kwargs", {}), "mode": modes[qmode]}
        allowed = {"similarity_top_k", "filters", "search_kwargs", "callback_manager", "verbose"}
        unknown = sorted(set(kwargs) - allowed - {"llm", "response_mode", "streaming", "node_postprocessors",
                                                  "text_qa_template", "refine_template", "summary_template",
                                                  "use_async", "output_cls", "response_synthesizer"})
        if unknown:
            raise InvalidArgument(f"unknown retriever argument(s) {unknown}; supported: {sorted(allowed)}")
        return ColBERTRetriever(self._colbert, **{k: v for k, v in kwargs.items() if k in allowed})


class ColBERTRerank(BaseNodePostprocessor):
    """Rerank nodes with exact MaxSim and keep the best ``top_n``."""

    model: Any = Field(default=None, description="a colbert_retriever.ColBERT, a hub id, a folder or 'default'")
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
        if not isinstance(self.model, ColBERT):
            self.model = load_model(self.model)
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in keep]
        hits = self.model.rerank(query_bundle.query_str, texts, k=min(self.top_n, len(keep)))
        return [NodeWithScore(node=keep[int(h.id)].node, score=h.score) for h in hits]
