"""The instruction-set passes (tests/isa.py): this pass runs as its caps say (conftest already refused to start
otherwise; sorted first, this test says so in the report), and the check fails where the caps are missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import isa

ROOT = Path(__file__).resolve().parents[1]


def test_this_pass_runs_capped_as_asked(request):
    name = request.config.getoption("--isa")
    if name is None:
        pytest.skip("no --isa given: this run is not one of make test's passes")
    assert isa.problems(name) == []


def _in_a_child(env_caps: dict, *passes: str) -> dict:
    """A fresh process with exactly ``env_caps`` set: its report and its problems as each of ``passes``."""
    env = {k: v for k, v in os.environ.items() if k not in isa.CAP_VARIABLES}
    script = ("import json, sys; from tests import isa; seen = isa.report(); "
              "print(json.dumps({'seen': seen, **{p: isa.problems(p, seen) for p in sys.argv[1:]}}))")
    out = subprocess.run([sys.executable, "-c", script, *passes], env={**env, **env_caps}, cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_check_fails_without_the_caps():
    """An uncapped process is not the AVX2 or the default pass; a capped one is the AVX2 pass and not the native
    one. On an AVX-512 host the uncapped libraries' own answers fail the check too (on an AVX2-only host torch and
    numba run AVX2 code uncapped: there only the variables differ)."""
    bare = _in_a_child({}, "avx2", "default", "native")
    assert bare["native"] == []
    assert any(p.startswith("ATEN_CPU_CAPABILITY=None") for p in bare["avx2"]) and bare["default"]
    if bare["seen"]["aten"] == "AVX512":
        assert "torch runs its AVX512 kernels, not AVX2" in bare["avx2"]
        assert any(p.startswith("numba compiles for") for p in bare["avx2"]), bare["avx2"]
    capped = _in_a_child(isa.CAPS["avx2"], "avx2", "native")
    assert capped["avx2"] == [] and capped["native"]
    assert capped["seen"]["aten"] == "AVX2" and capped["seen"]["numba_cpu"] == "haswell"


def test_the_check_reads_what_the_libraries_run():
    """Variables set right but ignored would pass the environment check: the check also rejects a process whose
    libraries report another ISA (here: a report as an uncapped AVX-512 machine gives)."""
    seen = {"aten": "AVX512", "onednn": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
            "mkl": "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) enabled processors",
            "numba_cpu": "haswell", "numba_avx512": True, "bf16_probe": True, "env": dict(isa.CAPS["avx2"])}
    wrong = isa.problems("avx2", seen)
    assert [w.split()[0] for w in wrong] == ["torch", "oneDNN", "MKL", "numba", "the"], wrong
    assert isa.problems("default", {**seen, "env": dict(isa.CAPS["default"])}) == [
        "torch runs its AVX512 kernels, not its scalar (DEFAULT) ones"]


def test_ranked_alike_accepts_ties_and_rejects_real_differences():
    """``assert_ranked_alike``: near-ties in either order and a tie at the cut pass; a swap of hits that are not
    tied, a score off by more than the tolerance, or a clearly better hit missing fail."""
    from .conftest import assert_ranked_alike

    a = [("x", 3.0), ("y", 2.00001), ("z", 2.0), ("w", 1.0)]
    assert_ranked_alike(a, [("x", 3.0), ("z", 2.00001), ("y", 2.0), ("w", 1.0)], 1e-4)  # tied: either order
    assert_ranked_alike(a, [("x", 3.0), ("y", 2.00001), ("z", 2.0), ("v", 1.00002)], 1e-4)  # w and v tie at the cut
    for other in ([("y", 3.0), ("x", 2.00001), ("z", 2.0), ("w", 1.0)],  # x and y are not tied
                  [("x", 3.001), ("y", 2.00001), ("z", 2.0), ("w", 1.0)],  # off by more than tol
                  [("x", 3.0), ("y", 2.00001), ("w", 1.0), ("v", 0.5)],  # z (2.0) missing above the cut
                  a[:3]):
        with pytest.raises(AssertionError):
            assert_ranked_alike(a, other, 1e-4)
