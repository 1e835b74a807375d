"""How many threads a search's kernels use: the caller's count while the search runs alone on an idle machine, one
when other searches in this process or other processes' threads compete for the cores.

Why: a parallel kernel waits at its end for its slowest thread; with more runnable threads than cores that thread
may be descheduled for a whole time slice. ``search_threads`` decides per call; an explicit count
(``SearchConfig(threads=n)``) is used as given.

Nothing process-wide changes: the count is handed to the numba kernels, which set numba's thread count for the
calling thread only (numba keeps it per thread). torch's thread count is read, never set: ``torch.set_num_threads``
is process-wide (it resizes torch's shared pools and clears oneDNN's cached primitives, which a document encode
in another thread is using), and a search's own torch work is a few small operations; the query encoder and the
torch kernels run with the process's count.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def search_threads(requested: Optional[int] = None) -> Iterator[int]:
    """Decide the threads of one search (``requested``, else ``auto_threads`` from torch's count for this
    thread, read and left as it is); yields the count, which the caller passes to the kernels. A nested block (a
    search inside ``Index.search``) keeps the outer decision."""
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
        with dispatch.foreground():  # a background compilation of the numba kernels steps aside meanwhile
            yield n
    finally:
        _local.threads = None
        with _active_lock:
            _active -= 1
