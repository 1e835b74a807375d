"""What the LangChain adapters share: search keyword checks, the search call with 0..1 relevance, and
deterministic ids for documents that carry none. (Private: import from ``colbert_retriever.integrations.langchain``.)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

from colbert_retriever import Hit, Index, InvalidArgument, InvalidType, SearchConfig

SEARCH_KEYS = frozenset({"k", "filter", "score_threshold", "ids", "ncells", "centroid_score_threshold", "ndocs",
                         "exhaustive", "mode", "fusion", "depth", "alpha"})
"""What ``search_kwargs`` (and keyword arguments to ``invoke``) may hold."""
LONG_TEXTS = {"split": "chunk", "error": "error", "truncate": "warn"}
"""The ``long_texts`` choices and the ``Index`` ``truncate`` mode each one uses."""
IF_EXISTS = ("upsert", "overwrite", "error")
PROGRESS_MIN_DOCS = 256
LEXICAL_REMEDY = ("call index.add_lexical() once (or build with lexical=True)",
                  "open the store once as ColBERTVectorStore(index_path, lexical=True), or pass lexical=True to "
                  "ColBERTVectorStore.from_documents")
"""The library's remedy for a missing lexical side, and the LangChain way to say it."""


def query_text(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidType(f"the query must be a string, got {type(query).__name__}; pass the question itself, e.g. "
                          f"retriever.invoke(question) or chain the retriever after itemgetter('question')")
    return query


def check_search_kwargs(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - SEARCH_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown search argument(s) {unknown}; supported: {sorted(SEARCH_KEYS)}")
    return kwargs


def search_index(index: Index, query: str, k: int, params: dict) -> list[Hit]:
    """Search with LangChain's keyword arguments (``SEARCH_KEYS`` less k). ``score_threshold`` keeps the hits whose
    0..1 relevance (``Hit.relevance``) reaches it, in every mode."""
    params = dict(params)
    threshold = params.pop("score_threshold", None)
    knobs = {name: params.pop(name) for name in ("ncells", "centroid_score_threshold", "ndocs", "exhaustive")
             if name in params}
    SearchConfig(**knobs)  # checked here, named in the error
    try:
        hits = index.search(query, k=k, **knobs, **params)
    except InvalidArgument as e:
        if LEXICAL_REMEDY[0] in str(e):
            raise InvalidArgument(str(e).replace(*LEXICAL_REMEDY)) from None
        raise
    if threshold is not None:
        hits = [h for h in hits if h.relevance >= threshold]
    return hits


def document_id(text: str, metadata: Optional[dict], seen: Optional[dict] = None) -> str:
    """A deterministic id for a document that carries none: the sha256 of its text and metadata (32 hex digits),
    so that ingesting the same documents again gives the same ids (an upsert, not a second copy). ``seen``
    (per call): a repeat of the same document in one call gets "-2", "-3"... appended, in order."""
    blob = json.dumps([text, metadata or {}], sort_keys=True, ensure_ascii=False, default=str)
    base = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
    if seen is None:
        return base
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


def check_if_exists(if_exists: str) -> str:
    if if_exists not in IF_EXISTS:
        raise InvalidArgument(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    return if_exists


def prepare(texts: Sequence, metadatas: Optional[Sequence], ids: Optional[Sequence], what: str):
    """(texts, metadatas, ids) checked; a missing id is ``document_id`` of its text and metadata."""
    out_texts = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidType(f"{what}[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise InvalidArgument(f"{what}[{i}] is empty: a document needs some text to be searchable")
        out_texts.append(t)
    if metadatas is None:
        metas = [{} for _ in out_texts]
    else:
        metas = [dict(m or {}) for m in metadatas]
        if len(metas) != len(out_texts):
            raise InvalidArgument(f"got {len(out_texts)} texts but {len(metas)} metadatas")
    ids = [None] * len(out_texts) if ids is None else list(ids)
    if len(ids) != len(out_texts):
        raise InvalidArgument(f"got {len(out_texts)} texts but {len(ids)} ids")
    seen: dict = {}
    ids = [document_id(t, m, seen) if i is None else i for t, m, i in zip(out_texts, metas, ids)]
    return out_texts, metas, ids
