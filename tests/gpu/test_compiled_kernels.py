"""Compiled Triton kernels on CUDA against the torch path on the same GPU. Marked ``gpu`` (deselected by default;
run ``pytest -m gpu tests/gpu`` in its own process: tests/kernels sets TRITON_INTERPRET=1 for its session)."""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs CUDA and compiled (not interpreted) Triton", allow_module_level=True)
pytest.importorskip("triton")

from colbert_retriever import CodecConfig, kernel_backend  # noqa: E402
from colbert_retriever.codec import ResidualCodec  # noqa: E402
from colbert_retriever.scoring import maxsim_packed  # noqa: E402
from colbert_retriever.strided import offsets_from_lengths  # noqa: E402


def setup(nbits=2, n_docs=300, dim=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(4000, dim, generator=g), dim=-1)
    codec = ResidualCodec.fit(x, CodecConfig(nbits=nbits, num_centroids=64), 4000)
    lengths = torch.randint(1, 40, (n_docs,), generator=g)
    embs = torch.nn.functional.normalize(torch.randn(int(lengths.sum()), dim, generator=g), dim=-1)
    return codec, embs, offsets_from_lengths(lengths)


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_decompress_and_fused_maxsim_match_torch_on_gpu(nbits):
    codec, embs, off = setup(nbits)
    with kernel_backend("torch"):
        codes, packed = codec.compress(embs)
        ref_dec = codec.decompress(codes, packed)
    dev = torch.device("cuda")
    gpu = ResidualCodec(codec.centroids.to(dev), codec.bucket_cutoffs.to(dev), codec.bucket_weights.to(dev), nbits)
    dec = gpu.decompress(codes.to(dev), packed.to(dev))
    assert torch.allclose(dec.cpu(), ref_dec, atol=1e-5)
    from colbert_retriever import _kernels

    Q = torch.nn.functional.normalize(torch.randn(32, 128), dim=-1)
    ref = maxsim_packed(Q, ref_dec, off)
    got = _kernels.maxsim_compressed(Q.to(dev), codes.to(dev), packed.to(dev), gpu.centroids, gpu.bucket_weights,
                                     nbits, off.to(dev))
    assert torch.allclose(got.cpu(), ref, atol=1e-4)  # ieee fp32 dots: float rounding only


def test_compress_on_gpu_reconstructs_like_torch():
    codec, embs, _ = setup(2)
    dev = torch.device("cuda")
    gpu = ResidualCodec(codec.centroids.to(dev), codec.bucket_cutoffs.to(dev), codec.bucket_weights.to(dev), 2)
    codes, packed = gpu.compress(embs.to(dev))
    with kernel_backend("torch"):
        ref_codes, ref_packed = codec.compress(embs)
        ref_cos = (codec.decompress(ref_codes, ref_packed) * embs).sum(-1).mean()
    cos = (gpu.decompress(codes, packed).cpu() * embs).sum(-1).mean()
    assert (codes.cpu() == ref_codes).float().mean() > 0.99  # TF32 assignment: rare near-tie flips
    assert abs(float(cos) - float(ref_cos)) < 1e-3
