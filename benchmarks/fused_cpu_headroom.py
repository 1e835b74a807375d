"""What a compiled CPU kernel would buy (measurement for a decision; the library does not use it): PLAID's full
centroid interaction and exact stage as fused AVX2/OpenMP loops (headroom/fused_cpu.c, compiled here with gcc
into a temporary folder), swapped into ``plaid.search`` and timed against the torch stages, interleaved query by
query, on the indexes the other benchmarks build: scifact passages (``make bench``), 100k WordNet glosses
(``make bench-scale``) and the colbert-ai-layout checkpoint's scifact index at colbert-ai's most expensive knobs
(``make bench-peers``); missing ones are skipped. Checks that both give the same scores (to 1e-4) and reports
top-10 agreement between them. Needs gcc and an AVX2 CPU. Writes benchmarks/results/fused_cpu_headroom.json.

    python benchmarks/fused_cpu_headroom.py [--queries 200]
"""
from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, WORK, machine_info, percentiles, wordnet_sample, write_json  # noqa: E402

from colbert_retriever import Index, SearchConfig, plaid  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "headroom" / "fused_cpu.c"


def build(folder: Path) -> ctypes.CDLL:
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is needed to build the measured kernels (headroom/fused_cpu.c)")
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("the measured kernels need an AVX2 CPU")
    lib = folder / "libfused_cpu.so"
    subprocess.run(["gcc", "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(lib)],
                   check=True)
    so = ctypes.CDLL(str(lib))
    P = ctypes.c_void_p
    so.fused_exact.argtypes = [P, P, P, P, P, ctypes.c_int64, P, P, ctypes.c_int, ctypes.c_int, P]
    so.fused_centroid.argtypes = [P, P, P, ctypes.c_int64, P, ctypes.c_int, P]
    return so


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _padded(table: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows, q) float32 -> (rows, qv * 8) contiguous with zero columns, and qv."""
    q = table.shape[1]
    qv = -(-q // 8)
    return torch.nn.functional.pad(table.float(), (0, qv * 8 - q)).contiguous(), qv


class Fused:
    """Drop-in ``centroid_interaction`` / ``exact_scores`` for one single-segment CPU index, on the C loops."""

    def __init__(self, so: ctypes.CDLL, arrays):
        if len(arrays.codes.parts) != 1:
            raise ValueError("one segment only")
        self.so, self.A = so, arrays
        self.codes = arrays.codes.parts[0]
        if self.codes.dtype != torch.uint16:
            self.codes = self.codes.to(torch.int32).to(torch.uint16).contiguous()
        self.res = arrays.residuals.parts[0]
        self.inv = arrays.inv_norms.parts[0].contiguous()
        self.off = arrays.doc_offsets.contiguous()

    def centroid_interaction(self, Sc, arrays, pids):
        S, qv = _padded(Sc)
        out = torch.empty(pids.numel(), dtype=torch.float32)
        self.so.fused_centroid(_p(self.codes), _p(self.off), _p(pids.contiguous()), pids.numel(), _p(S), qv, _p(out))
        return out

    def exact_scores(self, Q, arrays, pids, Sc=None, chunk_docs=None):
        c = self.A.codec
        Sc = Sc if Sc is not None else c.centroid_scores(Q)[0]
        S, qv = _padded(Sc)
        lut, _ = _padded(c.query_lut(Q))
        out = torch.empty(pids.numel(), dtype=torch.float32)
        self.so.fused_exact(_p(self.codes), _p(self.res), _p(self.inv), _p(self.off), _p(pids.contiguous()),
                            pids.numel(), _p(S), _p(lut), qv, c.packed_dim, _p(out))
        return out


@contextmanager
def swapped(fused: Fused):
    saved = plaid.centroid_interaction, plaid.exact_scores, plaid.CI_HALF
    plaid.centroid_interaction, plaid.exact_scores, plaid.CI_HALF = fused.centroid_interaction, fused.exact_scores, False
    try:
        yield
    finally:
        plaid.centroid_interaction, plaid.exact_scores, plaid.CI_HALF = saved


def check_equal(fused: Fused, A, Q: torch.Tensor, n: int = 20) -> float:
    """Largest score difference, torch stage vs fused loop, over the first n queries' stage inputs."""
    worst = 0.0
    for qi in range(min(n, Q.shape[0])):
        q = Q[qi][Q[qi].abs().sum(-1) > 0]
        Sc = A.codec.centroid_scores(q)[0]
        pids = torch.arange(0, A.num_docs, max(1, A.num_docs // 512))
        worst = max(worst, float((plaid.centroid_interaction(Sc, A, pids) - fused.centroid_interaction(Sc, A, pids)).abs().max()),
                    float((plaid.exact_scores(q, A, pids, Sc) - fused.exact_scores(q, A, pids, Sc)).abs().max()))
    return worst


def measure(name: str, index: Index, Q: torch.Tensor, cfg: SearchConfig, so: ctypes.CDLL, k: int = 10) -> dict:
    A = index._current().arrays
    fused = Fused(so, A)
    with torch.inference_mode():
        diff = check_equal(fused, A, Q)
        if diff > 1e-4:
            raise SystemExit(f"{name}: fused loops disagree with the torch stages (max abs {diff:.2e})")
        lat = {"torch": [], "fused": []}
        res = {"torch": [], "fused": []}
        for rep in range(2):  # the first pass warms caches and page mappings
            for qi in range(Q.shape[0]):
                q = Q[qi]
                for mode in (("torch", "fused") if qi % 2 else ("fused", "torch")):
                    t = time.perf_counter()
                    if mode == "fused":
                        with swapped(fused):
                            pids, _ = plaid.search(q, A, k, cfg)
                    else:
                        pids, _ = plaid.search(q, A, k, cfg)
                    if rep:
                        lat[mode].append((time.perf_counter() - t) * 1000)
                        res[mode].append(set(pids.tolist()))
    agree = float(np.mean([len(a & b) / max(1, len(a)) for a, b in zip(res["torch"], res["fused"])]))
    row = {"index": name, "queries": Q.shape[0], "knobs": str(cfg), "search_ms_torch": percentiles(lat["torch"]),
           "search_ms_fused": percentiles(lat["fused"]),
           "ratio_p50": round(float(np.median(lat["fused"]) / np.median(lat["torch"])), 3),
           "top10_agreement_fused_vs_torch": round(agree, 4), "max_abs_score_diff": diff}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    from colbert_retriever import ColBERT, load_model
    from colbert_retriever.evaluation import load_corpus, load_queries

    out = {"machine": machine_info(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        so = build(Path(tmp))
        model = load_model("default")
        if (WORK / "scifact-nbits2").exists():
            qs = list(load_queries(SHARED / "scifact").values())[: args.queries]
            out["runs"].append(measure("scifact passages (default model)", Index.open(WORK / "scifact-nbits2", model=model),
                                       model.encode_queries(qs), SearchConfig(), so))
        if (WORK / "wordnet-100000").exists():
            qs = wordnet_sample(load_corpus(SHARED / "wordnet-glosses")[2], args.queries)[1]
            out["runs"].append(measure("100k WordNet glosses (default model)",
                                       Index.open(WORK / "wordnet-100000", model=model), model.encode_queries(qs),
                                       SearchConfig(), so))
        peers = WORK / "peers"
        if (peers / "ours-scifact").exists() and (peers / "checkpoint").exists():
            ckpt = ColBERT.from_pretrained(peers / "checkpoint", dtype=None)
            ckpt.fp16_query_weights = False  # the peer benchmark's query embeddings (equal to colbert-ai's)
            queries = load_queries(SHARED / "scifact")
            Q = ckpt.encode_queries(list(queries.values())[: min(args.queries, 100)]).float()
            out["runs"].append(measure("scifact, colbert-ai-layout checkpoint, (8, 0.4, 8192)",
                                       Index.open(peers / "ours-scifact", model=ckpt), Q,
                                       SearchConfig(ncells=8, centroid_score_threshold=0.4, ndocs=8192), so))
    print(write_json("fused_cpu_headroom.json", out))


if __name__ == "__main__":
    main()
