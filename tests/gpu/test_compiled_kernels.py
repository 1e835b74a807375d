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
from colbert_retriever.codec.residual import ResidualCodec  # noqa: E402
from colbert_retriever.kernels.scoring import maxsim_packed  # noqa: E402
from colbert_retriever.codec.strided import offsets_from_lengths  # noqa: E402


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
    from colbert_retriever.kernels import dispatch

    Q = torch.nn.functional.normalize(torch.randn(32, 128), dim=-1)
    ref = maxsim_packed(Q, ref_dec, off)
    got = dispatch.maxsim_compressed(Q.to(dev), codes.to(dev), packed.to(dev), gpu.centroids, gpu.bucket_weights,
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


def test_index_on_cuda_searches_alike_with_triton_and_torch(tmp_path):
    """The whole path on the GPU: an index built and opened on CUDA answers the same top-k (scores to float
    rounding) with the Triton kernels and the torch twins, by PLAID and exhaustively, and agrees with a CPU open
    (same scores; at most a near-tie at the cut differs)."""
    from colbert_retriever import Index, SearchConfig

    g = torch.Generator().manual_seed(3)
    centers = torch.nn.functional.normalize(torch.randn(60, 128, generator=g), dim=-1)
    docs = []
    for i in range(3000):  # clustered tokens, so PLAID's pruning has something to prune
        c = centers[torch.randint(0, 60, (int(torch.randint(8, 60, (1,), generator=g)),), generator=g)]
        docs.append(torch.nn.functional.normalize(c + 0.15 * torch.randn(c.shape, generator=g), dim=-1))
    Index.build_from_embeddings(tmp_path / "ix", docs, ids=[f"d{i}" for i in range(len(docs))], name="synthetic",
                                device="cuda", show_progress=False)
    gpu = Index.open(tmp_path / "ix", device="cuda")
    cpu = Index.open(tmp_path / "ix", device="cpu")
    Q = [docs[i][:20] + 0.05 for i in (5, 500, 2500)]
    for exhaustive in (False, True):
        got = {kern: gpu.search_embeddings(Q, 10, config=SearchConfig(kernels=kern, exhaustive=exhaustive))
               for kern in ("triton", "torch")}
        ref = cpu.search_embeddings(Q, 10, config=SearchConfig(kernels="torch", exhaustive=exhaustive))
        for a, b, c in zip(got["triton"], got["torch"], ref):
            assert {h.id for h in a} == {h.id for h in b}
            assert len({h.id for h in a} & {h.id for h in c}) >= 9  # a near-tie at the cut may flip across devices
            cpu_scores = {h.id: h.score for h in c}
            for x in a:
                if x.id in cpu_scores:
                    assert abs(x.score - cpu_scores[x.id]) < 2e-3
