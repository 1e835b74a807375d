"""The linear layers of the inference BERT (``bert.LiteBert``) and the projection, as the caller's mode wants them on
CPU: float16-packed weights for queries (``halfgemm``), oneDNN-packed float32 weights with the bias and the GELU
fused into the product for documents (``onednn_documents``), else the plain layers.

Why the oneDNN path: a document batch is a large product (32 documents x ~200 tokens = ~6k rows), where PyTorch's
``addmm`` first copies the broadcast bias into the output and the GELU is another pass over the 1,536-wide
intermediate activations: on 2 CPU cores those memory passes were ~17 % of the encoder's time (``aten::copy_``
11 %, ``aten::gelu`` 6.5 %, profiled on scifact batches). ``torch.ops.mkldnn._linear_pointwise`` (the op
PyTorch's own compiler emits for CPU linears; in every x86 build with mkldnn) applies the bias and the activation
in the product's epilogue (and the residual add before each LayerNorm likewise), on weights reordered once into
oneDNN's blocked layout. Float32 in, float32 out, same weights: the results differ from ``F.linear`` by summation
order only (max abs difference ~5e-6; document embeddings within cosine 0.99999 of the eager ones).

Nothing here changes a module; the packed weights are cached beside the layer (weak reference) and rebuilt when
its weights change. Where the op is missing (non-x86, builds without mkldnn) ``onednn_available()`` is False and
the plain layers run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import halfgemm

logger = logging.getLogger(__name__)

ROWS_HINT = 4096
"""The batch-size hint oneDNN's weight reorder takes (a document batch has a few thousand rows)."""

_local = threading.local()
_cache: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()  # single layers
_fused_cache: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()  # stacks (``fused``)
_lock = threading.Lock()
ACTS = {None: ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", "")}
"""Activation name -> oneDNN's post-op (attribute, algorithm)."""
_EAGER = {"gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "relu": F.relu}


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build has oneDNN's fused linear (checked once on a small product, bias and GELU)."""
    try:
        w, b, x = torch.randn(8, 4), torch.randn(8), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "gelu", [], "none")
        return bool(torch.allclose(y, F.gelu(F.linear(x, w, b)), atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        logger.debug("oneDNN fused linear unavailable (%s): plain linears are used", e)
        return False


@contextlib.contextmanager
def onednn_documents(on: bool = True):
    """Within this block, on this thread only, ``linear`` runs float32 CPU products on oneDNN-packed weights with
    the bias and activation fused (True, where ``onednn_available``) or as the plain layers (False), whatever
    the encoder would choose inside it (an A/B of the two paths: ``make bench-encode``)."""
    prev = getattr(_local, "on", None)
    _local.on = bool(on) and onednn_available()
    try:
        yield
    finally:
        _local.on = prev


@contextlib.contextmanager
def documents():
    """What ``ColBERT`` enters to encode float32 documents on CPU: the oneDNN path, unless an enclosing
    ``onednn_documents`` chose."""
    if getattr(_local, "on", None) is None:
        with onednn_documents(True):
            yield
    else:
        yield


def cached_layers() -> int:
    """How many layers (or stacks) have oneDNN-packed weights cached: > 0 once the oneDNN path ran."""
    return len(_cache) + len(_fused_cache)


def _applies(layer: nn.Linear, x: torch.Tensor) -> bool:
    return (getattr(_local, "on", None) is True and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.weight.dtype == torch.float32 and not torch.is_grad_enabled())


def _packed(cache: weakref.WeakKeyDictionary, layers: tuple) -> tuple:
    """(packed weight, bias) of the stacked ``layers``, cached on the first in ``cache`` (one cache for single
    layers, one for stacks), rebuilt when a weight changes."""
    key = tuple((w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
                for w, b in ((layer.weight, layer.bias) for layer in layers))
    hit = cache.get(layers[0])
    if hit is None or hit[0] != key:
        w = torch.cat([layer.weight.detach() for layer in layers]).contiguous()
        bias = None
        if any(layer.bias is not None for layer in layers):
            bias = torch.cat([layer.bias.detach() if layer.bias is not None else w.new_zeros(layer.out_features)
                              for layer in layers])
        hit = (key, torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT), bias)
        with _lock:
            cache[layers[0]] = hit
    return hit[1], hit[2]


def _onednn(cache: weakref.WeakKeyDictionary, layers: tuple, x: torch.Tensor, act: Optional[str],
            add: Optional[torch.Tensor] = None) -> torch.Tensor:
    w, b = _packed(cache, layers)
    rows = x.reshape(-1, x.shape[-1])
    if add is not None:
        out = torch.ops.mkldnn._linear_pointwise.binary(rows, add.reshape(rows.shape[0], -1), w, b, "add")
    else:
        attr, algorithm = ACTS[act]
        out = torch.ops.mkldnn._linear_pointwise(rows, w, b, attr, [], algorithm)
    return out.view(*x.shape[:-1], out.shape[-1])


def linear(layer: nn.Linear, x: torch.Tensor, act: Optional[str] = None,
           add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``layer(x)``, then the activation ``act`` (a key of ``ACTS``: None, "gelu" (erf), "gelu_tanh", "relu") or
    plus ``add`` (a residual of the output's shape; not both), in the mode the caller set."""
    if act is not None and add is not None:
        raise ValueError("cpugemm.linear takes an activation or a residual, not both")
    if _applies(layer, x) and (add is None or (add.dtype == torch.float32 and add.is_contiguous())):
        return _onednn(_cache, (layer,), x, act, add)
    y = halfgemm.linear(layer, x)
    if add is not None:
        return y + add
    return _EAGER[act](y) if act else y


def fused(layers: tuple, x: torch.Tensor) -> tuple:
    """``tuple(layer(x) for layer in layers)`` for layers fed the same input, as one product where a packed mode
    applies (an attention's query, key and value)."""
    if _applies(layers[0], x):
        return _onednn(_fused_cache, tuple(layers), x, None).split([layer.out_features for layer in layers], -1)
    return halfgemm.fused(layers, x)
