"""colbert-retriever: ColBERTv2 late-interaction retrieval (residual-compressed index + PLAID search), CPU first.

    >>> from colbert_retriever import ColBERT, Index
    >>> index = Index.build("my_index", ["passage one", "passage two"])   # doctest: +SKIP
    >>> index.search("query", k=10)                                        # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import CodecConfig, EncoderConfig, SearchConfig  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    ColbertRetrieverError,
    IncompatibleModelError,
    IndexClosedError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidArgument,
    InvalidType,
)
from .hits import Hit, Record  # noqa: E402
from ._kernels import kernel_backend  # noqa: E402
from .encoder import ColBERT  # noqa: E402
from .models import clear_model_cache, load_model  # noqa: E402
from .index import Index  # noqa: E402

__all__ = [
    "ColBERT", "Index", "Hit", "Record", "load_model", "clear_model_cache", "EncoderConfig", "CodecConfig", "SearchConfig", "ColbertRetrieverError",
    "InvalidArgument", "InvalidType", "IndexNotFoundError", "IndexFormatError", "IncompatibleModelError",
    "CheckpointError", "IndexLockedError", "IndexClosedError", "kernel_backend", "__version__",
]
