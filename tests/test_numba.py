"""The numba kernels against their torch twins (stages.py) on real-path-sized inputs: several segments, every code
width, empty documents, 1/2/4 bits, short and long queries; serial and parallel variants; concurrent searches;
the on-disk cache when the package folder is read-only."""

import os
import shutil
import subprocess
import itertools
import sys
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("numba")

from colbert_retriever import CodecConfig, Index, SearchConfig  # noqa: E402
from colbert_retriever.search import stages  # noqa: E402
from colbert_retriever.search.arrays import IndexArrays, IvfPart, Rows  # noqa: E402
from colbert_retriever.codec.residual import ResidualCodec, code_dtype  # noqa: E402
from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths  # noqa: E402

from .conftest import make_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def clustered_arrays(n_docs=5000, K=300, nbits=2, dim=64, cuts=(0.5, 0.8), seed=0):
    """Arrays of clustered tokens compressed at ``nbits``, split into segments at the given fractions of the
    documents (each segment with its own inverted file), some documents empty."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 60, (n_docs,), generator=g)
    lengths[::97] = 0
    n = int(lengths.sum())
    centers = torch.nn.functional.normalize(torch.randn(K // 3, dim, generator=g), dim=-1)
    x = torch.nn.functional.normalize(centers[torch.randint(0, K // 3, (n,), generator=g)]
                                      + 0.1 * torch.randn(n, dim, generator=g), dim=-1)
    codec = ResidualCodec.fit(x[:20000], CodecConfig(nbits=nbits, num_centroids=K), n)
    codec = ResidualCodec.from_arrays(codec.arrays(), nbits, codec.avg_residual)  # fp16 centroids, as stored
    codes, packed = codec.compress(x)
    codes = codes.numpy().astype(code_dtype(codec.num_centroids))
    inv = codec.inverse_norms(torch.from_numpy(codes.astype("int64")), packed)
    off = offsets_from_lengths(lengths)
    bounds = [0, *(int(c * n_docs) for c in cuts), n_docs]
    parts, cparts, rparts, iparts = [], [], [], []
    for lo, hi in zip(bounds, bounds[1:]):
        a, b = int(off[lo]), int(off[hi])
        p, o = inverted_file(codes[a:b], lengths[lo:hi].numpy(), codec.num_centroids)
        parts.append(IvfPart(torch.from_numpy(p), torch.from_numpy(o), lo))
        cparts.append(torch.from_numpy(codes[a:b]))
        rparts.append(packed[a:b])
        iparts.append(inv[a:b])
    sizes = sum(p.offsets[1:] - p.offsets[:-1] for p in parts)
    return IndexArrays(codec, Rows(cparts), Rows(rparts), Rows(iparts), off, parts, sizes), x, lengths


def query(codec, x, q_len, seed):
    g = torch.Generator().manual_seed(seed)
    q = x[torch.randint(0, x.shape[0], (q_len,), generator=g)]
    return torch.nn.functional.normalize(q + 0.05 * torch.randn(q.shape, generator=g), dim=-1)


@pytest.mark.parametrize("nbits,K,dim", [(1, 200, 64), (2, 300, 64), (4, 300, 64), (2, 1000, 64),  # uint8/16 codes
                                         (1, 200, 24), (2, 300, 20)])  # an odd number of residual bytes
@pytest.mark.parametrize("q_len", [1, 7, 16, 32, 40])  # padded widths 8, 16, 32 (vector registers) and 40
def test_numba_kernels_equal_their_torch_twins(nbits, K, dim, q_len):
    arrays, x, lengths = clustered_arrays(nbits=nbits, K=K, dim=dim)
    q = query(arrays.codec, x, q_len, seed=q_len)
    Sc = arrays.codec.centroid_scores(q)[0]
    g = torch.Generator().manual_seed(1)
    pids = torch.randperm(arrays.num_docs, generator=g)[:2500].sort().values  # every segment, empty docs among
    assert bool((lengths[pids] == 0).any())
    ref_ci = stages.centroid_interaction(Sc, arrays, pids, kernels="torch")
    ref_ex = stages.exact_scores(q, arrays, pids, Sc, kernels="torch")
    for threads in (1, 2):
        ci = stages.centroid_interaction(Sc, arrays, pids, kernels="numba", threads=threads)
        ex = stages.exact_scores(q, arrays, pids, Sc, kernels="numba", threads=threads)
        assert ci.dtype == ex.dtype == torch.float32 and ci.shape == ex.shape == pids.shape
        assert torch.allclose(ci, ref_ci, atol=1e-5), (ci - ref_ci).abs().max()
        assert torch.allclose(ex, ref_ex, atol=1e-5), (ex - ref_ex).abs().max()
        assert torch.equal(torch.topk(ex, 10).indices, torch.topk(ref_ex, 10).indices)
    assert float(ex[lengths[pids] == 0].abs().max()) == 0.0  # a document with no tokens scores 0


@pytest.mark.parametrize("q_len", [1, 7, 32])
def test_numba_probed_scores_equal_the_torch_twin(q_len):
    """Probed scoring (stage 2 of the default plan) on numba equals torch's: the same candidates in the same
    order and scores to 1e-5, over three segments, with and without an allowed mask, the kernel ordering its
    candidates either way (a scan of the documents, a sort of the candidates)."""
    arrays, x, _ = clustered_arrays(n_docs=20000, K=1000)
    g = torch.Generator().manual_seed(q_len)
    allowed = torch.rand(arrays.num_docs, generator=g) < 0.3
    ScT = arrays.codec.centroid_scores(query(arrays.codec, x, q_len, seed=q_len))[0].T
    for ncells, mask, scan_ratio in itertools.product((1, 4, 32), (None, allowed), (0, 1e9)):
        ref = stages.probed_scores(ScT, arrays, ncells, mask, kernels="torch")
        got = stages.probed_scores(ScT, arrays, ncells, mask, kernels="numba", scan_ratio=scan_ratio)
        assert got[0].dtype == torch.int64 and got[1].dtype == torch.float32
        assert torch.equal(got[0], ref[0])
        assert torch.allclose(got[1], ref[1], atol=1e-5), (got[1] - ref[1]).abs().max()


@pytest.mark.parametrize("K", [5, 100, 1000, 16381])
def test_probe_top_cells_best_first_lower_centroid_first_among_ties(K):
    """The probe's top cells (scanned 16 scores at a time) are each row's best ``ncells`` scores in order, the
    lower centroid first among equal scores: a stable sort's order, with ties planted, for lists shorter and
    longer than 16 and rows whose length is not a multiple of 16."""
    import numpy as np

    from colbert_retriever.kernels import dispatch
    from colbert_retriever.kernels.numba_kernels import SHARED

    ks = dispatch.numba_kernel_set()
    ks.ensure([SHARED])
    g = np.random.default_rng(K)
    ScT = (g.standard_normal((7, K)) * 0.1).astype(np.float32)
    ScT[:, K // 2] = ScT[:, K // 3]
    ScT[:, -1] = ScT[:, K // 2]
    ScT[3] = 0.25  # a row of ties only
    for ncells in sorted({1, 8, 20, K}):
        cells = np.empty((7, min(ncells, K)), np.int64)
        vals = np.empty((7, min(ncells, K)), np.float32)
        ks.kernel("probe_top")(ScT, K, min(ncells, K), cells, vals)
        want = np.argsort(-ScT, axis=1, kind="stable")[:, : min(ncells, K)]
        assert np.array_equal(cells, want), ncells
        assert np.array_equal(vals, np.take_along_axis(ScT, want, axis=1))


def test_numba_int32_codes():
    """More than 65,536 centroids: int32 codes (checked on the kernel directly, without training that many)."""
    arrays, x, _ = clustered_arrays(n_docs=800, K=100, cuts=())
    codes32 = Rows([p.to(torch.int32) for p in arrays.codes.parts])
    a32 = IndexArrays(arrays.codec, codes32, arrays.residuals, arrays.inv_norms, arrays.doc_offsets, arrays.ivf,
                      arrays.ivf_sizes)
    q = query(arrays.codec, x, 9, seed=3)
    Sc = arrays.codec.centroid_scores(q)[0]
    pids = torch.arange(800)
    assert torch.allclose(stages.exact_scores(q, a32, pids, Sc, kernels="numba"),
                          stages.exact_scores(q, arrays, pids, Sc, kernels="torch"), atol=1e-5)


@pytest.mark.parametrize("q_len", [1, 8, 22, 32, 40])
def test_tables_from_the_query_own_the_padding(q_len):
    """The kernels' operands as a search builds them (``Tables.from_query``: the query's real rows in, the product
    and the lookup table computed by the kernels, padded to the kernel width) equal the torch product and lookup
    table laid out after the fact (``from_scores``): same values to float rounding, zero padding, the same (q, K)
    scores for the probe; on one and on two threads the same bits."""
    import numpy as np

    from colbert_retriever.kernels import dispatch, numba_drivers

    arrays, x, _ = clustered_arrays(n_docs=300, K=100, cuts=())
    codec = arrays.codec
    q = query(codec, x, q_len, seed=q_len)
    ks, _ = dispatch.numba_for_search("uint8", q_len, 2, "numba")
    Sc = (codec.centroids.double() @ q.double().T).float()
    ref = numba_drivers.Tables.from_scores(ks, Sc)
    t1, t2 = (numba_drivers.Tables.from_query(ks, q, codec, "uint8", threads) for threads in (1, 2))
    assert (t1.q, t1.qp) == (ref.q, ref.qp) == (q_len, {1: 8, 8: 8, 22: 32, 32: 32, 40: 40}[q_len])
    S, S_ref = t1.S.reshape(-1, t1.qp), ref.S.reshape(-1, ref.qp)
    assert np.allclose(S, S_ref, atol=1e-6) and not S[:, q_len:].any()
    assert np.array_equal(t1.ScT, S[:, :q_len].T)
    lut, lut_ref = t1.lut().reshape(-1, t1.qp), ref.lut(codec.query_lut(q)).reshape(-1, ref.qp)
    assert np.allclose(lut, lut_ref, atol=1e-6) and not lut[:, q_len:].any()
    for a, b in ((t1.S, t2.S), (t1.ScT, t2.ScT), (t1.lut(), t2.lut())):
        assert a.tobytes() == b.tobytes()


def test_kernels_compile_with_noalias_arguments():
    """The per-document and probe kernels declare their array arguments alias-free (``numba_kernels.NoAlias``:
    what lets LLVM keep an accumulator out of memory): the compiled signature carries ``noalias`` on each array's
    pointers, not only on numba's two own arguments as under the default compiler. If a numba release drops the
    flag this fails, instead of the kernels silently slowing down."""
    import numba
    import numpy as np

    from colbert_retriever.kernels import dispatch, numba_kernels, numba_loops

    def noalias_in_signature(opts):
        f = numba.njit(**dict(opts, cache=False))(numba_loops.ci_doc)
        f(np.zeros(16, np.float32), 8, 8, np.zeros(4, np.int32), 0, 4, np.empty(8, np.float32))
        ir = f.inspect_llvm(f.signatures[0])
        return next(line for line in ir.splitlines() if line.startswith("define") and "ci_doc" in line).count(
            "noalias")

    default = noalias_in_signature(numba_kernels.OPTIONS)
    assert noalias_in_signature(dict(numba_kernels.OPTIONS, pipeline_class=numba_kernels.NoAlias)) >= default + 3
    ks = dispatch.numba_kernel_set()
    ks.ensure(dispatch.numba_groups("uint16", [16, None], parallel=False))
    shared = [ks.kernel(n) for n in ("probe_top", "probe_mark", "probe_slots", "probe_best", "probe_sums")]
    for kernel in shared + [f for funcs in ks._funcs.values() for f in funcs.values()]:
        assert kernel._compiler.pipeline_class is numba_kernels.NoAlias


def test_plaid_search_same_results_on_both_kernels():
    """Whole searches (default knobs, the real path: 5,000 documents far above the exact-stage budget) give the
    same top-10 and scores with numba and torch kernels, serial and parallel."""
    from colbert_retriever.search import plaid

    arrays, x, _ = clustered_arrays()
    for seed in range(8):
        q = query(arrays.codec, x, 12, seed)
        tr = []
        ref = plaid.search(q, arrays, 10, SearchConfig(kernels="torch"), trace=tr)
        assert not tr[0].exhaustive and tr[0].exact_scored < arrays.num_docs / 4
        for threads in (1, 2):
            got = plaid.search(q, arrays, 10, SearchConfig(kernels="numba", threads=threads), trace=tr)
            assert tr[-1].kernels == "numba" and tr[-1].threads == threads
            assert torch.equal(got[0], ref[0]) and torch.allclose(got[1], ref[1], atol=1e-5)


def test_concurrent_searches_on_numba(tmp_path, tiny_model):
    """Threads searching at once with numba kernels (each asking for 2 threads: at most one parallel launch runs
    at a time, the others take the serial variant) all get the single-threaded answers."""
    texts = make_corpus(2500, seed=5, min_words=12, max_words=20)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False)
    queries = make_corpus(24, seed=6, min_words=3, max_words=8)
    expect = {q: [(h.id, h.score) for h in idx.search(q, k=5, kernels="torch")] for q in queries}
    errors, got = [], {}

    def worker(part):
        try:
            for q in part:
                got[q] = [(h.id, h.score) for h in idx.search(q, k=5, kernels="numba", threads=2)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(queries[i::4],)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and set(got) == set(expect)
    for q, hits in expect.items():
        assert [i for i, _ in got[q]] == [i for i, _ in hits]
        assert [s for _, s in got[q]] == pytest.approx([s for _, s in hits], abs=1e-4)


def test_compiled_code_is_cached_outside_a_read_only_package(tmp_path):
    """With the package folder read-only, numba caches the compiled kernels in the user's cache folder, and a
    second process loads them from there. (Run as root, file modes do not stop writes: the child then refuses
    writes under the package folder the way a read-only mount would, in the standard library's tempfile.)"""
    ro = tmp_path / "ro"
    pkg = ro / "colbert_retriever"
    shutil.copytree(ROOT / "colbert_retriever", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(ro):
        for name in files:
            os.chmod(Path(root) / name, 0o444)
        os.chmod(root, 0o555)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ro), "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    guard = ""
    if os.geteuid() == 0:
        guard = ("import tempfile, os; _tf = tempfile.TemporaryFile\n"
                 "def _ro(*a, dir=None, **k):\n"
                 f"    if dir is not None and os.path.abspath(dir).startswith({str(ro)!r}):\n"
                 "        raise PermissionError(13, 'read-only file system', dir)\n"
                 "    return _tf(*a, dir=dir, **k)\n"
                 "tempfile.TemporaryFile = _ro\n")
    code = guard + f"""
import torch, colbert_retriever
from colbert_retriever.kernels import dispatch
assert colbert_retriever.__file__.startswith({str(ro)!r})
from colbert_retriever.search.arrays import IndexArrays
from colbert_retriever.codec.residual import ResidualCodec
c = ResidualCodec(torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), torch.tensor([0.0]),
                  torch.tensor([-0.1, 0.1]), 1)
codes = torch.randint(0, 8, (40,)).to(torch.uint8)
packed = torch.randint(0, 255, (40, 2)).to(torch.uint8)
a = IndexArrays.single(c, codes, packed, torch.tensor([0, 10, 40]), torch.zeros(1, dtype=torch.int32),
                       torch.zeros(9, dtype=torch.long))
q = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
print(dispatch.numba_exact_scores(a, torch.arange(2), c.centroid_scores(q)[0], c.query_lut(q), 1).tolist())
"""
    try:
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
            assert out.returncode == 0, out.stderr[-2000:]
        cached = [p.name for p in cache.rglob("*.nbi")]
        assert any(n.startswith("numba_loops.exact_8_serial_") for n in cached), sorted(cache.rglob("*"))  # 8 wide
        assert not list(pkg.rglob("*.nbi"))
    finally:
        for root, _, _ in os.walk(ro):
            os.chmod(root, 0o755)
