"""The one place that decides devices and numeric precision.

``resolve_device`` turns a ``device=`` argument into a ``torch.device`` once, at the public boundary. ``Precision``
is the whole numeric policy of a model and the indexes it builds, resolved once from (device, ``dtype=``
argument, CPU features) by ``resolve_precision``; every other module asks it instead of deciding on its own. It
is recorded, resolved, in an index's provenance and in a sharded index's manifest, so workers and readers use the
policy the index was built with rather than their own guess.

The CPU probe (``cpu_supports_bf16``) reads /proc/cpuinfo; ``COLBERT_RETRIEVER_CPU_BF16=0`` or ``=1`` makes it
answer as another kind of CPU would (tests exercise both branches on any machine).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .errors import InvalidArgument

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
CPU_BF16_ENV = "COLBERT_RETRIEVER_CPU_BF16"

BF16_DOCUMENTS_ON_BF16_CPUS = True
"""Whether ``dtype="auto"`` encodes documents in bfloat16 on CPUs with native bf16 (AVX512-BF16, AMX). The rule:
keep bf16 only if nDCG@10 moves by at most 0.002 on each of scifact, cranfield and cisi. Measured on an AMD EPYC
with avx512_bf16 (BENCHMARKS.md "Document encoding precision", ``make bench-precision``; float32 queries in
both): scifact 0.7144 -> 0.7158, cranfield 0.3758 -> 0.3762, cisi 0.4010 -> 0.3996; token cosine >= 0.9998; about
1.4-3x the documents per second. CPUs without native bf16 keep float32 (emulated bf16 is slower there)."""


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None`` means CPU (the library never moves work to a GPU unasked); ``"auto"`` picks CUDA when present."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidArgument(f"device={device!r} is not a valid torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device={device!r} was asked for but CUDA is not available on this machine")
    return dev


@functools.lru_cache(maxsize=1)
def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX). ``COLBERT_RETRIEVER_CPU_BF16`` set to
    0 or 1 overrides the probe (to test the other branch)."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo_has_bf16()


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A ``dtype=`` argument as a torch dtype; None for "auto" (or None)."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in _NAMES:
            raise InvalidArgument(f"dtype={dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype not in _DTYPES:
        raise InvalidArgument(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class Precision:
    """The numeric policy. documents: the encoder's compute dtype for documents (float32 weights under autocast
    when bf16 on CPU; on CUDA the weights' dtype, which queries take too; on CPU queries always run in float32:
    they are never compressed, so their error reaches every score); fp16_query_weights: on CPU, query encoding
    multiplies by the linear layers' weights rounded to float16 (fbgemm, float32 activations and sums) where
    torch has it; assignment: centroid assignment and the k-means sample (float32 everywhere: the same index from
    the same text on any machine);
    half_centroid_scores: on CPU the query-centroid product runs on packed float16 centroids (stored as float16,
    so the same values); half_interaction: on CPU full centroid interaction (a ranking-only stage) gathers
    float16 scores. Exact scores are always float32."""

    documents: torch.dtype = torch.float32
    fp16_query_weights: bool = True
    assignment: torch.dtype = torch.float32
    half_centroid_scores: bool = True
    half_interaction: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: dtype_name(v) if isinstance(v, torch.dtype) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Precision":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "queries"}  # recorded by 0.2 indexes, never a knob (see the docstring)
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InvalidArgument(f"unknown precision keys {unknown}; known: {sorted(fields)}")
        kw = {}
        for k, v in d.items():
            kw[k] = parse_dtype(v) if isinstance(fields[k].default, torch.dtype) else bool(v)
            if kw[k] is None:
                raise InvalidArgument(f"precision.{k} must name a dtype, got {v!r}")
        return cls(**kw)

    def replace(self, **changes) -> "Precision":
        return dataclasses.replace(self, **changes)


def resolve_precision(device: torch.device, dtype: Union[str, torch.dtype, None] = "auto") -> Precision:
    """The policy for a model on ``device`` given its ``dtype=`` argument. "auto" (or None): on CUDA float16 for
    documents and queries; on CPU float32 queries, and documents in bf16 only on CPUs with native bf16 when
    ``BF16_DOCUMENTS_ON_BF16_CPUS`` (measured), else float32. An explicit dtype sets the documents' dtype (and
    the queries' on CUDA); CPU queries stay float32."""
    explicit = parse_dtype(dtype)
    if device.type == "cuda":
        d = explicit or torch.float16
        return Precision(documents=d, fp16_query_weights=False, half_centroid_scores=False,
                         half_interaction=False)
    if explicit is None:
        explicit = torch.bfloat16 if (BF16_DOCUMENTS_ON_BF16_CPUS and cpu_supports_bf16()) else torch.float32
    return Precision(documents=explicit)
