"""Frozen configuration dataclasses, saved into checkpoints and into an index's ``metadata.json``."""

from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InvalidArgument, InvalidType

CONFIG_FORMAT_VERSION = 1


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"format_version"})
    if unknown:
        raise InvalidArgument(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(names)}")
    kwargs = {k: v for k, v in data.items() if k in names}
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


class _Config:
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """How text becomes token embeddings.

    ``query_marker``/``doc_marker`` are tokens inserted right after [CLS] (colbert-ai: ``[unused0]``/``[unused1]``;
    PyLate: ``"[Q] "``/``"[D] "``); ``None`` inserts nothing. With ``mask_augmentation`` queries are padded to
    ``query_maxlen`` with [MASK] (ColBERT query augmentation); without it only the real query tokens are scored and
    padding rows are zero. ``skiplist`` holds the words (punctuation by default) whose tokens are dropped from
    documents when ``mask_punctuation`` is true.
    """

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_marker: Optional[str] = "[unused0]"
    doc_marker: Optional[str] = "[unused1]"
    mask_augmentation: bool = True
    attend_to_mask_tokens: bool = False
    mask_punctuation: bool = True
    skiplist: tuple = field(default_factory=lambda: tuple(string.punctuation))
    similarity: str = "cosine"

    def __post_init__(self):
        if self.dim <= 0 or self.query_maxlen < 3 or self.doc_maxlen < 3:
            raise InvalidArgument(
                f"EncoderConfig needs dim > 0 and maxlens >= 3; got dim={self.dim}, "
                f"query_maxlen={self.query_maxlen}, doc_maxlen={self.doc_maxlen}"
            )
        if self.similarity != "cosine":
            raise InvalidArgument(f"similarity={self.similarity!r} is not supported; use 'cosine'")


@dataclass(frozen=True)
class CodecConfig(_Config):
    """Residual compression: ``nbits`` per dimension, ``num_centroids`` (None: ColBERTv2's heuristic, clamped to
    what the k-means sample supports), k-means iterations, the sample budget in token embeddings, and the seed.

    The sample: 2^20 tokens (every token up to ~1M). Measured on scifact's 1.09M tokens at 2 bits
    (``benchmarks/experiments/compression.py``): top-10 overlap of exhaustive search with exact float MaxSim 0.901
    at a 2^18 sample, 0.915 at 2^19, 0.916 at 2^20 (fast-plaid's own 2-bit index: 0.905), for ~8 s more k-means
    per million tokens.

    kmeans: "two-level" (the default from 2,048 centroids on: sqrt(k) coarse clusters, then each split; seconds)
    or "flat" (one k-means over all k centroids, as colbert-ai and fast-plaid run it). On the same scifact tokens
    flat took 148 vs 13 s on 2 cores for the same top-10 overlap (0.916 both; token reconstruction cosine 0.9758
    vs 0.9745): offered for parity, not the default."""

    nbits: int = 2
    num_centroids: Optional[int] = None
    kmeans_niters: int = 4
    kmeans_sample_tokens: int = 1 << 20
    seed: int = 12345
    kmeans: str = "two-level"

    def __post_init__(self):
        if self.nbits not in (1, 2, 4):
            raise InvalidArgument(f"nbits={self.nbits} is not supported; use 1, 2 or 4")
        if self.kmeans not in ("two-level", "flat"):
            raise InvalidArgument(f"kmeans={self.kmeans!r} is not supported; use 'two-level' or 'flat'")
        if self.num_centroids is not None and self.num_centroids < 1:
            raise InvalidArgument(f"num_centroids must be >= 1, got {self.num_centroids}")


KERNELS = ("auto", "torch", "numba", "triton")


def _optional_int(value, name: str, minimum: int = 1):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{name} must be an int or None, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class SearchConfig(_Config):
    """Knobs for one search call, nothing else; validated when made. ``None`` fields take defaults that depend on
    k, the query's length and the index's mean document length (``colbert_retriever.search.plaid.plan``); a knob given
    explicitly is used as is, with PLAID's meaning: probe ``ncells`` centroids per query token, keep ``ndocs``
    documents after stage 2 and ``max(ndocs // 4, k)`` after full centroid interaction, which are scored exactly.
    Stage 2 is PLAID's pruned centroid interaction (centroids scoring below ``centroid_score_threshold`` for
    every query token count 0) when a threshold is given, and probed scoring (``stages.probed_scores``:
    candidates scored from the cells probed for each query token) when it is None, the default. ``exhaustive``
    scores every document exactly.

    How the work runs (same results up to float rounding): ``kernels`` "auto" (numba on CPU when installed,
    Triton on CUDA, else torch), "torch", "numba" or "triton"; ``threads``: threads for the numba kernels of the
    search stages (None: torch's count for the calling thread while the search runs alone on free cores, one when
    other searches or processes compete, see ``search.parallel``); torch's own thread count is never changed."""

    ncells: Optional[int] = None
    centroid_score_threshold: Optional[float] = None
    ndocs: Optional[int] = None
    exhaustive: bool = False
    kernels: str = "auto"
    threads: Optional[int] = None

    def __post_init__(self):
        _optional_int(self.ncells, "ncells")
        _optional_int(self.ndocs, "ndocs")
        _optional_int(self.threads, "threads")
        t = self.centroid_score_threshold
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise InvalidType(f"centroid_score_threshold must be a number, got {type(t).__name__} ({t!r})")
            if not math.isfinite(t):
                raise InvalidArgument(f"centroid_score_threshold must be finite, got {t}")
            object.__setattr__(self, "centroid_score_threshold", float(t))
        if not isinstance(self.exhaustive, bool):
            raise InvalidType(f"exhaustive must be True or False, got {type(self.exhaustive).__name__} "
                              f"({self.exhaustive!r})")
        if self.kernels not in KERNELS:
            raise InvalidArgument(f"kernels={self.kernels!r} is unknown; use one of {KERNELS}")
