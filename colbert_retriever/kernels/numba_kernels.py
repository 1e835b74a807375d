"""The numba kernels of a process (``KernelSet``): compiled for explicit signatures, in groups a search needs
together, ahead of the searches (a background thread started by ``Index.open``/``build``), with a torch fallback
when they are not ready or cannot be compiled.

Groups: ``SHARED`` (the probe's kernels, the query's centroid scores and lookup table: any width),
``SHARED_PARALLEL`` (the scores' parallel variant), and per (padded query width, code dtype, parallel or serial)
full centroid interaction and the exact stage (one factory per width: ``width_functions``). A search runs on
numba only when its groups are ready (``ready``); until then it runs the torch twins, so no search waits for a
compilation and, once a group is ready, no search pays one (numba dispatches a compiled signature without taking
its compiler lock).

Compiled code is cached on disk (numba's ``cache=True``: beside these files, or in the user's cache folder when
the package folder is read-only), so only the first process on a machine compiles; the others load (~0.1 s per
group). Cache entries are named with a digest of this folder's kernel sources: numba checks only the file that
defines a function, and a kernel's cached machine code includes the functions it calls from the other files.

Every kernel is compiled without fast-math (``OPTIONS``): ``ir_float_flags`` lists the flags in compiled IR,
which the tests require to be none.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import types
import zlib
from pathlib import Path
from typing import Callable, Optional

import numba
from numba import types as nt
from numba.core.compiler import Compiler

from . import numba_ir, numba_loops
from .foreground import FOREGROUND, Foreground

logger = logging.getLogger(__name__)

OPTIONS = dict(cache=True, nogil=True, error_model="numpy")
"""Every kernel's numba options. No ``fastmath``: with it numba marks every float instruction ``fast`` (``reassoc``
lets LLVM reorder sums per target: 8-lane partial sums for AVX2, 16-lane for AVX-512; ``nnan``/``ninf`` make the
-inf that starts every running maximum undefined; ``contract`` fuses a multiply and an add where the target has
FMA), so no flag could be kept without letting a result depend on the CPU."""


class NoAlias(Compiler):
    """numba's compiler, with every array argument of the function declared not to share memory with another
    (LLVM ``noalias``, what numba itself declares for the bodies of parallel loops it proves alias-free). Without
    it LLVM must assume an output (a running maximum, an accumulator) may overlap a table it reads, so each
    inner loop re-checks the overlap and keeps its values in memory (the exact stage measured markedly slower).
    The rule it brings: **no kernel may be given two arrays that overlap
    where it writes** (each caller allocates its outputs and scratch fresh)."""

    def define_pipelines(self):
        if hasattr(self.state.flags, "noalias"):  # a numba without the flag compiles as before, only slower
            self.state.flags.noalias = True
        return super().define_pipelines()


def _digest() -> str:
    here = Path(__file__).parent
    text = b"".join((here / f).read_bytes() for f in ("numba_loops.py", "numba_ir.py"))
    return format(zlib.crc32(text + repr(sorted(OPTIONS.items())).encode()), "08x")[:6]


TAG = _digest()
"""Part of every cached kernel's name: a change to the kernels' sources or options gets new cache entries."""


def bind(fn, name: str, **names):
    """``fn`` under another name (numba caches each name apart), with the global ``names`` bound to other objects."""
    clone = types.FunctionType(fn.__code__, dict(fn.__globals__, **names), name, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = name
    return clone


# ---------------------------------------------------------------- signatures
F32, F32_2D, I64, I32, U8_2D, BOOL = (nt.float32[::1], nt.float32[:, ::1], nt.int64[::1], nt.int32[::1],
                                      nt.uint8[:, ::1], nt.boolean[::1])
CODE_TYPES = {"uint8": nt.uint8, "uint16": nt.uint16, "int32": nt.int32}
"""Centroid-id dtypes (``codec.residual.code_dtype``) -> numba scalar types."""

SHARED = ("shared",)
SHARED_PARALLEL = ("shared", "parallel")
_SHARED_SIGS = {
    "probe_top": (F32_2D, nt.int64, nt.int64, nt.int64[:, ::1], F32_2D),
    "probe_mark": (I32, I64, nt.int64, I64, BOOL, BOOL, I64, nt.int64),
    "probe_slots": (BOOL, I64, nt.int64, I32, nt.boolean, F32, F32),
    "probe_best": (I32, I64, nt.int64, I64, F32, nt.int64, nt.int64, BOOL, I32, F32),
    "probe_sums": (F32, nt.int64, F32),
    "query_lut": (F32_2D, F32_2D, F32),
    "scores": (F32_2D, F32_2D, F32, F32_2D, nt.int64),
}
_PARALLEL_SHARED = ("scores",)


def _width_sigs(code: str) -> dict:
    c = CODE_TYPES[code][::1]
    return {"ci": (F32, nt.int64, nt.int64, c, I64, I64, F32),
            "exact": (F32, F32, nt.int64, nt.int64, c, U8_2D, F32, I64, I64, F32)}


def group_key(width: Optional[int], code: str, parallel: bool) -> tuple:
    """The group of a padded width (None: any width, the plain loops), a code dtype name, a variant."""
    return (width, code, bool(parallel))


def width_functions(width: Optional[int], jit: Callable) -> dict:
    """The per-row functions the drivers of padded width ``width`` call, compiled by ``jit`` (None: the plain
    loops of ``numba_loops``, for any width)."""
    opts = dict(OPTIONS, pipeline_class=NoAlias)
    if width is None:
        return {name: jit(**opts)(bind(fn, f"{fn.__name__}_any_{TAG}")) for name, fn in
                (("_CI_DOC", numba_loops.ci_doc), ("_EXACT_DOC", numba_loops.exact_doc))}
    return {"_CI_DOC": jit(**opts)(bind(numba_ir.ci_doc_simd, f"ci_doc_{width}_{TAG}", _CI_W=numba_ir.ci_ir(width))),
            "_EXACT_DOC": jit(**opts)(bind(numba_ir.exact_doc_simd, f"exact_doc_{width}_{TAG}",
                                           _MAXSIM_W=numba_ir.maxsim_ir(width)))}


class KernelSet:
    """The process's numba kernels (``default_set``), or a set of one's own (tests: ``jit`` replaces
    ``numba.njit``, e.g. to force a compilation error). Its background thread steps aside for the searches that
    ``foreground`` counts (see ``foreground``). Thread-safe."""

    def __init__(self, jit: Optional[Callable] = None, foreground: Foreground = FOREGROUND):
        self._jit = jit or numba.njit
        self._fg = foreground
        self._lock = threading.Lock()
        self._parallel_lock = threading.Lock()
        self._funcs: dict = {}  # width -> its per-row functions
        self._disp: dict = {}  # (name, width, parallel) -> dispatcher
        self._state: dict = {}  # group -> "ready" | "queued" | error message
        self._queue: list = []
        self._thread: Optional[threading.Thread] = None
        self._busy = False  # the background thread has work (set before it starts, cleared when it ends)
        self.warned = False  # the one fallback warning was given (``dispatch`` gives it)
        self.searchable: set = set()  # (code, q_len, parallel) whose groups were all ready (``dispatch``'s cache)
        self.no_compile: Optional[str] = None  # set in a child forked while compiling: nothing compiles there

    # ------------------------------------------------------------ dispatchers
    def _dispatcher(self, name: str, width: Optional[int], parallel: bool):
        key = (name, width, parallel)
        d = self._disp.get(key)  # made once: a search never takes the lock for a kernel that exists
        if d is not None:
            return d
        with self._fg.holding(), self._lock:  # (the background thread does not pause holding the lock)
            d = self._disp.get(key)
            if d is None:
                if name in _SHARED_SIGS:
                    fn = getattr(numba_loops, name)
                    names = ({"_SKIP_BELOW": numba_ir.skip_below_ir()} if name == "probe_top" else
                             {"_SCORES_T": numba_ir.scores_ir()} if name == "scores" else {})
                    variant = "_parallel" if parallel else ""
                    d = self._jit(parallel=parallel, **OPTIONS, pipeline_class=NoAlias)(
                        bind(fn, f"{name}{variant}_{TAG}", **names))
                else:
                    if width not in self._funcs:
                        self._funcs[width] = width_functions(width, self._jit)
                    variant = "parallel" if parallel else "serial"
                    d = self._jit(parallel=parallel, **OPTIONS)(
                        bind(getattr(numba_loops, name), f"{name}_{width or 'any'}_{variant}_{TAG}",
                             **self._funcs[width]))
                self._disp[key] = d
        return d

    def members(self, group: tuple) -> list:
        """[(dispatcher, signature)] of a group."""
        if group == SHARED:
            return [(self._dispatcher(n, None, False), sig) for n, sig in _SHARED_SIGS.items()]
        if group == SHARED_PARALLEL:
            return [(self._dispatcher(n, None, True), _SHARED_SIGS[n]) for n in _PARALLEL_SHARED]
        width, code, parallel = group
        return [(self._dispatcher(n, width, parallel), sig) for n, sig in _width_sigs(code).items()]

    def kernel(self, name: str, width: Optional[int] = None, parallel: bool = False):
        return self._dispatcher(name, width, parallel)

    # ------------------------------------------------------------ readiness
    def state(self, group: tuple) -> Optional[str]:
        """"ready", "queued", an error message (it failed to compile), or None (never asked for)."""
        return self._state.get(group)

    def ready(self, group: tuple) -> bool:
        return self._state.get(group) == "ready"

    def failure(self, groups) -> Optional[str]:
        """The first error among ``groups`` (or why nothing compiles in this process), else None."""
        for g in groups:
            s = self._state.get(g)
            if s not in (None, "ready", "queued"):
                return s
        return self.no_compile if any(not self.ready(g) for g in groups) else None

    def ensure(self, groups) -> None:
        """Compile (or load) ``groups`` in the calling thread, waiting for numba's compiler lock if the background
        thread holds it (which then does not step aside)."""
        if all(self.ready(g) for g in groups):
            return
        with self._fg.compiling_here():
            for g in groups:
                self._compile(g)

    def start(self, groups) -> None:
        """Queue ``groups`` for the background thread (started if it is not running)."""
        with self._fg.holding(), self._lock:
            if self.no_compile:
                return
            new = [g for g in groups if g not in self._state]
            for g in new:
                self._state[g] = "queued"
            self._queue.extend(new)
            if self._queue and not self._busy:
                self._busy = True
                self._thread = threading.Thread(target=self._fg.run_stepping_aside, args=(self._drain,),
                                                name="colbert-retriever-numba-warmup", daemon=True)
                self._thread.start()

    def compiling(self) -> bool:
        return self._busy

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the background thread to finish what it was given; True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._busy and (deadline is None or time.monotonic() < deadline):
            t = self._thread
            if t is not None and t.is_alive():
                t.join(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
            else:
                time.sleep(0.01)  # between ``_busy`` being set and the thread starting
        return not self._busy

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return
                g = self._queue.pop(0)
            self._compile(g)

    def _compile(self, group: tuple) -> None:
        if self._state.get(group) not in (None, "queued"):
            return
        if self.no_compile:
            with self._lock:
                self._state[group] = self.no_compile
            return
        try:
            for d, sig in self.members(group):
                d.compile(sig)
            state = "ready"
        except Exception as e:  # any failure of numba or LLVM: the searches fall back to the torch kernels
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            state = f"the numba kernels failed to compile ({type(e).__name__}: {msg[:200]})"
            logger.debug("numba kernel group %s failed to compile", group, exc_info=True)
        with self._lock:
            self._state[group] = state

    def after_fork(self) -> None:
        """In a child forked while this set compiled: numba's compiler lock may be held by a thread that does not
        exist here, so nothing more compiles; groups ready before the fork stay usable."""
        if self._busy:
            self.no_compile = "numba kernels unavailable: this process was forked while they compiled"
            self._queue.clear()
            self._thread, self._busy = None, False
            for g, s in list(self._state.items()):
                if s == "queued":
                    self._state[g] = self.no_compile

    # ------------------------------------------------------------ running
    def run(self, name: str, width: Optional[int], threads: int, code: str, *args) -> None:
        """Run a width kernel: its parallel variant with ``threads`` threads (numba's count for the calling
        thread, restored after) when more than one is wanted, that variant is ready and no other parallel launch
        of this process is running (numba's ``workqueue`` threading layer must not be entered by two threads at
        once), else its serial variant."""
        par = SHARED_PARALLEL if name in _PARALLEL_SHARED else group_key(width, code, True)
        if threads > 1 and self.ready(par) and self._parallel_lock.acquire(blocking=False):
            old = numba.get_num_threads()
            try:
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                self.kernel(name, width, True)(*args)
            finally:
                numba.set_num_threads(old)  # the calling thread's count as it was (numba keeps one per thread)
                self._parallel_lock.release()
            return
        self.kernel(name, width, False)(*args)


_FLAGS = re.compile(r"=\s*(?:fadd|fsub|fmul|fdiv|frem|fneg|fcmp|call)\s+((?:(?:fast|reassoc|nnan|ninf|nsz|arcp|"
                    r"contract|afn)\s+)+)")


def ir_float_flags(dispatcher) -> set:
    """The fast-math flags on float instructions in the compiled IR of every signature of ``dispatcher``, and
    any fused multiply-add the IR asks for (``llvm.fma``/``llvm.fmuladd``)."""
    found = set()
    for sig in dispatcher.signatures:
        text = dispatcher.inspect_llvm(sig)
        for m in _FLAGS.finditer(text):
            found.update(m.group(1).split())
        found.update(f for f in ("llvm.fma.", "llvm.fmuladd.") if f in text)
    return found


_default: Optional[KernelSet] = None
_default_lock = threading.Lock()


def default_set() -> KernelSet:
    """The process's kernel set, made at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = KernelSet()
        return _default


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    if _default is not None:
        _default._lock = threading.Lock()
        _default._parallel_lock = threading.Lock()
        _default.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
