"""colbert-retriever: ColBERTv2 late-interaction retrieval (residual-compressed index + PLAID search), CPU first.

    >>> from colbert_retriever import ColBERT, Index
    >>> index = Index.build("my_index", ["passage one", "passage two"])   # doctest: +SKIP
    >>> index.search("query", k=10)                                        # doctest: +SKIP
"""

from ._version import __version__
from .config import CodecConfig, EncoderConfig, SearchConfig
from .errors import (
    CheckpointError,
    ColbertRetrieverError,
    DiskFullError,
    IncompatibleModelError,
    IndexClosedError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidArgument,
    InvalidType,
)
from .hits import Hit, Record
from .index import Index
from .kernels.dispatch import kernel_backend
from .model.cache import clear_model_cache, load_model
from .model.encoder import ColBERT

__all__ = [
    "ColBERT", "Index", "Hit", "Record", "load_model", "clear_model_cache", "EncoderConfig", "CodecConfig",
    "SearchConfig", "ColbertRetrieverError", "InvalidArgument", "InvalidType", "IndexNotFoundError",
    "IndexFormatError", "IncompatibleModelError", "CheckpointError", "IndexLockedError", "IndexClosedError",
    "IndexWriteError", "DiskFullError",
    "kernel_backend", "__version__",
]
