"""Threads without side effects: a search decides how many threads its numba kernels use and hands the count to
them (numba keeps its count per thread); it never changes torch's thread count, in its own thread, in another
thread, or for the process (``torch.set_num_threads`` is process-wide: it resizes torch's pools and clears
oneDNN's cached primitives under a concurrent encode)."""

import threading

import pytest
import torch

pytest.importorskip("numba")

from colbert_retriever import Index, SearchConfig  # noqa: E402
from colbert_retriever.search import parallel, plaid  # noqa: E402

from .conftest import make_corpus  # noqa: E402
from .test_numba import clustered_arrays, query  # noqa: E402


def test_searches_never_set_torchs_thread_count(tmp_path, tiny_model, monkeypatch):
    """Text and embedding searches, every thread setting and kernel family: ``torch.set_num_threads`` is never
    called (recorded), and torch's count reads the same before and after in the searching thread."""
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or real(n))
    idx = Index.build(tmp_path / "i", make_corpus(600, seed=2, min_words=8, max_words=20), model=tiny_model,
                      show_progress=False)
    before = torch.get_num_threads()
    Q = tiny_model.encode_queries(["alpha beta gamma", "river ocean forest mountain"])
    for kernels in ("auto", "numba", "torch"):
        for threads in (None, 1, 2):
            idx.search("alpha beta gamma delta", k=5, kernels=kernels, threads=threads)
            idx.search_embeddings(Q, 5, config=SearchConfig(kernels=kernels, threads=threads))
    assert calls == [] and torch.get_num_threads() == before


def test_a_search_leaves_other_threads_and_the_process_alone():
    """While threads search with 2 kernel threads (the parallel numba variants) and with the default policy, a
    thread doing torch work sees torch's count unchanged throughout; afterwards the count is the same in the
    searching threads, the main thread and a new thread, and numba's count in a searching thread is what it was."""
    import numba

    arrays, x, _ = clustered_arrays()
    queries = [query(arrays.codec, x, 12 + i % 20, i) for i in range(40)]
    expected = torch.get_num_threads()
    seen, errors, stop = set(), [], threading.Event()

    def torch_work():
        while not stop.is_set():
            seen.add(torch.get_num_threads())
            torch.ones(64, 64) @ torch.ones(64, 64)

    def searcher(threads):
        try:
            numba_before = numba.get_num_threads()
            for q in queries:
                tr = []
                plaid.search(q, arrays, 10, SearchConfig(kernels="numba", threads=threads), trace=tr)
                assert tr[0].kernels == "numba"
            assert numba.get_num_threads() == numba_before
            assert torch.get_num_threads() == expected
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    worker = threading.Thread(target=torch_work)
    worker.start()
    searchers = [threading.Thread(target=searcher, args=(t,)) for t in (2, None, 2)]
    for t in searchers:
        t.start()
    for t in searchers:
        t.join()
    stop.set()
    worker.join()
    assert not errors, errors
    assert seen == {expected}
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == expected and fresh == [expected]


def test_the_policy_takes_one_thread_when_searches_run_concurrently():
    """The decision itself: an explicit count is used as given; nested blocks keep the outer decision; a search
    while another runs in this process gets one thread."""
    with parallel.search_threads(3) as n:
        assert n == 3
        with parallel.search_threads(None) as inner:
            assert inner == 3
    entered, release = threading.Event(), threading.Event()

    def hold():
        with parallel.search_threads(2):
            entered.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(30)
    try:
        with parallel.search_threads(None) as n:
            assert n == 1
    finally:
        release.set()
        t.join()
    assert parallel.auto_threads(1, False) == 1
    assert 1 <= parallel.auto_threads(64, False) <= parallel.cpu_count()


def test_a_search_limits_torch_in_its_own_thread_only():
    """Inside a search's thread decision, torch's count is lowered for that thread (OpenMP's per-thread count and
    MKL's thread-local one), never for another thread; after it, the thread's count is what it was."""
    if torch.get_num_threads() < 2 or not parallel.intraop().available:
        pytest.skip("needs torch with 2+ threads and its OpenMP runtime beside it")
    before = torch.get_num_threads()
    inside, other = [], []
    with parallel.search_threads(1) as n:
        inside.append(torch.get_num_threads())
        t = threading.Thread(target=lambda: other.append(torch.get_num_threads()))
        t.start()
        t.join()
        torch.ones(1 << 20).exp_()  # torch work runs meanwhile
    assert n == 1 and inside == [1] and other == [before]
    assert torch.get_num_threads() == before
