"""GPU benchmark: Triton kernels vs the torch reference on CUDA, and end-to-end search latency with either path.

    python benchmarks/gpu.py [--tokens 2000000] [--docs 20000]

Needs a CUDA device and triton. Writes benchmarks/results/gpu.json and re-renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_json  # noqa: E402

from colbert_retriever import CodecConfig, SearchConfig, kernel_backend  # noqa: E402
from colbert_retriever.codec.residual import ResidualCodec  # noqa: E402
from colbert_retriever.search.arrays import IndexArrays  # noqa: E402
from colbert_retriever.search.plaid import search  # noqa: E402
from colbert_retriever.search.stages import centroid_interaction, exact_scores, pruned_interaction  # noqa: E402
from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths  # noqa: E402


def timeit(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - t) / reps * 1000, 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--doclen", type=int, default=100)
    ap.add_argument("--centroids", type=int, default=8192)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    n_tok = args.docs * args.doclen
    x = torch.nn.functional.normalize(torch.randn(n_tok, 128, generator=g), dim=-1)
    codec = ResidualCodec.fit(x[:200_000], CodecConfig(nbits=2, num_centroids=args.centroids), n_tok)
    codec = ResidualCodec(codec.centroids.to(dev), codec.bucket_cutoffs.to(dev), codec.bucket_weights.to(dev), 2)
    xd = x.to(dev)
    res = {"machine": machine_info(), "gpu": torch.cuda.get_device_name(0), "tokens": n_tok, "docs": args.docs}
    for backend in ("torch", "triton"):
        with kernel_backend(backend):
            res[f"compress_ms_{backend}"] = timeit(lambda: codec.compress(xd[:262144]), reps=5)
    with kernel_backend("torch"):
        codes, packed = codec.compress(xd)
    lengths = torch.full((args.docs,), args.doclen)
    ivf_p, ivf_o = inverted_file(codes.cpu().numpy(), lengths.numpy(), codec.num_centroids)
    arrays = IndexArrays.single(codec, codes, packed, offsets_from_lengths(lengths).to(dev),
                         torch.from_numpy(ivf_p).long().to(dev), torch.from_numpy(ivf_o).to(dev))
    Q = torch.nn.functional.normalize(torch.randn(32, 128, device=dev), dim=-1)
    Sc = codec.centroids @ Q.T
    pids = torch.arange(min(args.docs, 4096), device=dev)
    for backend in ("torch", "triton"):
        with kernel_backend(backend):  # the codec's decompress follows the thread-local switch
            res[f"decompress_1M_ms_{backend}"] = timeit(lambda: codec.decompress(codes[:1_000_000], packed[:1_000_000]))
        res[f"exact_maxsim_1024docs_ms_{backend}"] = timeit(
            lambda: exact_scores(Q, arrays, pids[:1024], Sc, kernels=backend))
        res[f"centroid_interaction_4096docs_ms_{backend}"] = timeit(
            lambda: centroid_interaction(Sc, arrays, pids, kernels=backend))
        res[f"pruned_interaction_4096docs_ms_{backend}"] = timeit(
            lambda: pruned_interaction(Sc, arrays, pids, 0.45, kernels=backend))
        res[f"search_k10_ms_{backend}"] = timeit(lambda: search(Q, arrays, 10, SearchConfig(kernels=backend)))
        res[f"exhaustive_k10_ms_{backend}"] = timeit(
            lambda: search(Q, arrays, 10, SearchConfig(exhaustive=True, kernels=backend)), reps=3)
    print(res)
    write_json("gpu.json", res)
    from render import render

    render()


if __name__ == "__main__":
    main()
