"""``Index.build_from_embeddings`` and ``Index.add_embeddings``: an index over precomputed multi-vector embeddings
(see ``external.py``). The index is the same kind of folder as one built from texts: the documents' embeddings are
compressed with the same codec, searched by the same PLAID stages, stored with ids, metadata and (optional)
texts; filters, upserts, deletes and compaction work alike. Queries are embeddings too (``search_embeddings``),
unless the index names the model that made the embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from .. import _validate
from ..config import CodecConfig
from ..errors import InvalidArgument, InvalidType
from ..model.cache import load_model
from ..store import storage
from . import writer
from .external import EXTERNAL, EmbeddingsOnly, GivenEmbeddings, check_collection
from .ingest import ON_CONFLICT, Rows, check_mode, if_exists_mode
from .pooling import check_factor


def _texts(texts: Optional[Sequence[str]], n: int) -> list[str]:
    """Stored texts: as given (non-empty strings, one per document) or empty ones."""
    if texts is None:
        return [""] * n
    texts = _validate.texts_list(texts, "texts")
    if len(texts) != n:
        raise InvalidArgument(f"texts has {len(texts)} entries but there are {n} documents' embeddings")
    return texts


def _model_for(model, name: Optional[str], dim: int, device):
    if model is None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidType(f"name must be a non-empty string, got {name!r}")
        return EmbeddingsOnly(dim, name or EXTERNAL)
    model = load_model(model, device=device)
    if model.config.dim != dim:
        raise InvalidArgument(f"the embeddings have dim={dim} but the model makes dim={model.config.dim}")
    return model


def build_from_embeddings(cls, path: Union[str, Path], embeddings: Sequence, ids=None, metadatas=None, texts=None,
                          *, model=None, name: Optional[str] = None, nbits: Optional[int] = None,
                          codec_config: Optional[CodecConfig] = None, if_exists: str = "upsert",
                          show_progress: bool = True, device=None, lock_timeout: float = 60.0,
                          lexical: bool = False, chunk_docs: int = 1024, provenance: Optional[dict] = None,
                          pool_factor: Optional[int] = None, codec=None):
    """See ``Index.build_from_embeddings``."""
    path = _validate.path_arg(path)
    if_exists = if_exists_mode(if_exists)
    dim = check_collection(embeddings)
    n = len(embeddings)
    ids = _validate.ids_list(ids, n) if ids is not None else [str(i) for i in range(n)]
    metadatas = _validate.metadata_list(metadatas, n)
    stored = _texts(texts, n)
    if lexical and texts is None:
        raise InvalidArgument("lexical=True needs texts (the BM25 side indexes them)")
    if codec_config is not None and not isinstance(codec_config, CodecConfig):
        raise InvalidType(f"codec_config must be a CodecConfig, got {type(codec_config).__name__}")
    codec_config = codec_config or CodecConfig(nbits=2 if nbits is None else _validate.positive_int(nbits, "nbits"))
    if (dim * codec_config.nbits) % 8:
        raise InvalidArgument(f"dim={dim} x nbits={codec_config.nbits} must be a multiple of 8 bits (the residuals "
                              f"are packed in bytes)")
    lock_timeout = _validate.lock_timeout(lock_timeout)
    if pool_factor is not None:
        check_factor(pool_factor)
    model = _model_for(model, name, dim, device)
    if if_exists == "upsert" and storage.holds_our_index(path):
        if codec is not None:
            raise InvalidArgument(f"the index at {path} already exists with its own codec; pass "
                                  f"if_exists='overwrite' to rebuild it with the codec given")
        index = cls.open(path, model=model if not isinstance(model, EmbeddingsOnly) else None, device=device,
                         lock_timeout=lock_timeout)
        index.add_embeddings(embeddings, ids, metadatas, texts, on_conflict="replace", show_progress=show_progress,
                             pool_factor=pool_factor)
        return index
    writer.build(path, Rows(ids, stored, metadatas), model, codec_config, batch_size=256, chunk_docs=chunk_docs,
                 show_progress=show_progress, overwrite=if_exists == "overwrite",
                 provenance={"source": "embeddings", **(provenance or {})}, codec=codec, lock_timeout=lock_timeout,
                 lexical=lexical, encoder=GivenEmbeddings(embeddings, dim), sources=range(n),
                 pool_factor=check_factor(pool_factor))
    return cls(path, model, device, lock_timeout=lock_timeout)


def add_embeddings(index, embeddings: Sequence, ids=None, metadatas=None, texts=None, *, on_conflict: str = "error",
                   show_progress: bool = False, merge: bool = True, pool_factor: Optional[int] = None) -> list[str]:
    """See ``Index.add_embeddings``."""
    import uuid

    dim = check_collection(embeddings, index.model.config.dim)
    n = len(embeddings)
    ids = _validate.ids_list(ids, n) if ids is not None else [uuid.uuid4().hex for _ in range(n)]
    keep_metadata = metadatas is None
    metadatas = _validate.metadata_list(metadatas, n)
    check_mode("on_conflict", on_conflict, ON_CONFLICT)
    rows = Rows(ids, _texts(texts, n), metadatas)
    index._writer.add(rows, on_conflict, 256, show_progress, _validate.flag(merge, "merge"),
                      keep_metadata=keep_metadata, encoder=GivenEmbeddings(embeddings, dim), sources=range(n),
                      pool_factor=None if pool_factor is None else check_factor(pool_factor))
    return ids
