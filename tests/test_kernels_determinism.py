"""The numba kernels are deterministic: compiled without fast-math (no flag on any float instruction of any
kernel's LLVM IR, no fused multiply-add asked for in it or emitted in its machine code), so the same inputs give
the same bits on every x86-64 target. Children compiled for AVX2 (``NUMBA_CPU_NAME=haswell``, torch capped to
AVX2 too) and, on an AVX-512 host, for ``skylake-avx512`` compare bit for bit with this process: the query's
tables, each kernel's output, and whole searches (queries of 1 to 40 tokens, 20 and 40 among them, serial and
parallel). Serial and parallel variants agree bit for bit, and the score product's vector-register loops equal
its plain loops bit for bit."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from colbert_retriever import SearchConfig  # noqa: E402
from colbert_retriever.codec.residual import ResidualCodec  # noqa: E402
from colbert_retriever.kernels import dispatch  # noqa: E402
from colbert_retriever.search import plaid  # noqa: E402
from colbert_retriever.search.arrays import IndexArrays, IvfPart, Rows  # noqa: E402

from .test_numba import clustered_arrays, query  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Q_LENS = (1, 7, 16, 20, 32, 40)  # padded widths 8, 8, 16, 32, 32 (vector registers) and 40 (plain loops)
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def save_inputs(path: Path) -> None:
    """Index arrays (three segments, uint16 codes, 2 bits) and queries, as plain arrays: children load them rather
    than regenerate them (torch's random numbers and k-means are not what is tested here)."""
    arrays, x, _ = clustered_arrays(n_docs=4000, K=1000)
    c = arrays.codec
    out = {"centroids": c.centroids.numpy(), "cutoffs": c.bucket_cutoffs.numpy(), "weights": c.bucket_weights.numpy(),
           "offsets": arrays.doc_offsets.numpy()}
    for i, part in enumerate(arrays.ivf):
        out.update({f"codes{i}": arrays.codes.parts[i].numpy(), f"res{i}": arrays.residuals.parts[i].numpy(),
                    f"inv{i}": arrays.inv_norms.parts[i].numpy(), f"ivfp{i}": part.pids.numpy(),
                    f"ivfo{i}": part.offsets.numpy(), f"base{i}": np.array(part.doc_base)})
    for q_len in Q_LENS:
        out[f"q{q_len}"] = query(c, x, q_len, seed=q_len).numpy()
    np.savez(path, **out)


def load_inputs(path: Path):
    z = np.load(path)
    codec = ResidualCodec(torch.from_numpy(z["centroids"]), torch.from_numpy(z["cutoffs"]),
                          torch.from_numpy(z["weights"]), 2)
    n = sum(1 for k in z.files if k.startswith("codes"))
    t = [lambda name, i=i: torch.from_numpy(z[f"{name}{i}"]) for i in range(n)]
    parts = [IvfPart(f("ivfp"), f("ivfo"), int(f("base"))) for f in t]
    sizes = sum(p.offsets[1:] - p.offsets[:-1] for p in parts)
    arrays = IndexArrays(codec, Rows([f("codes") for f in t]), Rows([f("res") for f in t]),
                         Rows([f("inv") for f in t]), torch.from_numpy(z["offsets"]), parts, sizes)
    return arrays, {q_len: torch.from_numpy(z[f"q{q_len}"]) for q_len in Q_LENS}


def outputs(path: Path) -> dict:
    """Everything the kernels compute for the saved inputs: per query, the tables (scores both ways, lookup
    table), centroid interaction and exact scores of 1,500 documents in every segment, probed scoring, and whole
    searches on 1 and 2 threads (pids and scores)."""
    from colbert_retriever.kernels import numba_drivers as nd

    arrays, queries = load_inputs(path)
    pids = torch.randperm(arrays.num_docs, generator=torch.Generator().manual_seed(0))[:1500].sort().values
    out = {}
    with dispatch.kernel_backend("numba"):
        for q_len, q in queries.items():
            ks, why = dispatch.numba_for_search("uint16", q_len, 2, "numba")
            assert ks is not None, why
            for threads in (1, 2):
                t = nd.Tables.from_query(ks, q, arrays.codec, "uint16", threads)
                tag = f"{q_len}/{threads}"
                out.update({f"S{tag}": t.S, f"ScT{tag}": t.ScT, f"lut{tag}": t.lut(),
                            f"ci{tag}": nd.centroid_interaction(t, arrays, pids).numpy(),
                            f"exact{tag}": nd.exact_scores(t, arrays, pids).numpy()})
                tr = []
                got = plaid.search(q, arrays, 10, SearchConfig(kernels="numba", threads=threads), trace=tr)
                assert tr[0].kernels == "numba" and (q_len == 1 or tr[0].stage2 == "probed"), tr[0]
                out[f"pids{tag}"], out[f"scores{tag}"] = got[0].numpy(), got[1].numpy()
            probed = nd.probed_scores(ks, t.rows, t.K, 8, 0.8, arrays)
            out[f"probed_pids{q_len}"], out[f"probed{q_len}"] = probed[0].numpy(), probed[1].numpy()
    return out


def dump(inputs: str, out: str) -> None:
    """In a child with an empty numba cache: the outputs, and what ``ir_violations`` finds in the fresh code."""
    np.savez(out, **outputs(Path(inputs)), _ir=np.array(ir_violations()))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("determinism") / "inputs.npz"
    save_inputs(path)
    return path


@pytest.fixture(scope="module")
def host(inputs) -> dict:
    return outputs(inputs)


def test_serial_and_parallel_kernels_give_the_same_bits(host):
    for q_len in Q_LENS:
        for name in ("S", "ScT", "lut", "ci", "exact", "pids", "scores"):
            assert same_bits(host[f"{name}{q_len}/1"], host[f"{name}{q_len}/2"]), (name, q_len)


def test_score_product_in_registers_equals_the_plain_loops_bit_for_bit(inputs):
    """The score product (``numba_ir.scores_ir``, vectorised over centroids, 4 query tokens at a time) performs the
    plain loops' arithmetic (``numba_loops.scores_rows``) in the same order: the same bits, in both layouts."""
    import numba

    from colbert_retriever.kernels import numba_drivers as nd
    from colbert_retriever.kernels import numba_loops

    arrays, queries = load_inputs(inputs)
    C = arrays.codec.centroids.numpy()
    plain = numba.njit(numba_loops.scores_rows)
    for q_len in (7, 16, 20, 40):
        q = queries[q_len]
        ks, _ = dispatch.numba_for_search("uint16", q_len, 1, "numba")
        t = nd.Tables.from_query(ks, q, arrays.codec, "uint16", 1)
        Qt = np.zeros((C.shape[1], t.qp), np.float32)
        Qt[:, :q_len] = q.numpy().T
        S = np.empty(C.shape[0] * t.qp, np.float32)
        plain(C, Qt, 0, C.shape[0], S)
        assert same_bits(t.S, S), q_len
        assert same_bits(np.ascontiguousarray(t.ScT), np.ascontiguousarray(S.reshape(-1, t.qp)[:, :q_len].T))
        ref = (arrays.codec.centroids.double() @ q.double().T).float().numpy()  # and it is the product
        assert np.allclose(t.ScT.T, ref, atol=1e-5)


def test_kernels_are_compiled_without_fast_math(host):
    """numba's ``fastmath`` option is off for every kernel this process compiled or loaded (the IR and machine code
    themselves are read in the children below, which compile from an empty cache: code loaded from numba's cache
    cannot be inspected)."""
    from colbert_retriever.kernels import numba_kernels as nk

    assert "fastmath" not in nk.OPTIONS
    kernels = _kernels(dispatch.numba_kernel_set())
    assert len(kernels) >= 7 + 1 + 4 * 2 * 2 + 4 * 2  # shared, shared parallel, 4 widths x 2 drivers x 2, row fns
    assert not [d.py_func.__name__ for d in kernels if d.targetoptions.get("fastmath")]


def _kernels(ks) -> list:
    """Every dispatcher of a kernel set: the shared group's, each width's drivers and their row functions."""
    return list(ks._disp.values()) + [f for funcs in ks._funcs.values() for f in funcs.values()]


def ir_violations() -> list:
    """For every kernel compiled in this process: fast-math flags on float instructions of its IR, a fused
    multiply-add asked for (``llvm.fma``/``llvm.fmuladd``), FMA instructions in its machine code."""
    from colbert_retriever.kernels import numba_kernels as nk

    bad, seen = [], 0
    for d in _kernels(dispatch.numba_kernel_set()):
        for sig in d.signatures:
            seen += 1
            flags = nk.ir_float_flags(d)
            asm = d.inspect_asm(sig).lower()
            fma = [op for op in ("vfmadd", "vfnmadd", "vfmsub", "vfnmsub") if op in asm]
            if flags or fma:
                bad.append(f"{d.py_func.__name__}: {sorted(flags)} {fma}")
    return [f"inspected {seen}"] + bad


def test_flag_check_sees_fast_math():
    """The IR check above can fail: a loop compiled with numba's fastmath shows its flags."""
    import numba

    from colbert_retriever.kernels import numba_kernels as nk

    f = numba.njit(fastmath=True)(lambda x: x.sum())
    f(np.ones(64, np.float32))
    assert {"fast"} <= nk.ir_float_flags(f) or {"reassoc"} <= nk.ir_float_flags(f)


def _env(target: str, cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CPU_NAME=target, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(cache))
    if target == "haswell":  # everything else the process runs capped to AVX2 as well
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    return env


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """numba cache folders per target, shared by this module's children (the first child of a target compiles)."""
    return tmp_path_factory.mktemp("numba-caches")


def _child(target: str, tmp_path: Path, inputs: Path, caches: Path) -> dict:
    env = _env(target, caches / target)
    out = tmp_path / f"{target}.npz"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_kernels_determinism import dump; "
            f"dump({str(inputs)!r}, {str(out)!r})")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.skipif(not X86, reason="AVX2 code needs an x86-64 CPU")
