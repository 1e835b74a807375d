"""numba without fragility: a kernel that fails to compile, or a numba that fails to import, leaves searches on the
torch twins with one warning and a trace that says so; operands the kernels would misread (not C-contiguous,
Fortran-order files) are refused with a clear error; the background compilation started by ``Index.open`` lets
the first searches run the torch kernels, then no search compiles."""

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from colbert_retriever import Index, SearchConfig  # noqa: E402
from colbert_retriever.errors import IndexFormatError  # noqa: E402
from colbert_retriever.kernels import dispatch  # noqa: E402
from colbert_retriever.search import plaid, stages  # noqa: E402

from .conftest import make_corpus  # noqa: E402
from .test_numba import clustered_arrays, query  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def broken_jit(**opts):
    """``numba.njit`` for a kernel set whose exact-stage drivers fail to compile (a typing error, as a numba
    release that no longer accepts the code would raise); the other kernels compile as usual."""
    import numba

    def wrap(fn):
        if fn.__name__.startswith("exact_"):  # the same arguments, a body numba cannot type (an unknown name)
            code = fn.__code__
            ns = {}
            exec(f"def broken({', '.join(code.co_varnames[: code.co_argcount])}):\n    return no_such_name\n", ns)
            return numba.njit(**dict(opts, cache=False))(ns["broken"])
        return numba.njit(**opts)(fn)

    return wrap


@pytest.fixture(scope="module")
def arrays():
    return clustered_arrays()[:2]


@pytest.mark.parametrize("requested", ["numba", "auto"])
def test_a_kernel_that_fails_to_compile_falls_back_to_torch_with_one_warning(arrays, requested, monkeypatch):
    from colbert_retriever.kernels.numba_kernels import KernelSet

    monkeypatch.setenv("COLBERT_RETRIEVER_WARM_KERNELS", "1")  # the default: "auto" compiles in the background

    arrays, x = arrays
    ks = KernelSet(jit=broken_jit)
    queries = [query(arrays.codec, x, 12, seed) for seed in range(4)]
    with dispatch.using_numba_kernels(ks), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traces = []
        for q in queries:
            got = plaid.search(q, arrays, 10, SearchConfig(kernels=requested), trace=traces)
            ref = plaid.search(q, arrays, 10, SearchConfig(kernels="torch"))
            assert torch.equal(got[0], ref[0]) and torch.allclose(got[1], ref[1], atol=1e-5)
            ks.wait()  # "auto": the first search queued the compilation in the background
    mine = [w for w in caught if "failed to compile" in str(w.message)]
    assert len(mine) == 1 and issubclass(mine[0].category, RuntimeWarning), [str(w.message) for w in caught]
    assert "TypingError" in str(mine[0].message) and "torch kernels" in str(mine[0].message)
    assert all(t.kernels == "torch" and t.fallback for t in traces)
    assert "failed to compile (TypingError" in traces[-1].fallback
    if requested == "auto":  # the first search did not wait: it ran while the kernels were queued
        assert "compiling" in traces[0].fallback


