"""The background compilation steps aside for searches, but never while it holds something a search may need: its
kernel set's lock (``Foreground.holding``) or an import's module lock. A pause there made the first searches of a
new process wait for the whole pause budget (~2 s each, issue #36 item 5). Fake jobs, no numba compilation: the
pause budget is raised to a minute, so a search blocked by a pausing thread would stall the test far past its
deadlines instead of passing by luck."""

import sys
import threading
import time
import types

import pytest

from colbert_retriever.kernels.foreground import Foreground as _Foreground

DEADLINE = 20.0  # seconds a step the design says must not wait may take here (it takes milliseconds)


@pytest.fixture(autouse=True)
def no_tracer():
    if threading.gettrace() is not None or sys.gettrace() is not None:
        pytest.skip("a tracer (coverage, a debugger) is installed: the background thread does not step aside then")


def Foreground() -> _Foreground:
    """Pauses of up to a minute: a search blocked by a pausing thread stalls far past the tests' deadlines."""
    return _Foreground(pause_floor=60.0, pause_share=0.0)


def _busy(n: int = 200) -> None:
    for _ in range(n):
        _tick()


def _tick() -> None:
    time.sleep(0.0005)


def _background(fg: Foreground, job) -> threading.Thread:
    t = threading.Thread(target=fg.run_stepping_aside, args=(job,), daemon=True)
    t.start()
    return t


def _until(flag: list) -> None:
    """Wait (in the main thread) for another thread's mark: a list append, which a paused thread cannot skip past
    and which, being C, never pauses it."""
    deadline = time.monotonic() + DEADLINE
    while not flag and time.monotonic() < deadline:
        time.sleep(0.001)
    assert flag, "the background thread never got there"


def test_it_pauses_for_a_search_but_not_while_holding_a_lock():
    fg, lock = Foreground(), threading.Lock()
    inside, go, released, after = [], [], [], []

    def job():
        with fg.holding(), lock:  # what KernelSet does around its lock
            inside.append(1)
            while not go:
                _tick()
            _busy()  # Python calls with a search in flight: no pause while holding
        released.append(1)
        while len(after) <= 50:  # outside: each call pauses while the search runs
            after.append(time.monotonic())
            _tick()

    t = _background(fg, job)
    _until(inside)
    with fg.searching():
        go.append(1)
        got = lock.acquire(timeout=DEADLINE)  # the search needs the lock the thread holds: it gets it promptly
        assert got, "the background thread paused while holding the lock a search needs"
        lock.release()
        _until(released)
        time.sleep(0.3)
        n_during = len(after)  # at most the call that was running when the thread got to the pause
    assert n_during <= 1, f"the background thread ran {n_during} calls during a search"
    t.join(DEADLINE)
    assert not t.is_alive() and len(after) == 51


def test_it_never_pauses_inside_an_import(tmp_path, monkeypatch):
    """The search imports the module the background thread is importing: it waits for the import (milliseconds),
    not for a pause the importing thread takes while it holds the module's lock."""
    flags = types.ModuleType("cr_flags")
    flags.started, flags.go = [], []
    monkeypatch.setitem(sys.modules, "cr_flags", flags)
    (tmp_path / "cr_slow_module.py").write_text(
        "import time\n"
        "import cr_flags\n"
        "def _call():\n    time.sleep(0.0005)\n"
        "cr_flags.started.append(1)\n"
        "while not cr_flags.go:\n    _call()\n"
        "for _ in range(200):\n    _call()\n"
        "VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cr_slow_module", None)
    fg = Foreground()

    def job():
        import cr_slow_module  # noqa: F401

    try:
        t = _background(fg, job)
        _until(flags.started)
        with fg.searching():
            flags.go.append(1)
            t0 = time.monotonic()
            import cr_slow_module

            took = time.monotonic() - t0
            assert cr_slow_module.VALUE == 7
        assert took < DEADLINE, f"the search waited {took:.1f} s for an import paused by the background thread"
        t.join(DEADLINE)
        assert not t.is_alive()
    finally:
        sys.modules.pop("cr_slow_module", None)


def test_a_search_takes_the_kernel_sets_lock_while_the_thread_makes_dispatchers():
    """The original inversion: the kernel set's thread paused inside ``_dispatcher`` (lock held, ``jit`` running
    Python) while a search that had to queue its own width waited on the lock. With a fake ``jit`` whose dispatcher
    creation and compilation are Python loops."""
    from colbert_retriever.kernels.numba_kernels import SHARED, KernelSet, group_key

    fg, in_jit, go = Foreground(), [], []

    class FakeDispatcher:
        def compile(self, sig):
            _busy(20)

    def slow_jit(**opts):
        def wrap(fn):
            in_jit.append(1)
            while not go:
                _tick()
            _busy()
            return FakeDispatcher()
        return wrap

    ks = KernelSet(jit=slow_jit, foreground=fg)
    ks.start([SHARED])
    _until(in_jit)
    with fg.searching():
        go.append(1)
        done = threading.Event()
        threading.Thread(target=lambda: (ks.start([group_key(8, "uint8", False)]), done.set()), daemon=True).start()
        assert done.wait(DEADLINE), "a search waited for the kernel set's lock held by a paused thread"
        time.sleep(0.2)
        assert not ks.ready(SHARED)  # the compilation itself pauses for the search
    assert ks.wait(DEADLINE * 3)
    assert ks.ready(SHARED) and ks.ready(group_key(8, "uint8", False))
