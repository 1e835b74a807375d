"""Kernel dispatch: a Triton kernel when the tensors live on CUDA and triton imports, the torch reference
otherwise. The only door to ``colbert_retriever.triton_kernels`` (imported lazily, never at package import).

One switch forces either path: ``with colbert_retriever.kernel_backend("torch"):`` (or ``"triton"``, ``"auto"``).
Forcing ``"triton"`` on CPU tensors works only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

from .errors import InvalidArgument

_state = threading.local()
BACKENDS = ("auto", "torch", "triton")


@contextlib.contextmanager
def kernel_backend(name: str):
    """Force the kernel backend inside a ``with`` block (thread-local): "auto", "torch" or "triton"."""
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

        from colbert_retriever import triton_kernels  # noqa: F401
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


def decompress(codes, packed, centroids, bucket_weights, nbits):
    from colbert_retriever.triton_kernels.decompress import decompress as k

    return k(codes, packed, centroids, bucket_weights, nbits)


def maxsim_compressed(Q, codes, packed, centroids, bucket_weights, nbits, offsets):
    from colbert_retriever.triton_kernels.maxsim import maxsim_compressed as k

    return k(Q, codes, packed, centroids, bucket_weights, nbits, offsets)


def maxsim(Q, embs, offsets):
    from colbert_retriever.triton_kernels.maxsim import maxsim as k

    return k(Q, embs, offsets)


def centroid_interaction(Sc, codes, doc_offsets, pids, threshold=None):
    from colbert_retriever.triton_kernels.centroid_scores import centroid_interaction as k

    return k(Sc, codes, doc_offsets, pids, threshold)


def compress(x, centroids, bucket_cutoffs, nbits):
    from colbert_retriever.triton_kernels.compress import compress as k

    return k(x, centroids, bucket_cutoffs, nbits)
