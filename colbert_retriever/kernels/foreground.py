"""Searches in flight, and the background compilation stepping aside for them.

Why: one GIL. numba compiles (type inference, lowering, llvmlite's IR builder) mostly in Python, and a search
releases the GIL around each torch operation and must take it back after: with another thread busy in Python,
each take-back waits up to the switch interval (5 ms). Measured on 2 cores with a thread busy in Python beside
it: a text search 0.21 -> 2.5 s, a search from embeddings 40 -> 540 ms (torch kernels), 6 -> 36 ms (numba).

So the background thread runs with a trace function (``step_aside``, ~40% more CPU for the compilation) that,
at each Python call, waits while a search is running (``searching``), unless a foreground thread is compiling
(``compiling_here``: it needs the background thread to release numba's compiler lock). The waits add up to at
most ``PAUSE_FLOOR`` seconds or ``PAUSE_SHARE`` of the time since the thread started, whichever is more, so
back-to-back searches cannot starve the compilation.

It never waits while it holds something a search may need: inside an import (the module's import lock: a search
that imports the same module would wait for the whole pause) or inside ``holding`` (the kernel set's lock). A
pause there once cost the first searches ~2 s each (the pause budget), the search blocked on the paused thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable

PAUSE_FLOOR = 2.0
PAUSE_SHARE = 0.5


class Foreground:
    """Counts of searches in flight and of foreground threads compiling, and the wait for them (thread-safe)."""

    def __init__(self, pause_floor: float = PAUSE_FLOOR, pause_share: float = PAUSE_SHARE):
        self.pause_floor, self.pause_share = pause_floor, pause_share
        self.searches = 0
        self.compiling = 0
        self._cond = threading.Condition(threading.Lock())
        self._held = threading.local()

    @contextlib.contextmanager
    def searching(self):
        with self._cond:
            self.searches += 1
        try:
            yield
        finally:
            with self._cond:
                self.searches = max(0, self.searches - 1)
                self._cond.notify_all()

    def after_fork(self) -> None:
        """In a forked child: the threads counted are gone, and the lock may have been held by one of them."""
        self.searches = self.compiling = 0
        self._cond = threading.Condition(threading.Lock())

    @contextlib.contextmanager
    def compiling_here(self):
        with self._cond:
            self.compiling += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.compiling = max(0, self.compiling - 1)

    @contextlib.contextmanager
    def holding(self):
        """A block of this thread that must not pause (it holds a lock a search may take)."""
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1

    def may_pause(self, frame) -> bool:
        """Whether this thread may pause at ``frame``: not inside ``holding`` nor inside an import."""
        if getattr(self._held, "depth", 0):
            return False
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                return False
            frame = frame.f_back
        return True

    def wait_for_quiet(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self.searches or self.compiling, timeout=timeout)

    def run_stepping_aside(self, fn: Callable, *args) -> None:
        """``fn(*args)`` in this thread, pausing at Python calls while searches run (see the module's docstring).
        A thread that already has a trace function (a debugger, coverage) keeps it and does not pause."""
        if sys.gettrace() is not None:
            fn(*args)
            return
        started, paused = time.monotonic(), [0.0]

        def step_aside(frame, event, arg):
            if self.searches and not self.compiling and self.may_pause(frame):
                budget = max(self.pause_floor, self.pause_share * (time.monotonic() - started)) - paused[0]
                if budget > 0:
                    t = time.monotonic()
                    self.wait_for_quiet(budget)
                    paused[0] += time.monotonic() - t
            return None

        sys.settrace(step_aside)
        try:
            fn(*args)
        finally:
            sys.settrace(None)


FOREGROUND = Foreground()
"""The process's searches (``search.parallel.search_threads`` counts them; the kernel sets' threads step aside)."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=FOREGROUND.after_fork)
