"""Kernel dispatch: Triton kernels when the tensors live on CUDA and triton imports, numba kernels on CPU when numba
imports, the torch reference otherwise. The only door to ``colbert_retriever.triton_kernels`` and
the numba kernels (``numba_kernels``, ``numba_drivers``; both imported lazily, never at package import).

Search picks its kernels per call (``SearchConfig(kernels="auto"|"torch"|"numba"|"triton")``, see ``resolve``).
The codec's compress/decompress follow ``with colbert_retriever.kernel_backend("torch"):`` (or ``"triton"``,
``"auto"``), a thread-local switch that ``resolve`` also honours for "auto". Forcing ``"triton"`` on CPU tensors
works only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from typing import Optional

import numpy as np
import torch

from ..config import KERNELS
from ..errors import InvalidArgument
from .foreground import FOREGROUND

_state = threading.local()


@contextlib.contextmanager
def kernel_backend(name: str):
    """Force the kernel backend inside a ``with`` block (thread-local): "auto", "torch", "numba" or "triton". The
    codec's compress/decompress follow it ("numba" leaves them on torch); a search's ``kernels="auto"`` resolves
    to it. A search's explicit ``kernels=`` wins."""
    if name not in KERNELS:
        raise InvalidArgument(f"kernel backend {name!r} is unknown; use one of {KERNELS}")
    old = getattr(_state, "backend", "auto")
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = old


_triton_error: list = []  # why the Triton kernels did not import (filled once, by triton_available)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether triton and every module of ``triton_kernels`` import (once per process; why not: ``_triton_error``)."""
    try:
        import triton  # noqa: F401
    except Exception as e:
        _triton_error.append(f"triton is not installed or failed to import ({type(e).__name__}: "
                             f"{str(e).strip()[:200]}); pip install 'colbert-retriever[triton]'")
        return False
    try:
        from ..triton_kernels import centroid_scores, compress, decompress, maxsim  # noqa: F401
    except Exception as e:  # e.g. a triton release the kernels no longer match, or no CUDA driver for it
        _triton_error.append(f"the Triton kernels failed to import ({type(e).__name__}: {str(e).strip()[:200]})")
        return False
    return True


def triton_import_failure() -> str:
    """Why "auto" cannot pick the Triton kernels on CUDA ("" when it can); the first search to ask warns once."""
    if triton_available():
        return ""
    msg = _triton_error[0] if _triton_error else "triton is not available"
    if not getattr(triton_import_failure, "warned", False):
        triton_import_failure.warned = True
        warnings.warn(f"{msg}; GPU searches and the codec run the torch kernels (slower, same results up to float "
                      f"rounding)", RuntimeWarning, stacklevel=4)
    return msg


def use_triton(t: torch.Tensor) -> bool:
    backend = getattr(_state, "backend", "auto")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise InvalidArgument("kernel backend 'triton' was forced but triton is not installed "
                                  "(pip install 'colbert-retriever[triton]')")
        return True
    if not t.is_cuda:
        return False
    return not triton_import_failure()  # CUDA without the Triton kernels: says why, once




_numba_error: list = []  # why numba did not import (filled once, by numba_available)


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """numba imports, and so do the kernel modules built on it (a numba or llvmlite outside the tested range may
    import but break them): otherwise searches run the torch kernels, and ``Index.open`` still works."""
    try:
        import numba  # noqa: F401
    except Exception as e:  # not installed, or refuses this numpy: searches run the torch kernels
        _numba_error.append(f"numba failed to import ({type(e).__name__}: {str(e).strip()[:200]})")
        return False
    try:
        from . import numba_drivers, numba_ir, numba_kernels  # noqa: F401
    except Exception as e:
        _numba_error.append(f"the numba kernels failed to import with numba {numba.__version__} "
                            f"({type(e).__name__}: {str(e).strip()[:200]})")
        return False
    return True


def resolve(kernels: str, device: torch.device) -> str:
    """The kernel family a search runs: an explicit name as given (checked), "auto" = the ``kernel_backend``
    switch if set, else Triton on CUDA (when it imports), numba on CPU (when it imports), else torch. Whether the
    numba kernels are compiled yet is ``numba_for_search``'s question."""
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
        raise InvalidArgument(f"kernels='triton' was asked for but {(_triton_error or ['triton is unavailable'])[0]}")
    if kernels == "numba":
        if not numba_available():
            why = f": {_numba_error[0]}" if _numba_error else ""
            raise InvalidArgument(f"kernels='numba' was asked for but numba is not installed or does not work "
                                  f"here{why} (pip install 'numba>=0.64,<0.69')")
        if device.type != "cpu":
            raise InvalidArgument(f"kernels='numba' runs on CPU; the index is on {device}")
    return kernels


