"""How many intra-op threads a search (or a query's encoding) uses: the caller's count while it runs alone on an
idle machine, fewer when other searches in this process or other processes compete for the cores.

Why: a search is many small steps, each an OpenMP parallel region; with more runnable threads than cores every
region waits for a descheduled thread (measured: BENCHMARKS.md "Contention"). ``search_threads`` decides per call
and restores the caller's count after; an explicit count (``SearchConfig(threads=n)``) is used as given.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

import torch

_active = 0  # searches running in this process (state, not a knob: nothing outside this module sets it)
_active_lock = threading.Lock()
_local = threading.local()  # nesting depth of search_threads in this thread


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runnable_elsewhere(own_workers: int = 0) -> int:
    """Threads of other processes (or other threads of this one) ready to run right now: Linux's /proc/stat
    ``procs_running`` less the calling thread and ``own_workers`` (this thread's OpenMP workers, which may still
    spin after its last parallel region); 0 where that cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return max(0, int(line.split()[1]) - 1 - own_workers)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def auto_threads(wanted: int, concurrent: bool) -> int:
    """Threads for one search: 1 when other searches of this process run at the same time; otherwise the cores
    that other runnable threads leave free (at least 1, at most ``wanted``)."""
    if concurrent or wanted <= 1:
        return 1
    free = cpu_count() - runnable_elsewhere(wanted - 1)
    return max(1, min(wanted, free))


@contextlib.contextmanager
def search_threads(requested: Optional[int] = None) -> Iterator[int]:
    """Run a block with the threads ``auto_threads`` picks (or ``requested``), in the calling thread only (OpenMP
    keeps the count per thread, so concurrent searches do not see each other's setting); yields the count. A
    nested block (a search inside ``Index.search``, which also encodes the query) keeps the outer decision."""
    global _active
    if getattr(_local, "depth", 0):
        _local.depth += 1
        try:
            yield torch.get_num_threads()
        finally:
            _local.depth -= 1
        return
    with _active_lock:
        _active += 1
        concurrent = _active > 1
    _local.depth = 1
    try:
        old = torch.get_num_threads()
        n = requested if requested is not None else auto_threads(old, concurrent)
        if n == old:
            yield n
            return
        torch.set_num_threads(n)
        try:
            yield n
        finally:
            torch.set_num_threads(old)
    finally:
        _local.depth = 0
        with _active_lock:
            _active -= 1
