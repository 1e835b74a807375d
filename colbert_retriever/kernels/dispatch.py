"""Kernel dispatch: Triton kernels when the tensors live on CUDA and triton imports, numba kernels on CPU when numba
imports, the torch reference otherwise. The only door to ``colbert_retriever.triton_kernels`` and
``colbert_retriever.kernels._numba`` (both imported lazily, never at package import).

Search picks its kernels per call (``SearchConfig(kernels="auto"|"torch"|"numba"|"triton")``, see ``resolve``).
The codec's compress/decompress follow ``with colbert_retriever.kernel_backend("torch"):`` (or ``"triton"``,
``"auto"``), a thread-local switch that ``resolve`` also honours for "auto". Forcing ``"triton"`` on CPU tensors
works only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

from ..config import KERNELS
from ..errors import InvalidArgument

_state = threading.local()
BACKENDS = KERNELS


@contextlib.contextmanager
def kernel_backend(name: str):
    """Force the kernel backend inside a ``with`` block (thread-local): "auto", "torch", "numba" or "triton". The
    codec's compress/decompress follow it ("numba" leaves them on torch); a search's ``kernels="auto"`` resolves
    to it. A search's explicit ``kernels=`` wins."""
    if name not in BACKENDS:
        raise InvalidArgument(f"kernel backend {name!r} is unknown; use one of {BACKENDS}")
    old = getattr(_state, "backend", "auto")
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = old


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        from .. import triton_kernels  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    backend = getattr(_state, "backend", "auto")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise InvalidArgument("kernel backend 'triton' was forced but triton is not installed "
                                  "(pip install 'colbert-retriever[triton]')")
        return True
    return t.is_cuda and triton_available()




@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def resolve(kernels: str, device: torch.device) -> str:
    """The kernel family a search runs: an explicit name as given (checked), "auto" = the ``kernel_backend``
    switch if set, else Triton on CUDA (when it imports), numba on CPU (when it imports), else torch."""
    if kernels not in KERNELS:
        raise InvalidArgument(f"kernels={kernels!r} is unknown; use one of {KERNELS}")
    if kernels == "auto":
        forced = getattr(_state, "backend", "auto")
        if forced != "auto":
            kernels = forced
        elif device.type == "cuda":
            kernels = "triton" if triton_available() else "torch"
        else:
            kernels = "numba" if numba_available() else "torch"
    if kernels == "triton" and not triton_available():
        raise InvalidArgument("kernels='triton' was asked for but triton is not installed "
                              "(pip install 'colbert-retriever[triton]')")
    if kernels == "numba":
        if not numba_available():
            raise InvalidArgument("kernels='numba' was asked for but numba is not installed (pip install numba)")
        if device.type != "cpu":
            raise InvalidArgument(f"kernels='numba' runs on CPU; the index is on {device}")
    return kernels


def numba_tables(Sc, ScT=None, threads=1):
    from ._numba import Tables

    return Tables(Sc, ScT, threads)


def numba_centroid_interaction(Sc, arrays, pids, threads, tables=None):
    from ._numba import centroid_interaction as k

    return k(Sc, arrays, pids, threads, tables)


def numba_probed_scores(ScT, ncells, impute, arrays, allowed, **how):
    from ._numba import probed_scores as k

    return k(ScT, ncells, impute, arrays, allowed, **how)


def numba_exact_scores(arrays, pids, Sc, lut_q, threads, tables=None):
    from ._numba import exact_scores as k

    return k(arrays, pids, Sc, lut_q, threads, tables)


def decompress(codes, packed, centroids, bucket_weights, nbits):
    from ..triton_kernels.decompress import decompress as k

    return k(codes, packed, centroids, bucket_weights, nbits)


def maxsim_compressed(Q, codes, packed, centroids, bucket_weights, nbits, offsets):
    from ..triton_kernels.maxsim import maxsim_compressed as k

    return k(Q, codes, packed, centroids, bucket_weights, nbits, offsets)


def maxsim(Q, embs, offsets):
    from ..triton_kernels.maxsim import maxsim as k

    return k(Q, embs, offsets)


def centroid_interaction(Sc, codes, doc_offsets, pids, threshold=None):
    from ..triton_kernels.centroid_scores import centroid_interaction as k

    return k(Sc, codes, doc_offsets, pids, threshold)


def compress(x, centroids, bucket_cutoffs, nbits):
    from ..triton_kernels.compress import compress as k

    return k(x, centroids, bucket_cutoffs, nbits)
