"""The process-wide model cache behind every ``model=`` argument (``load_model``): a name is loaded once per
(name, device, documents dtype) and shared, read-only (``ColBERT.with_config``/``with_precision`` give views)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Union

from ..device import dtype_name, resolve_device, resolve_precision
from ..errors import InvalidArgument, InvalidType
from .encoder import ColBERT
from .loading import DEFAULT_MODEL_NAME

_CACHE: dict[tuple, ColBERT] = {}
_KEY_LOCKS: dict[tuple, threading.Lock] = {}  # one per key asked for: held while that key's model loads
_CACHE_LOCK = threading.Lock()  # guards the two dicts, never held while a model loads


def _cache_key(name: Union[str, Path], device, dtype) -> tuple:
    name = str(name)
    if name in ("default", DEFAULT_MODEL_NAME):
        name = DEFAULT_MODEL_NAME
    elif Path(name).exists():
        name = str(Path(name).resolve())
    dev = resolve_device(device)
    return name, str(dev), dtype_name(resolve_precision(dev, dtype).documents)


def load_model(model: Union["ColBERT", str, Path, None] = None, device=None, dtype="auto") -> ColBERT:
    """The model a ``model=`` argument names: a ``ColBERT`` is returned as it is; ``None`` or ``"default"`` is
    the offline default model; any other string or path is a hub id or a local checkpoint folder. Loaded
    models are cached per process by (name, device, resolved documents dtype): naming the same model twice
    returns the same instance, which nobody may change in place (``with_config``/``with_precision`` give views;
    ``clear_model_cache()`` empties the cache; ``ColBERT.from_pretrained`` always loads a fresh copy, e.g. to
    fine-tune it). Threads asking for one key at once wait for one load; loads of different keys run at the
    same time."""
    if isinstance(model, ColBERT):
        return model
    if model is None:
        model = "default"
    if isinstance(model, bool) or not isinstance(model, (str, Path)):
        raise InvalidType(f"model must be a ColBERT, a hub id, a checkpoint folder or 'default', got "
                                    f"{type(model).__name__}")
    if not str(model).strip():
        raise InvalidArgument("model is an empty string; give a hub id, a checkpoint folder or 'default'")
    key = _cache_key(model, device, dtype)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # one load per key even when threads ask at once
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is None:
            if key[0] == DEFAULT_MODEL_NAME:  # inference only: the light backbone (no transformers import)
                hit = ColBERT.default(device=device, dtype=dtype, fast=True)
            else:
                hit = ColBERT.from_pretrained(model, device=device, dtype=dtype, fast=True)
            hit._shared = True
            with _CACHE_LOCK:
                _CACHE[key] = hit
        return hit


def clear_model_cache() -> None:
    """Forget the models ``load_model`` cached (they are freed once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