@pytest.mark.parametrize("broken", ["numba", "kernels"])
def test_numba_that_fails_to_import_leaves_searches_on_torch_with_one_warning(tmp_path, broken):
    """A child where ``import numba`` raises (as numba does for a numpy it does not support), or where numba
    imports but our kernel modules on it do not (a numba outside the tested range): "auto" runs the torch kernels,
    one warning, the trace says why; starting the background warm-up (what ``Index.open`` does) does not raise;
    asking for numba by name is a clear error."""
    fake = tmp_path / "numba"
    fake.mkdir()
    if broken == "numba":
        (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less. Got NumPy 2.9.")\n')
        why = "numba failed to import (ImportError: Numba needs NumPy"
    else:
        (fake / "__init__.py").write_text('__version__ = "0.99.0"\n')  # imports; has none of what the kernels use
        why = "the numba kernels failed to import with numba 0.99.0"
    code = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r}); sys.path.insert(1, {str(ROOT)!r})
        import torch
        from colbert_retriever import SearchConfig
        from colbert_retriever.codec.residual import ResidualCodec
        from colbert_retriever.errors import InvalidArgument
        from colbert_retriever.search import plaid
        from colbert_retriever.search.arrays import IndexArrays
        c = ResidualCodec(torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), torch.tensor([0.0]),
                          torch.tensor([-0.1, 0.1]), 1)
        codes, packed = torch.randint(0, 8, (40,)).to(torch.uint8), torch.randint(0, 255, (40, 2)).to(torch.uint8)
        a = IndexArrays.single(c, codes, packed, torch.tensor([0, 10, 40]), torch.zeros(1, dtype=torch.int32),
                               torch.zeros(9, dtype=torch.long))
        q = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
        import os
        os.environ["COLBERT_RETRIEVER_WARM_KERNELS"] = "1"
        from colbert_retriever.kernels import dispatch
        assert dispatch.background_compilation()
        dispatch.warm_numba("uint8")  # what Index.open does: returns, starts nothing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr = []
            for _ in range(3):
                plaid.search(q, a, 2, SearchConfig(), trace=tr)
        assert [t.kernels for t in tr] == ["torch"] * 3, tr
        assert all({why!r} in t.fallback for t in tr), tr
        assert len([w for w in caught if "numba" in str(w.message)]) == 1, [str(w.message) for w in caught]
        try:
            plaid.search(q, a, 2, SearchConfig(kernels="numba"))
        except InvalidArgument as e:
            print("refused:", e)
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "refused: kernels='numba' was asked for but numba is not installed" in r.stdout


def test_operands_that_are_not_c_contiguous_are_refused(arrays):
    """The kernels index flat data by offsets: an index array that is not C-contiguous (residual rows stored
    column by column) is a clear error naming it, never read as if it were."""
    from colbert_retriever.search.arrays import IndexArrays, Rows

    arrays, x = arrays
    fortran = Rows([torch.from_numpy(np.asfortranarray(p.numpy())) for p in arrays.residuals.parts])
    assert not fortran.parts[0].numpy().flags.c_contiguous
    bad = IndexArrays(arrays.codec, arrays.codes, fortran, arrays.inv_norms, arrays.doc_offsets, arrays.ivf,
                      arrays.ivf_sizes)
    q = query(arrays.codec, x, 12, 0)
    with pytest.raises(IndexFormatError, match="residuals is not C-contiguous"):
        stages.exact_scores(q, bad, torch.arange(50), kernels="numba")


def test_fortran_order_files_are_refused_at_load(tmp_path):
    from colbert_retriever.store import storage

    np.save(tmp_path / "residuals.npy", np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(4, 3)))
    with pytest.raises(IndexFormatError, match="Fortran order"):
        storage.load_array(tmp_path, "residuals.npy", (None, 3), np.uint8)
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.uint8).reshape(4, 3))
    assert storage.load_array(tmp_path, "ok.npy", (None, 3), np.uint8).shape == (4, 3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, _tiny_model):
    """An index folder (1,500 documents, the tiny model) and the model saved beside it, for child processes."""
    folder = tmp_path_factory.mktemp("warm")
    Index.build(folder / "idx", make_corpus(1500, seed=3, min_words=10, max_words=30), model=_tiny_model,
                show_progress=False)
    _tiny_model.save(folder / "model")
    return folder


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from colbert_retriever import ColBERT, Index
from colbert_retriever.kernels import dispatch
model = ColBERT.from_pretrained({folder!r} + "/model")
t1 = time.perf_counter()
index = Index.open({folder!r} + "/idx", model=model)
at_open = [m for m in ("numba", "colbert_retriever.kernels.numba_drivers") if m in sys.modules]
words = "alpha beta gamma delta river mountain ocean forest python java rust compiler".split()
queries = [" ".join(words[: 1 + i % 12]) * (1 + i % 3) for i in range(24)]
tr, took = [], []
for q in queries[:3]:
    t = time.perf_counter()
    index.search(q, k=5, trace=tr)
    took.append(time.perf_counter() - t)
