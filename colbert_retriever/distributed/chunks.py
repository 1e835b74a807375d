"""Encoded documents on their way from the encoders (Ray Data ``map_batches`` workers) to the shards: one row per
document, in columns Arrow carries as they are (strings and bytes), so that a document's passages never part.

Columns: ``id``, ``shard``, ``text`` (the whole text), ``metadata`` (JSON), ``spans`` (JSON ``[[passage, start,
end], ...]`` for a text indexed as passages, else ""), ``emb`` (the passages' token embeddings, packed, as raw
bytes of ``dtype``), ``dtype``, ``lens`` (JSON: tokens per passage), ``normalize`` (precomputed embeddings are
L2-normalised by the shard, as ``Index.build_from_embeddings`` does; the encoder's already are).
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InvalidArgument
from ..indexing.external import as_matrix
from ..indexing.ingest import Rows, prepare_rows
from .routing import shard_of

COLUMNS = ("id", "shard", "text", "metadata", "spans", "emb", "dtype", "lens", "normalize")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _pack(t: torch.Tensor) -> tuple[bytes, str]:
    t = t.detach().to("cpu").contiguous()
    name = str(t.dtype).replace("torch.", "")
    if name not in _DTYPES:
        t, name = t.float(), "float32"
    return t.view(torch.uint8).numpy().tobytes(), name


def _columns(docs: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for c in COLUMNS:
        values = [d[c] for d in docs]
        out[c] = np.array(values, dtype=np.int64) if c == "shard" else (
            np.array(values, dtype=bool) if c == "normalize" else np.array(values, dtype=object))
    return out


def encode(model, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[str], num_shards: int,
           truncate: str, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Encode documents (``metadatas`` as JSON strings) with ``model``: texts longer than the model are passages
    (``truncate="chunk"``) as ``Index.build`` makes them."""
    metas = [json.loads(m) for m in metadatas]
    rows = prepare_rows(model, list(ids), list(texts), metas, truncate)
    embs, lengths = model.encode_documents_packed(rows.texts, batch_size=batch_size)
    pieces = torch.split(embs, lengths.tolist())
    docs, r = [], 0
    for doc_id, text, meta in zip(ids, texts, metadatas):
        passages = [r]  # a document's rows: one, or its passages numbered 0, 1, ... (prepare_rows' order)
        r += 1
        if rows.spans is not None and rows.spans[passages[0]] is not None:
            while r < len(rows.ids) and rows.spans[r] is not None and rows.spans[r][0] == len(passages):
                passages.append(r)
                r += 1
        spans = None if rows.spans is None or rows.spans[passages[0]] is None else [list(rows.spans[j])
                                                                                     for j in passages]
        emb, dtype = _pack(torch.cat([pieces[j] for j in passages]))
        docs.append({"id": doc_id, "shard": shard_of(doc_id, num_shards), "text": text, "metadata": meta,
                     "spans": json.dumps(spans) if spans else "", "emb": emb, "dtype": dtype,
                     "lens": json.dumps([int(lengths[j]) for j in passages]), "normalize": False})
    if r != len(rows.ids):
        raise AssertionError("passages out of step with their documents")
    return _columns(docs)


def pack_embeddings(ids: Sequence[str], embeddings: Sequence, texts: Sequence[str], metadatas: Sequence[str],
                    num_shards: int, dim: Optional[int]) -> dict[str, np.ndarray]:
    """Precomputed embeddings (one (tokens, dim) array per document), checked as ``Index.build_from_embeddings``
    checks them, the error naming the document's id."""
    docs = []
    for doc_id, e, text, meta in zip(ids, embeddings, texts, metadatas):
        if isinstance(e, (list, tuple)) or (isinstance(e, np.ndarray) and e.dtype == object):
            e = np.stack([np.asarray(row, dtype=np.float32) for row in e]) if len(e) else np.zeros((0, 0), "f4")
        try:
            x = as_matrix(e, 0, dim)
        except InvalidArgument as err:
            raise InvalidArgument(str(err).replace("embeddings[0]", f"the embeddings of document {doc_id!r}")) from None
        emb, dtype = _pack(x)
        docs.append({"id": doc_id, "shard": shard_of(doc_id, num_shards), "text": text, "metadata": meta,
                     "spans": "", "emb": emb, "dtype": dtype, "lens": json.dumps([int(x.shape[0])]),
                     "normalize": True})
    return _columns(docs)


def decode(chunk: dict, dim: int) -> tuple[dict, bool]:
    """id -> (text, metadata, [(span or None, embeddings)] per passage) from a chunk of encoded documents (an id
    given twice: its last copy), and whether the embeddings still need L2-normalising."""
    docs: dict = {}
    for i in range(len(chunk["id"])):
        doc_id, text = str(chunk["id"][i]), str(chunk["text"][i])
        flat = torch.frombuffer(bytearray(chunk["emb"][i]), dtype=torch.uint8).view(_DTYPES[str(chunk["dtype"][i])])
        passages = torch.split(flat.view(-1, dim), json.loads(chunk["lens"][i]))
        spans = json.loads(chunk["spans"][i]) if chunk["spans"][i] else [None]
        docs.pop(doc_id, None)
        docs[doc_id] = (text, json.loads(chunk["metadata"][i]), list(zip(spans, passages)))
    normalize = bool(len(chunk["normalize"]) and chunk["normalize"][0])
    return docs, normalize


def to_rows(docs: dict) -> tuple[Rows, list[torch.Tensor]]:
    """Document-store rows (one per passage) and their embeddings, from ``decode``'s documents."""
    rows = Rows([], [], [], [])
    embs: list[torch.Tensor] = []
    for doc_id, (text, meta, passages) in docs.items():
        for sp, e in passages:
            rows.ids.append(doc_id)
            rows.metadatas.append(meta)
            rows.texts.append(text if sp is None else text[sp[1] : sp[2]])
            rows.spans.append(None if sp is None else tuple(sp))
            embs.append(e)
    if all(sp is None for sp in rows.spans):
        rows.spans = None
    return rows, embs
