"""How many threads a search uses: the caller's count while the search runs alone on an idle machine, one when
other searches in this process or other processes' threads compete for the cores.

Why: a parallel step waits at its end for its slowest thread; with more runnable threads than cores that thread
may be descheduled for a whole time slice, and a search (its query encoding above all: ~100 OpenMP regions) pays
that at every step (benchmarks/NOTES.md, session 12: on a loaded box, ``Index.search`` p50 53 ms when searches
limited torch to one thread, 592 ms when they left it at two). ``search_threads`` decides per call; an explicit
count (``SearchConfig(threads=n)``) is used as given.

Nothing process-wide changes. The count goes to the numba kernels (numba keeps its count per calling thread) and
to torch for the calling thread only (``ThreadLocalIntraOp``: OpenMP's per-thread thread count and MKL's
thread-local one), never through ``torch.set_num_threads``, which is process-wide: it resizes torch's shared pools
and clears oneDNN's cached primitives, which a document encode in another thread is using.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from typing import Iterator, Optional

import torch

from ..kernels import dispatch

_active = 0  # searches running in this process (state, not a knob: nothing outside this module sets it)
_active_lock = threading.Lock()
_local = threading.local()  # this thread's decision while a search_threads block runs (nested blocks keep it)


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runnable_elsewhere() -> int:
    """Threads ready to run right now besides the calling one: Linux's /proc/stat ``procs_running`` less one; 0
    where that cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return max(0, int(line.split()[1]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def auto_threads(wanted: int, concurrent: bool) -> int:
    """Threads for one search: 1 when other searches of this process run at the same time; otherwise the cores
    that other runnable threads leave free (at least 1, at most ``wanted``). Threads of this process count as
    others too (a pool's workers still spinning after their last parallel region): the count errs towards one."""
    if concurrent or wanted <= 1:
        return 1
    return max(1, min(wanted, cpu_count() - runnable_elsewhere()))


class ThreadLocalIntraOp:
    """torch's intra-op thread count lowered for the calling thread only: OpenMP's per-thread count (the
    ``omp_set_num_threads`` of the OpenMP runtime beside torch, which torch's parallel loops, fbgemm and oneDNN
    read per thread) and MKL's thread-local count (``MKL_Set_Num_Threads_Local``, when torch exports it). Where
    neither is found (another OpenMP runtime, a torch without OpenMP) ``limit`` changes nothing."""

    def __init__(self):
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        self._omp = self._mkl = None
        for name in ("libgomp*.so*", "libomp*.so*", "libiomp5*.so*", "libomp*.dylib", "libiomp5*.dylib"):
            for path in sorted(glob.glob(os.path.join(lib, name))):
                try:
                    self._omp = ctypes.CDLL(path).omp_set_num_threads
                    break
                except (OSError, AttributeError):
                    continue
            if self._omp is not None:
                break
        for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
            try:
                self._mkl = ctypes.CDLL(os.path.join(lib, name)).MKL_Set_Num_Threads_Local  # the C entry (by value)
                break
            except (OSError, AttributeError):
                continue

    @property
    def available(self) -> bool:
        return self._omp is not None

    @contextlib.contextmanager
    def limit(self, n: int) -> Iterator[None]:
        """At most ``n`` intra-op threads for torch work in the calling thread inside the block (never more than
        torch's count here); the thread's counts as they were after."""
        if self._omp is None:
            yield
            return
        old = torch.get_num_threads()  # also runs torch's once-per-thread setup first, which would undo ours
        if n >= old:
            yield
            return
        self._omp(n)
        prev = self._mkl(n) if self._mkl is not None else None
        try:
            yield
        finally:
            self._omp(old)
            if self._mkl is not None:
                self._mkl(prev)


_intraop: Optional[ThreadLocalIntraOp] = None
_intraop_lock = threading.Lock()


def intraop() -> ThreadLocalIntraOp:
    """The process's ``ThreadLocalIntraOp`` (looked up at the first search)."""
    global _intraop
    with _intraop_lock:
        if _intraop is None:
            _intraop = ThreadLocalIntraOp()
        return _intraop


@contextlib.contextmanager
def search_threads(requested: Optional[int] = None) -> Iterator[int]:
    """Decide the threads of one search (``requested``, else ``auto_threads`` from torch's count for this
    thread); yields the count, which the caller passes to the numba kernels, and limits torch to it in this thread
    meanwhile (``ThreadLocalIntraOp``: the query encoder, the torch kernels). A nested block (a search inside
    ``Index.search``) keeps the outer decision."""
    global _active
    outer = getattr(_local, "threads", None)
    if outer is not None:
        yield outer
        return
    with _active_lock:
        _active += 1
        concurrent = _active > 1
    try:
        n = requested if requested is not None else auto_threads(torch.get_num_threads(), concurrent)
        _local.threads = n
        with dispatch.foreground(), intraop().limit(n):  # (a background compilation steps aside meanwhile)
            yield n
    finally:
        _local.threads = None
        with _active_lock:
            _active -= 1