@pytest.mark.skipif(bool(os.environ.get("NUMBA_CPU_NAME")), reason="already running with a chosen CPU target")
@pytest.mark.parametrize("target", ["haswell", "skylake-avx512"])
def test_other_targets_give_the_same_bits(target, host, inputs, tmp_path, caches):
    """A child compiled for another x86-64 target (from an empty numba cache) computes the same bits as this
    process for every table, kernel output and search (scores of the 20- and 40-token queries among them); the
    child's freshly compiled kernels carry no fast-math flag in their IR and no FMA instruction."""
    if target == "skylake-avx512" and not _avx512():
        pytest.skip("the host has no AVX-512")
    other = _child(target, tmp_path, inputs, caches)
    ir = other.pop("_ir").tolist()
    assert int(ir[0].split()[1]) >= 7 + 1 + 4 * 2 * 2 + 4 * 2 and ir[1:] == [], ir  # every kernel read, none flagged
    assert set(other) == set(host)
    differ = [k for k in host if not same_bits(host[k], other[k])]
    assert not differ, differ


@pytest.mark.skipif(not X86, reason="AVX2 code needs an x86-64 CPU")
@pytest.mark.skipif(bool(os.environ.get("NUMBA_CPU_NAME")), reason="already running with a chosen CPU target")
def test_kernels_compiled_for_avx2_equal_their_torch_twins(caches):
    """The twin tests of test_numba.py (every code width, 1/2/4 bits, queries of 1 to 40 tokens against the torch
    code) in a child compiled for Haswell, sharing the AVX2 cache folder of the test above."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(Path(__file__).with_name("test_numba.py")), "-k", "twins"],
                       env=_env("haswell", caches / "haswell"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 30, r.stdout[-1000:]  # the twin tests ran, not skipped
