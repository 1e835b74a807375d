"""Why is the fused Triton exact-MaxSim kernel slower than the torch path on a GPU (benchmarks/gpu.py on an H200:
2.16 vs 0.91 ms for 1,024 documents)? Times ``maxsim_compressed`` over its dot precision ("ieee" true fp32, "tf32x3",
"tf32") and token block size, against the torch compressed-domain path (``stages.exact_scores``, kernels="torch"),
with the largest score difference from the torch path. Needs CUDA; prints one JSON line per variant.

    python benchmarks/experiments/triton_exact.py
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu import timeit  # noqa: E402

from colbert_retriever import CodecConfig  # noqa: E402
from colbert_retriever.search.arrays import IndexArrays  # noqa: E402
from colbert_retriever.codec.residual import ResidualCodec  # noqa: E402
from colbert_retriever.search.stages import exact_scores, gather_rows  # noqa: E402
from colbert_retriever.codec.strided import inverted_file, offsets_from_lengths  # noqa: E402
from colbert_retriever.triton_kernels.maxsim import maxsim_compressed  # noqa: E402


def main():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    docs, doclen = 20000, 100
    x = torch.nn.functional.normalize(torch.randn(docs * doclen, 128, generator=g), dim=-1)
    codec = ResidualCodec.fit(x[:200_000], CodecConfig(nbits=2, num_centroids=8192), len(x))
    codec = ResidualCodec(codec.centroids.to(dev), codec.bucket_cutoffs.to(dev), codec.bucket_weights.to(dev), 2)
    codes, packed = codec.compress(x.to(dev))
    lengths = torch.full((docs,), doclen)
    ivf_p, ivf_o = inverted_file(codes.cpu().numpy(), lengths.numpy(), codec.num_centroids)
    arrays = IndexArrays.single(codec, codes, packed, offsets_from_lengths(lengths).to(dev),
                                torch.from_numpy(ivf_p).long().to(dev), torch.from_numpy(ivf_o).to(dev))
    Q = torch.nn.functional.normalize(torch.randn(32, 128, device=dev), dim=-1)
    for n in (1024, 8192):
        pids = torch.arange(n, device=dev)
        ref = exact_scores(Q, arrays, pids, kernels="torch")
        print(json.dumps({"docs": n, "variant": "torch", "ms": timeit(lambda: exact_scores(Q, arrays, pids,
                                                                                          kernels="torch"))}))
        idx, sub = gather_rows(arrays.doc_offsets, pids)
        c, p = arrays.codes.take(idx), arrays.residuals.take(idx)
        print(json.dumps({"docs": n, "variant": "gather only", "ms": timeit(lambda: gather_rows(arrays.doc_offsets,
                                                                                                 pids))}))
        for prec in ("ieee", "tf32x3", "tf32"):
            for bt in (16, 32, 64, 128):
                fn = lambda: maxsim_compressed(Q, c, p, codec.centroids, codec.bucket_weights, 2, sub,  # noqa: E731
                                               block_t=bt, precision=prec)
                try:
                    err = float((fn() - ref).abs().max())
                except Exception as e:  # e.g. OutOfResources (shared memory) at large blocks
                    print(json.dumps({"docs": n, "variant": f"triton {prec} block {bt}", "error": str(e)[:120]}))
                    continue
                print(json.dumps({"docs": n, "variant": f"triton {prec} block {bt}", "ms": timeit(fn),
                                  "max_abs_diff": err}), flush=True)


if __name__ == "__main__":
    main()
