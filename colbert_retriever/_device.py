"""The one place that decides devices and compute dtypes."""

from __future__ import annotations

import functools
from typing import Union

import torch

from .errors import InvalidArgument

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


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
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 roughly doubles encoding."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """Compute dtype of the encoder. ``None`` or ``"auto"``: bf16 on CPUs with native bf16, fp16 on CUDA,
    fp32 otherwise. Scores and stored embeddings are always float32/float16 regardless."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidArgument(f"dtype={dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise InvalidArgument(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]
