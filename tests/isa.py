"""The instruction-set passes of ``make test`` and the check that a pass really runs capped.

``make test`` runs the suite natively, then in a process capped to AVX2 (torch's ATen kernels, oneDNN, MKL and
numba's code generation, and the library's bf16 probe), then a short pass on ATen's scalar kernels. An environment
variable that a library ignores caps nothing, so each pass starts by checking, in its own process, what each
library reports it runs (``problems``); conftest stops the session when the check fails. Run by hand::

    env $(python -m tests.isa avx2) python -m pytest --isa avx2 ...
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import tempfile

CAPS: dict[str, dict[str, str]] = {
    "native": {},
    # NUMBA_CPU_NAME alone keeps the host's feature flags (numba passes get_host_cpu_features() to LLVM, AVX-512
    # included): NUMBA_CPU_FEATURES="" makes LLVM use the named CPU's own features
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "COLBERT_RETRIEVER_CPU_BF16": "0"},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
}
"""The environment of each pass (set before the process starts: torch and numba read it at import)."""

CAP_VARIABLES = sorted({name for caps in CAPS.values() for name in caps})


def _c_stdout(fn) -> str:
    """What ``fn`` writes to file descriptor 1 (C libraries' verbose lines), flushed and captured."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            fn()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def onednn_isa() -> str:
    """The ISA oneDNN dispatches to, from its verbose header (printed by the first primitive of a process: call
    this before anything else runs a oneDNN primitive). "" when no header came."""
    import torch

    def run():
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            x = torch.ones(1, 4, 8, 8).to_mkldnn()
            torch.nn.functional.conv2d(x, torch.ones(4, 4, 3, 3).to_mkldnn())

    m = re.search(r"onednn_verbose,(?:v1,)?info,cpu,isa:([^\n]*)", _c_stdout(run))
    return m.group(1).strip() if m else ""


def mkl_isa() -> str:
    """MKL's description of the code path it runs, from its verbose line of a GEMM ("" without MKL)."""
    import torch

    if not torch.backends.mkl.is_available():
        return ""

    def run():
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            a = torch.ones(64, 64)
            (a @ a).sum()

    m = re.search(r"MKL_VERBOSE oneMKL[^\n]*? for ([^\n]*?), Lnx", _c_stdout(run))
    return m.group(1).strip() if m else ""


def numba_target() -> tuple[str, str]:
    """(CPU name, feature string) numba's JIT compiles for: what its target machine and cache key are made of."""
    from numba.core.registry import cpu_target

    _, name, features = cpu_target.target_context.codegen().magic_tuple()
    return name, features


@functools.cache
def report() -> dict:
    """What each library runs in this process, read once (oneDNN prints its ISA once per process: see
    ``onednn_isa``; conftest reads it before any test runs)."""
    import torch

    from colbert_retriever.device import cpu_supports_bf16

    name, features = numba_target()
    return {"aten": torch.backends.cpu.get_cpu_capability(), "onednn": onednn_isa(), "mkl": mkl_isa(),
            "numba_cpu": name, "numba_avx512": "+avx512f" in features.split(","),
            "bf16_probe": cpu_supports_bf16(),
            "env": {k: os.environ[k] for k in CAP_VARIABLES if k in os.environ}}


def problems(isa: str, seen: dict | None = None) -> list[str]:
    """Why this process does not run as the pass ``isa`` asks (empty: it does). ``seen``: a ``report()``."""
    seen = report() if seen is None else seen
    out = []
    if isa not in CAPS:
        return [f"unknown pass {isa!r} (one of {', '.join(CAPS)})"]
    want = CAPS[isa]
    for name in CAP_VARIABLES:
        if seen["env"].get(name) != want.get(name):
            out.append(f"{name}={seen['env'].get(name)!r}, the {isa} pass sets {want.get(name)!r}")
    if isa == "avx2":
        if seen["aten"] != "AVX2":
            out.append(f"torch runs its {seen['aten']} kernels, not AVX2")
        if "AVX-512" in seen["onednn"] or "AVX2" not in seen["onednn"]:
            out.append(f"oneDNN dispatches to {seen['onednn'] or 'an ISA it did not print'}, not AVX2")
        if "AVX-512" in seen["mkl"]:
            out.append(f"MKL runs its code for {seen['mkl']}")
        if seen["numba_cpu"] != "haswell" or seen["numba_avx512"]:
            out.append(f"numba compiles for {seen['numba_cpu']}"
                       f"{' with AVX-512' if seen['numba_avx512'] else ''}, not an AVX2-only haswell")
        if seen["bf16_probe"]:
            out.append("the library's CPU probe reports native bf16")
    elif isa == "default" and seen["aten"] != "DEFAULT":
        out.append(f"torch runs its {seen['aten']} kernels, not its scalar (DEFAULT) ones")
    return out


if __name__ == "__main__":  # python -m tests.isa avx2: the pass's variables, for env(1)
    print(" ".join(f"{k}={v}" for k, v in CAPS[sys.argv[1]].items()))