def auto_fallback(requested: str, resolved: str, device: torch.device) -> str:
    """Why a search that asked for ``requested`` kernels ("auto") on ``device`` runs ``resolved`` = the torch ones:
    numba failed to import (CPU) or the Triton kernels did (CUDA); "" when torch was asked for (by name or by
    ``kernel_backend``) or nothing better exists there. The first search to get a reason warns once."""
    if requested != "auto" or resolved != "torch" or getattr(_state, "backend", "auto") != "auto":
        return ""
    if device.type == "cpu":
        return numba_import_failure()
    if device.type == "cuda":
        return triton_import_failure()
    return ""


def numba_import_failure() -> str:
    """Why "auto" cannot pick numba on CPU ("" when it can); the first search to ask warns once."""
    if numba_available():
        return ""
    msg = _numba_error[0] if _numba_error else "numba is not installed"
    if not getattr(numba_import_failure, "warned", False):
        numba_import_failure.warned = True
        warnings.warn(f"{msg}; searches run the torch kernels (slower, same results)", RuntimeWarning, stacklevel=4)
    return msg


# ---------------------------------------------------------------- the numba kernels (``numba_kernels``)
@contextlib.contextmanager
def using_numba_kernels(kernel_set):
    """Searches and numba stage calls in this thread (inside the block) use ``kernel_set`` (a
    ``numba_kernels.KernelSet``) instead of the process's: tests force a compilation error through one."""
    old = getattr(_state, "numba_set", None)
    _state.numba_set = kernel_set
    try:
        yield kernel_set
    finally:
        _state.numba_set = old


def numba_kernel_set():
    """The kernel set this thread's searches use: the one ``using_numba_kernels`` gave, else the process's."""
    ks = getattr(_state, "numba_set", None)
    if ks is not None:
        return ks
    from .numba_kernels import default_set

    return default_set()


def numba_groups(code: str, widths, parallel: bool) -> list:
    """The kernel groups searches with these padded widths (None: the plain loops) and code dtype need, in the
    order to compile them: the shared group, the serial variants, then (``parallel``) the parallel ones."""
    from .numba_kernels import SHARED, SHARED_PARALLEL, group_key

    serial = [SHARED, *(group_key(w, code, False) for w in widths)]
    return serial + ([SHARED_PARALLEL, *(group_key(w, code, True) for w in widths)] if parallel else [])


def warm_numba(code: str, max_query_len: Optional[int] = None, parallel: bool = True) -> None:
    """Start compiling (or loading from numba's cache) the kernels an index's searches will use, in the kernel
    set's background thread: the widths queries of up to ``max_query_len`` tokens pad to (None: every
    vector-register width), for its code dtype (``code``: "uint8", "uint16" or "int32"), serial variants first,
    then (``parallel``) the parallel ones. Searches meanwhile run the torch kernels.

    ``import numba`` and of the kernel modules happen here, in the calling thread (``Index.open``/``build``: ~0.3-0.5
    s on a quiet machine), not in the background: an import holds its module's lock and long stretches of the GIL,
    and a search that started meanwhile would wait for it. Nothing happens when numba does not import or
    ``COLBERT_RETRIEVER_WARM_KERNELS=0`` is set (``background_compilation``)."""
    if not background_compilation() or not numba_available():
        return
    from .numba_drivers import kernel_width, padded_width
    from .numba_ir import SIMD_WIDTHS

    if max_query_len is None:
        widths = list(SIMD_WIDTHS)
    else:
        needed = {kernel_width(padded_width(q)) for q in range(1, max_query_len + 1)}
        widths = [w for w in (*SIMD_WIDTHS, None) if w in needed]
    numba_kernel_set().start(numba_groups(code, widths, parallel))


def wait_for_kernels(timeout: Optional[float] = None) -> bool:
    """Wait until the background work ``warm_numba`` started is done (benchmarks and tests that want every search
    on the numba kernels); True when it is."""
    return not numba_available() or numba_kernel_set().wait(timeout)


def foreground():
    """A context for a search (encoding included): the background compilation steps aside while it runs
    (``foreground``)."""
    return FOREGROUND.searching()