print("open+3", time.perf_counter() - t1, took, [(t.kernels, t.fallback) for t in tr], flush=True)
"""


def _run_child(code: str, cache: Optional[Path], warm: Optional[str] = None) -> tuple[str, float]:
    """Run ``code`` with numba's cache in ``cache`` (None: where this process has it) and
    ``COLBERT_RETRIEVER_WARM_KERNELS`` set to ``warm`` (None: unset, the default)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)} if cache else dict(os.environ)
    env.pop("COLBERT_RETRIEVER_WARM_KERNELS", None)
    if warm is not None:
        env["COLBERT_RETRIEVER_WARM_KERNELS"] = warm
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout, time.perf_counter() - t


def test_first_searches_run_torch_while_the_kernels_compile(saved, tmp_path):
    """A new process with an EMPTY numba cache: ``Index.open`` starts the compilation in the background, the first
    searches run the torch kernels meanwhile (trace: "compiling") and none waits for the compiler (it still runs
    after them; how long a first query takes is measured by ``make bench-coldstart``, not asserted here); the
    process then exits while the daemon thread compiles, promptly and cleanly."""
    code = CHILD.format(root=str(ROOT), folder=str(saved)) + textwrap.dedent("""
        assert all(t.kernels == "torch" and "compiling" in t.fallback for t in tr), tr
        assert dispatch.numba_kernel_set().compiling()  # three searches answered and the compiler still runs
        # numba and the kernel modules were imported by Index.open in this thread, never by the background one (a
        # search would wait for an import's module lock); the background thread only compiles
        assert at_open == ["numba", "colbert_retriever.kernels.numba_drivers"], at_open
        import threading
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("colbert-retriever"))
        assert names == ["colbert-retriever-numba-warmup"], names
        """)
    out, wall = _run_child(code, tmp_path / "empty-cache")
    assert wall < 60, (wall, out)  # exiting did not wait for the compilation to finish


def test_once_the_kernels_are_ready_no_search_compiles(saved):
    """A new process with numba's cache warm (this session's): the background thread loads the kernels for every
    width the model's queries pad to; after it, every search runs numba and none compiles (numba's compile
    events), for queries of 1 to 36 words."""
    code = CHILD.format(root=str(ROOT), folder=str(saved)) + textwrap.dedent("""
        from numba.core import event
        assert dispatch.wait_for_kernels(600)
        with event.install_recorder("numba:compile") as rec:
            tr = []
            for q in queries:
                index.search(q, k=5, trace=tr)
        assert all(t.kernels == "numba" and not t.fallback for t in tr), [(t.kernels, t.fallback) for t in tr]
        assert rec.buffer == [], rec.buffer
        """)
    _run_child(code, None)


