"""LlamaIndex adapters.

- ``ColBERTIndex``: a managed index (the shape of LlamaIndex's managed indices): ``from_documents``, ``insert``,
  ``insert_nodes``, ``delete_ref_doc``, ``delete_nodes``, ``update_ref_doc``, ``refresh_ref_docs``,
  ``ref_doc_info``, ``as_retriever(similarity_top_k, filters)``, ``as_query_engine(llm=...)``. It persists in its
  index folder (every write is committed there, ref-doc hashes included): ``ColBERTIndex(index_path)`` or
  ``ColBERTIndex.load_from_disk(index_path)`` reopens it in any process, and ``persist(persist_dir)`` copies it
  (the convention of LlamaIndex's ColBERT managed index; ``load_index_from_storage`` is for indices whose nodes
  live in a ``StorageContext``, which this one does not use). Each node is stored whole (its own JSON, as
  LlamaIndex vector stores do: relationships, ``ref_doc_id``, offsets, excluded metadata keys, node type), so
  retrieval returns the nodes that were inserted.
- ``ColBERTRetriever`` (a ``BaseRetriever`` over an ``Index``; ``aretrieve`` runs in a worker thread) and
  ``ColBERTRerank`` (a ``BaseNodePostprocessor``).

    from colbert_retriever.integrations.llama_index import ColBERTIndex
    index = ColBERTIndex.from_documents(SimpleDirectoryReader("docs").load_data(), index_path="my_index")
    nodes = index.as_retriever(similarity_top_k=5).retrieve("what is late interaction?")

The default splitter (``colbert_splitter``) is LlamaIndex's ``SentenceSplitter`` counting the model's own tokens,
with chunks that fit ``doc_maxlen`` (metadata included, as the splitter does) and a 1/8 overlap: nothing is
truncated. Its node ids are deterministic (``stable_node_id``: the source file or document, the chunk's position
and the document's hash), and ``from_documents`` over an existing index upserts (the rule of ``Index.build``):
re-running the same ingestion leaves the index as one run left it.

llama-index-core makes no network call here: it ships its NLTK and tiktoken caches, and nothing in these adapters
reads ``Settings.llm`` or ``Settings.embed_model``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

try:
    from llama_index.core.data_structs.data_structs import IndexDict
    from llama_index.core.indices.managed.base import BaseManagedIndex
    from llama_index.core.schema import BaseNode
    from llama_index.core.storage.docstore.types import RefDocInfo
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "colbert_retriever.integrations.llama_index needs llama-index-core: "
        "pip install 'colbert-retriever[llama-index]'"
    ) from e

from colbert_retriever import ColBERT, Index, InvalidArgument, load_model
from colbert_retriever.store import storage

from ._li_retrieval import (HASH_KEY, NODE_KEY, REF_DOC_KEY, SOURCE_KEYS, ColBERTRerank, ColBERTRetriever,
                            _if_exists, _nodes_to_rows, _PROGRESS_MIN_DOCS, colbert_splitter, stable_node_id,
                            to_colbert_filter)

logger = logging.getLogger(__name__)

__all__ = ["ColBERTIndex", "ColBERTRetriever", "ColBERTRerank", "colbert_splitter", "stable_node_id",
           "to_colbert_filter", "SOURCE_KEYS", "HASH_KEY", "NODE_KEY", "REF_DOC_KEY"]


class ColBERTIndex(BaseManagedIndex):
    """A LlamaIndex managed index over a colbert-retriever index folder.

    ``ColBERTIndex(index_path)`` opens the index there (or starts empty: the folder is created by the first
    insert); ``ColBERTIndex.from_documents(documents, index_path=...)`` splits (``colbert_splitter`` unless
    ``transformations`` are given) and indexes; over an existing index it upserts (``if_exists``, the rule of
    ``Index.build``: "upsert" by default, "overwrite", "error"). model: a ``ColBERT``, hub id, folder or
    "default"; device: "cpu" (default), "cuda" or "auto". Every write is committed to the folder, the hashes
    ``refresh_ref_docs`` compares included: reopen it in any process with ``ColBERTIndex(index_path)`` or
    ``ColBERTIndex.load_from_disk(index_path)``. pool_factor: token pooling when it creates its index
    (``Index.build``'s: None pools a new index by 2, 1 turns pooling off; later inserts pool as the index
    records).
    """

    def __init__(self, index_path: Union[str, Path], model: Union[ColBERT, str, None] = None,
                 nodes: Optional[Sequence[BaseNode]] = None, *, nbits: int = 2, if_exists: str = "upsert",
                 overwrite: Optional[bool] = None, show_progress: Optional[bool] = None,
                 transformations: Optional[list] = None, lexical: bool = False, device=None, callback_manager=None,
                 hashes: Optional[dict] = None, pool_factor: Optional[int] = None, **kwargs: Any) -> None:
        self.path = Path(index_path)
        self.device = device
        self.model = load_model(model, device=device)
        self.nbits, self.progress, self.lexical = nbits, show_progress, lexical
        self.pool_factor = pool_factor  # Index.build's; an existing index pools as it records
        self.if_exists = _if_exists(if_exists, overwrite)
        self._colbert: Optional[Index] = None
        if storage.holds_our_index(self.path):
            if self.if_exists == "error" and nodes is not None:
                raise InvalidArgument(f"an index already exists at {self.path}; if_exists='upsert' adds to it by "
                                      f"id, 'overwrite' replaces it")
            self._colbert = Index.open(self.path, model=self.model, device=device)
            self.model = self._colbert.model
            if lexical and not self._colbert.has_lexical:
                self._colbert.add_lexical()
        super().__init__(index_struct=IndexDict(summary="colbert-retriever index"), show_progress=bool(show_progress),
                         callback_manager=callback_manager, transformations=transformations or
                         [colbert_splitter(self.model)], **kwargs)
        # the nodes live in the index folder, not in the storage context: keep its index store empty, so that
        # load_index_from_storage on a persisted context says there is no index there (reopen with load_from_disk)
        self.storage_context.index_store.delete_index_struct(self.index_struct.index_id)
        if nodes is not None:
            self._add(nodes, hashes, overwrite=self.if_exists == "overwrite")

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], storage_context=None, show_progress: bool = False,
                       callback_manager=None, transformations: Optional[list] = None, *,
                       index_path: Union[str, Path, None] = None, model: Union[ColBERT, str, None] = None,
                       device=None, **kwargs: Any) -> "ColBERTIndex":
        from llama_index.core.ingestion import run_transformations

        if index_path is None:
            hint = (f" (to index into {str(storage_context)!r}, pass index_path={str(storage_context)!r}: the "
                    f"second positional argument is LlamaIndex's storage_context)"
                    if isinstance(storage_context, (str, Path)) else "")
            raise InvalidArgument(f"ColBERTIndex.from_documents needs index_path= (the index folder){hint}")
        model = load_model(model, device=device)
        transformations = transformations or [colbert_splitter(model)]
        nodes = run_transformations(list(documents), transformations, show_progress=show_progress)
        return cls(index_path, model, nodes, show_progress=show_progress or None, device=device,
                   callback_manager=callback_manager, transformations=transformations,
                   hashes={d.id_: d.hash for d in documents}, **kwargs)

    @classmethod
    def load_from_disk(cls, persist_dir: Union[str, Path], model: Union[ColBERT, str, None] = None,
                       **kwargs: Any) -> "ColBERTIndex":
        """Reopen a persisted index (its folder). ``from_persist_dir`` is the same."""
        if not storage.holds_our_index(Path(persist_dir)):
            raise InvalidArgument(f"{persist_dir} holds no colbert-retriever index")
        return cls(persist_dir, model, **kwargs)

    from_persist_dir = load_from_disk

    def persist(self, persist_dir: Union[str, Path, None] = None) -> None:
        """Everything is already committed to ``index_path``. With another ``persist_dir``, copy the index there
        (a new or empty folder; the committed files, metadata.json last), to reopen with ``load_from_disk``."""
        if persist_dir is None or Path(persist_dir).resolve() == self.path.resolve() or self._colbert is None:
            return
        dst = Path(persist_dir)
        if dst.exists() and any(dst.iterdir()):
            raise InvalidArgument(f"persist_dir {dst} is not empty; give a new or empty folder")
        dst.mkdir(parents=True, exist_ok=True)
        meta = self._colbert.metadata
        names = {meta["docstore"], *meta["codec"]["files"].values()}
        for seg in meta["segments"]:
            names |= set(seg["checksums"])
        for name in sorted(names):  # regular files only, never through a link
            storage.copy_file(self.path / name, dst / name)
        storage.copy_file(self.path / "metadata.json", dst / "metadata.json")

    @property
    def colbert_index(self) -> Optional[Index]:
        """The underlying ``colbert_retriever.Index`` (None while empty)."""
        return self._colbert

    def _add(self, nodes: Sequence[BaseNode], hashes: Optional[dict] = None, overwrite: bool = False) -> None:
        texts, ids, metas = _nodes_to_rows(nodes, hashes)
        if not texts:
            return
        progress = self.progress if self.progress is not None else len(texts) > _PROGRESS_MIN_DOCS
        if self._colbert is None or overwrite:
            self._colbert = Index.build(self.path, texts, ids=ids, metadatas=metas, model=self.model,
                                        nbits=self.nbits, if_exists="overwrite" if overwrite else "upsert",
                                        show_progress=progress, lexical=self.lexical, device=self.device,
                                        pool_factor=self.pool_factor)
        else:
            self._colbert.add(texts, ids=ids, metadatas=metas, on_conflict="replace", show_progress=progress)
        if self._colbert.needs_recluster:
            self._colbert.compact(recluster=True, show_progress=progress)

    # the BaseIndex hooks --------------------------------------------------------------------------------
    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        self._add(nodes)

    def insert(self, document, **insert_kwargs: Any) -> None:
        """Insert a document (split by the index's transformations); its hash is stored with its nodes."""
        from llama_index.core.ingestion import run_transformations

        with self._callback_manager.as_trace("insert"):
            nodes = run_transformations([document], self._transformations, show_progress=self._show_progress)
            self._add(nodes, {document.id_: document.hash})

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

    def stored_hash(self, ref_doc_id: str) -> Optional[str]:
        """The hash of the document ``ref_doc_id`` as last inserted (None: not in the index, or inserted as bare
        nodes)."""
        if self._colbert is None:
            return None
        ids = self._colbert.ids(filter={REF_DOC_KEY: ref_doc_id})
        return self._colbert.get(ids[:1])[0].metadata.get(HASH_KEY) if ids else None

    def refresh_ref_docs(self, documents: Sequence, **update_kwargs: Any) -> list[bool]:
        """Insert documents not in the index, replace those whose hash (text and metadata) changed, leave the
        others untouched; True for each document inserted or replaced. The hashes are read from the index folder,
        so this works in a new process on a reopened index."""
        with self._callback_manager.as_trace("refresh_ref_docs"):
            out = []
            for document in documents:
                stored = self.stored_hash(document.id_)
                if stored == document.hash:
                    out.append(False)
                    continue
                if stored is None and self._colbert is not None and self._colbert.ids(
                        filter={REF_DOC_KEY: document.id_}):
                    self.delete_ref_doc(document.id_)  # nodes inserted without a hash: replaced once
                self.update_ref_doc(document) if stored is not None else self.insert(document)
                out.append(True)
            return out

    async def arefresh_ref_docs(self, documents: Sequence, **update_kwargs: Any) -> list[bool]:
        return await asyncio.to_thread(self.refresh_ref_docs, documents, **update_kwargs)

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        out: dict[str, RefDocInfo] = {}
        if self._colbert is None:
            return out
        ids = self._colbert.ids()
        skip = (NODE_KEY, "_node_type", "doc_id", "document_id", REF_DOC_KEY, HASH_KEY)
        for s in range(0, len(ids), 1000):
            for r in self._colbert.get(ids[s : s + 1000]):
                ref = r.metadata.get(REF_DOC_KEY)
                if ref is not None:
                    info = out.setdefault(ref, RefDocInfo(node_ids=[], metadata={}))
                    info.node_ids.append(r.id)
                    if not info.metadata:
                        info.metadata = {k: v for k, v in r.metadata.items() if k not in skip}
        return out

    def as_retriever(self, **kwargs: Any) -> "ColBERTRetriever":
        """``similarity_top_k`` (default 4), ``filters`` (``MetadataFilters`` or a dict), ``search_kwargs``
        (PLAID knobs; ``mode``/``fusion``/``alpha`` for hybrid search), ``vector_store_query_mode`` (LlamaIndex's
        name: "default" = ColBERT, "hybrid", "sparse"/"text_search" = BM25; needs ``lexical=True``), ``alpha``
        (LlamaIndex's hybrid weight of the dense side, 0..1), ``normalize_scores`` (0..1 node scores)."""
        if self._colbert is None:
            raise InvalidArgument(f"the ColBERTIndex at {self.path} is empty: insert documents first")
        qmode = kwargs.pop("vector_store_query_mode", None)
        search_kwargs = dict(kwargs.pop("search_kwargs", None) or {})
        if qmode is not None:
            qmode = getattr(qmode, "value", qmode)
            modes = {"default": "colbert", "hybrid": "hybrid", "sparse": "bm25", "text_search": "bm25"}
            if qmode not in modes:
                raise InvalidArgument(f"vector_store_query_mode {qmode!r} is not supported; use one of {sorted(modes)}")
            search_kwargs["mode"] = modes[qmode]
        alpha = kwargs.pop("alpha", None)
        if alpha is not None:
            search_kwargs["alpha"] = alpha
        allowed = {"similarity_top_k", "filters", "callback_manager", "verbose", "normalize_scores"}
        unknown = sorted(set(kwargs) - allowed - {"llm", "response_mode", "streaming", "node_postprocessors",
                                                  "text_qa_template", "refine_template", "summary_template",
                                                  "use_async", "output_cls", "response_synthesizer"})
        if unknown:
            raise InvalidArgument(f"unknown retriever argument(s) {unknown}; supported: "
                                  f"{sorted(allowed | {'search_kwargs', 'vector_store_query_mode', 'alpha'})}")
        return ColBERTRetriever(self._colbert, search_kwargs=search_kwargs,
                                **{k: v for k, v in kwargs.items() if k in allowed})
