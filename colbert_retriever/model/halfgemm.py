"""Matrix products against float16-stored weights on CPU (fbgemm's packed fp16 GEMM, shipped in torch's x86 CPU
builds: the weights are rounded to float16 and packed once; inputs, accumulation and outputs stay float32).

Why: for a few rows (one query's tokens) a float32 product is bound by reading the weights; fp16 weights are half
the bytes and fbgemm's packing is done once instead of per call (measured: BENCHMARKS.md "Query path"). Where the
weights are already float16 values (an index's centroids, stored
as float16) the result equals the float32 product up to summation order. Where fbgemm is missing (ARM, other
builds) nothing here is used: ``available()`` is False and callers keep their float32 path.

Nothing here changes a module: ``linear(layer, x)`` is called by code that owns the forward pass (``_bert.LiteBert``,
``ColBERT``'s projection) in place of ``layer(x)``, and uses packed weights only inside ``packed_linears()`` on
the calling thread. Packed weights are cached beside the layer (a weak reference: nothing is kept alive) and
rebuilt when its weights change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when this torch build can run fbgemm's fp16 GEMM (checked once, on a 2 x 2 product)."""
    try:
        w = torch.eye(2)
        packed = torch.ops.quantized.linear_prepack_fp16(w, None)
        out = torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 2), packed)
        return bool(torch.equal(out, torch.ones(1, 2)))
    except (RuntimeError, AttributeError, NotImplementedError) as e:  # no fbgemm in this build
        logger.debug("fbgemm fp16 GEMM unavailable (%s): float32 products are used", e)
        return False


class PackedWeights:
    """``weight`` (out, in) float32 on CPU (and an optional bias), rounded to float16 and packed for fbgemm.
    Calling it on x (..., in) float32 returns ``x @ weight.T + bias`` (float32) with the rounded weights."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        self.shape = tuple(weight.shape)
        self._packed = torch.ops.quantized.linear_prepack_fp16(
            weight.detach().float().contiguous(), None if bias is None else bias.detach().float().contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self._packed)


_local = threading.local()
_cache: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()  # single layers
_fused_cache: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()  # stacks (``fused``)
_cache_lock = threading.Lock()


@contextlib.contextmanager
def packed_linears():
    """Within this block, on this thread only, ``linear`` and ``fused`` multiply float32 CPU inputs by packed
    float16 weights (nothing changes for other threads, e.g. one encoding documents meanwhile)."""
    prev = getattr(_local, "on", False)
    _local.on = True
    try:
        yield
    finally:
        _local.on = prev


def applies(layer: nn.Linear, x: torch.Tensor) -> bool:
    """Whether ``layer`` fed ``x`` multiplies by packed float16 weights: inside ``packed_linears`` on this thread,
    float32 CPU input and weights, no gradient wanted."""
    return (getattr(_local, "on", False) and x.device.type == "cpu"
            and x.dtype == torch.float32 and layer.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and layer.weight.requires_grad))


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, with packed float16 weights where ``applies``."""
    if applies(layer, x):
        return _cached(_cache, (layer,))(x)
    return layer(x)


def fused(layers: tuple, x: torch.Tensor) -> tuple:
    """``tuple(layer(x) for layer in layers)`` for layers fed the same input (an attention's query, key and
    value); where ``applies``, one packed product of their stacked weights, split. Why: for one query's ~20 rows
    fbgemm splits one wide product across cores better than three narrow ones (benchmarks/NOTES.md, "Moved from
    docstrings")."""
    if applies(layers[0], x):
        return _cached(_fused_cache, tuple(layers))(x).split([layer.out_features for layer in layers], -1)
    return tuple(layer(x) for layer in layers)


def _cached(cache: weakref.WeakKeyDictionary, layers: tuple) -> PackedWeights:
    """The packed, stacked weights of ``layers``, cached on the first layer in ``cache`` (one cache for single
    layers, one for stacks, so a layer used both ways does not evict itself), rebuilt when any weight changes.
    Looked up and built under one lock: threads encoding with one model at once get the same packed weights."""
    key = tuple((w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
                for w, b in ((layer.weight, layer.bias) for layer in layers))
    with _cache_lock:
        hit = cache.get(layers[0])
        if hit is None or hit[0] != key:
            bias = None
            if any(layer.bias is not None for layer in layers):
                bias = torch.cat([layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
                                  for layer in layers])
            hit = (key, PackedWeights(torch.cat([layer.weight for layer in layers]), bias))
            cache[layers[0]] = hit
        return hit[1]