def test_warm_up_off_starts_no_thread_and_searches_compile_what_they_need(saved):
    """``COLBERT_RETRIEVER_WARM_KERNELS=0``: ``Index.open`` neither imports numba nor starts a thread; each search
    loads (or compiles) the kernels of its width first and runs numba."""
    code = CHILD.format(root=str(ROOT), folder=str(saved)) + textwrap.dedent("""
        assert at_open == [], at_open
        import threading
        assert not [t.name for t in threading.enumerate() if t.name.startswith("colbert-retriever")]
        assert all(t.kernels == "numba" and not t.fallback for t in tr), [(t.kernels, t.fallback) for t in tr]
        """)
    _run_child(code, None, warm="0")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_kernels_compile_searches_on_torch(tmp_path):
    """numba's compiler lock may be held, at the fork, by the compiling thread, which does not exist in the child:
    the child never compiles (it would hang); its searches run the torch kernels, with one warning."""
    code = textwrap.dedent(f"""
        import os, sys, warnings
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from colbert_retriever import SearchConfig
        from colbert_retriever.codec.residual import ResidualCodec
        from colbert_retriever.kernels import dispatch
        from colbert_retriever.search import plaid
        from colbert_retriever.search.arrays import IndexArrays
        c = ResidualCodec(torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), torch.tensor([0.0]),
                          torch.tensor([-0.1, 0.1]), 1)
        codes, packed = torch.randint(0, 8, (40,)).to(torch.uint8), torch.randint(0, 255, (40, 2)).to(torch.uint8)
        a = IndexArrays.single(c, codes, packed, torch.tensor([0, 10, 40]), torch.zeros(1, dtype=torch.int32),
                               torch.zeros(9, dtype=torch.long))
        q = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
        ks = dispatch.numba_kernel_set()
        ks.start(dispatch.numba_groups("uint8", [8], True))
        assert ks.compiling()
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tr = []
                for _ in range(2):
                    plaid.search(q, a, 2, SearchConfig(), trace=tr)
                    plaid.search(q, a, 2, SearchConfig(kernels="numba"), trace=tr)
            ok = all(t.kernels == "torch" and "forked while they compiled" in t.fallback for t in tr)
            os._exit(0 if ok and len([w for w in caught if "forked" in str(w.message)]) == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "child 0" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("broken", ["kernels", "triton"])
def test_triton_that_fails_to_import_is_loud_on_cuda(tmp_path, broken):
    """A child where the Triton kernels cannot import (``broken="kernels"``: triton imports, ``triton.language``
    raises, as for a triton release the kernels no longer match; ``"triton"``: triton itself raises): "auto" on a
    CUDA device resolves to torch, the search's fallback reason names the ImportError, one RuntimeWarning; CPU
    searches never ask; naming triton is a clear error. No GPU needed: only the device's type is read."""
    fake = tmp_path / "triton"
    fake.mkdir()
    if broken == "kernels":
        (fake / "__init__.py").write_text("")
        (fake / "language.py").write_text('raise ImportError("libcuda.so.1: cannot open shared object file")\n')
    else:
        (fake / "__init__.py").write_text('raise ImportError("libcuda.so.1: cannot open shared object file")\n')
    code = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r}); sys.path.insert(1, {str(ROOT)!r})
        import torch
        from colbert_retriever.errors import InvalidArgument
        from colbert_retriever.kernels import dispatch
        cuda, cpu = torch.device("cuda"), torch.device("cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert dispatch.auto_fallback("auto", dispatch.resolve("auto", cpu), cpu) == ""  # CPU: numba's question
            assert not [w for w in caught if "riton" in str(w.message)], "a CPU search asked about triton"
            kernels = [dispatch.resolve("auto", cuda) for _ in range(3)]
            reasons = [dispatch.auto_fallback("auto", k, cuda) for k in kernels]  # what plaid.search traces
            assert kernels == ["torch"] * 3, kernels
            assert all("(ImportError: libcuda.so.1: cannot open shared object file)" in r for r in reasons), reasons
            assert dispatch.auto_fallback("torch", "torch", cuda) == ""  # torch asked for by name: no reason
            with dispatch.kernel_backend("torch"):
                assert dispatch.auto_fallback("auto", dispatch.resolve("auto", cuda), cuda) == ""
        loud = [w for w in caught if "riton" in str(w.message)]
        assert len(loud) == 1 and loud[0].category is RuntimeWarning, [str(w.message) for w in caught]
        print("warned:", loud[0].message)
        try:
            dispatch.resolve("triton", cuda)
        except InvalidArgument as e:
            print("refused:", e)
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "torch kernels" in r.stdout and "refused: kernels='triton' was asked for but" in r.stdout, r.stdout
    assert ("the Triton kernels failed to import" if broken == "kernels" else "triton is not installed") in r.stdout
