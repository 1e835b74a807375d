"""Indexes of precomputed multi-vector embeddings (PyLate encoders, ColPali-style page embeddings, fast-plaid's
inputs): documents given as (n_i, dim) arrays instead of texts.

``GivenEmbeddings`` presents such a collection to the index builder the way a model presents encoded texts
(``encode_documents_packed`` over document numbers), fetching and checking one document at a time, so a
collection larger than memory streams from any sequence with ``len`` and indexing (a list, or a lazy reader).
``EmbeddingsOnly`` stands in for the model of an index built without one: it knows the dimension and refuses to
encode text, naming what to do instead.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..config import EncoderConfig
from ..device import Precision
from ..errors import InvalidArgument, InvalidType

EXTERNAL = "external"
"""The model identity of an index built from embeddings with no model named."""


def as_matrix(x: Any, i: int, dim: Optional[int]) -> torch.Tensor:
    """Document ``i``'s embeddings as a (n, dim) float32 CPU tensor; refuses other shapes, dtypes, empty documents
    and NaN or infinite values, naming the document."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise InvalidType(f"embeddings[{i}] is a numpy array of {x.dtype}; expected floats")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise InvalidType(f"embeddings[{i}] is {type(x).__name__}; expected a (tokens, dim) tensor or numpy array")
    if not x.is_floating_point():
        raise InvalidType(f"embeddings[{i}] is a tensor of {x.dtype}; expected floats")
    if x.dim() != 2 or x.shape[0] == 0 or (dim is not None and x.shape[1] != dim):
        want = f"(tokens >= 1, {dim})" if dim is not None else "(tokens >= 1, dim)"
        raise InvalidArgument(f"embeddings[{i}] has shape {tuple(x.shape)}; expected {want}")
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgument(f"embeddings[{i}] holds NaN or infinite values")
    return x


def check_collection(embeddings: Any, dim: Optional[int] = None) -> int:
    """The collection's dimension (from its first document, or ``dim``); refuses what is not a non-empty sequence.
    Every document is checked again as it is read (``as_matrix``)."""
    if isinstance(embeddings, (torch.Tensor, np.ndarray)) and getattr(embeddings, "ndim", 0) == 3:
        pass  # (n_docs, tokens, dim): a sequence of equally long documents
    elif not (hasattr(embeddings, "__len__") and hasattr(embeddings, "__getitem__")) or isinstance(embeddings, str):
        raise InvalidType(f"embeddings must be a sequence of (tokens, dim) arrays, got {type(embeddings).__name__}")
    if len(embeddings) == 0:
        raise InvalidArgument("embeddings is empty: give at least one document")
    first = as_matrix(embeddings[0], 0, dim)
    return first.shape[1]


class GivenEmbeddings:
    """A collection of per-document embedding matrices, read through the encoder interface the index builder
    uses: ``encode_documents_packed(document numbers)`` returns them packed, L2-normalised (as ColBERT's encoders
    emit them; cosine MaxSim), float32."""

    def __init__(self, embeddings: Sequence, dim: int, normalize: bool = True):
        self.embeddings, self.dim, self.normalize = embeddings, dim, normalize
        self.precision = Precision()

    def encode_documents_packed(self, documents: Sequence[int], batch_size: int = 32, show_progress: bool = False,
                                desc: str = "", progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        pieces = []
        for n, i in enumerate(documents):
            x = as_matrix(self.embeddings[i], i, self.dim)
            pieces.append(torch.nn.functional.normalize(x, dim=-1) if self.normalize else x)
            if progress is not None and (n + 1) % batch_size == 0:
                progress(batch_size)
        if progress is not None and len(documents) % batch_size:
            progress(len(documents) % batch_size)
        return torch.cat(pieces), torch.tensor([p.shape[0] for p in pieces], dtype=torch.long)


class EmbeddingsOnly:
    """The model of an index built from embeddings without one: its dimension, no encoder. ``Index.open`` uses it
    when the index names no model; search such an index with ``search_embeddings`` (or open it with the
    ``model=`` that made the embeddings)."""

    def __init__(self, dim: int, name: str = EXTERNAL, identity: str = EXTERNAL):
        self.name, self.identity = name, identity
        self.config = EncoderConfig(dim=dim)
        self.device = torch.device("cpu")
        self.precision = Precision()

    def with_config(self, config: EncoderConfig) -> "EmbeddingsOnly":
        return EmbeddingsOnly(config.dim, self.name, self.identity)

    def encode_queries(self, *args, **kwargs):
        raise InvalidArgument("this index was built from precomputed embeddings and names no model: search it with "
                              "index.search_embeddings(Q) (Q: the query's (tokens, dim) embeddings), or open it with "
                              "Index.open(path, model=<the encoder that made them>)")

    encode_query_rows = _query_rows = encode_documents_packed = encode_queries

    def __repr__(self) -> str:
        return f"EmbeddingsOnly(dim={self.config.dim}, name={self.name!r})"