def background_compilation() -> bool:
    """False when ``COLBERT_RETRIEVER_WARM_KERNELS=0`` is set: no background thread; a search compiles the numba
    kernels it needs when it first needs them (and waits)."""
    return os.environ.get("COLBERT_RETRIEVER_WARM_KERNELS", "1") != "0"


_CODE_NAMES = {torch.uint8: "uint8", torch.uint16: "uint16", torch.int32: "int32"}


def numba_code_name(codes: torch.Tensor) -> str:
    """The name of an index's code dtype (a codes tensor's) as the numba kernel groups key it."""
    return _CODE_NAMES.get(codes.dtype, str(codes.dtype))


def numba_for_search(code: str, q_len: int, threads: int, requested: str):
    """(kernel set, "") when the numba kernels for this search (a query of ``q_len`` tokens on an index with
    ``code`` dtype codes, on ``threads`` threads) are ready; else (None, why). When numba was asked for by name
    (``requested`` "numba", or the ``kernel_backend`` switch), or with no background compilation, they are
    compiled here first; otherwise they are queued for the background thread and this search runs the torch
    kernels. A compilation that failed gives
    (None, its error) and one warning per process."""
    if code not in _CODE_NAMES.values():  # arrays built by hand (an index stores uint8/uint16/int32 codes)
        return None, f"codes of dtype {code}: the numba kernels take {', '.join(_CODE_NAMES.values())} codes"
    ks = numba_kernel_set()
    key = (code, q_len, threads > 1)
    if key in ks.searchable:  # the common case: everything this search needs was ready before
        return ks, ""
    from .numba_drivers import kernel_width, padded_width

    wait = (requested == "numba" or (requested == "auto" and getattr(_state, "backend", "auto") == "numba")
            or not background_compilation())
    w = kernel_width(padded_width(q_len))
    need = numba_groups(code, [w], False)
    if wait:
        ks.ensure(numba_groups(code, [w], threads > 1))
    elif not all(ks.ready(g) for g in need):
        ks.start(numba_groups(code, [w], threads > 1))
    failed = ks.failure(need)
    if failed:
        if not ks.warned:
            ks.warned = True
            warnings.warn(f"{failed}; searches run the torch kernels (slower, same results up to float rounding)",
                          RuntimeWarning, stacklevel=5)
        return None, failed
    if not all(ks.ready(g) for g in need):
        return None, "numba kernels compiling (first searches of this process)"
    if threads > 1 and not all(ks.ready(g) for g in numba_groups(code, [w], True)):
        ks.start(numba_groups(code, [w], True))  # the parallel variants, for the next searches
    else:
        ks.searchable.add(key)
    return ks, ""


def numba_tables(ks, Q, codec, code: str, threads: int):
    """One query's operands for the numba kernels, computed from its real rows ``Q`` (``Tables.from_query``)."""
    from .numba_drivers import Tables

    return Tables.from_query(ks, Q, codec, code, threads)


def _stage_tables(Sc, arrays, threads, tables):
    """The tables a stage-level numba call runs on: the search's, or laid out from scores ``Sc`` (compiling the
    kernels here if they are not ready)."""
    if tables is not None:
        return tables
    from .numba_drivers import Tables, code_name, kernel_width, padded_width

    ks = numba_kernel_set()
    code = code_name(arrays.codes.parts[0])
    ks.ensure(numba_groups(code, [kernel_width(padded_width(Sc.shape[1]))], threads > 1))
    return Tables.from_scores(ks, Sc, threads)


def numba_centroid_interaction(Sc, arrays, pids, threads, tables=None):
    from .numba_drivers import centroid_interaction as k

    return k(_stage_tables(Sc, arrays, threads, tables), arrays, pids)


def numba_probed_scores(ScT, ncells, impute, arrays, allowed, tables=None, **how):
    """Probed scoring on the numba kernels, from the search's tables (their padded score rows) or from ScT."""
    from .numba_drivers import probed_scores as k
    from .numba_kernels import SHARED

    if tables is not None:
        return k(tables.ks, tables.rows, tables.K, ncells, impute, arrays, allowed, **how)
    ks = numba_kernel_set()
    ks.ensure([SHARED])
    rows = ScT.float().contiguous().numpy() if isinstance(ScT, torch.Tensor) else np.ascontiguousarray(ScT)
    return k(ks, rows, rows.shape[1], ncells, impute, arrays, allowed, **how)


def numba_exact_scores(arrays, pids, Sc, lut_q, threads, tables=None):
    from .numba_drivers import exact_scores as k

    return k(_stage_tables(Sc, arrays, threads, tables), arrays, pids, lut_q)


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
