import numpy as np
import pytest
import torch

from colbert_retriever import CodecConfig, InvalidArgument
from colbert_retriever.codec import ResidualCodec, code_dtype
from colbert_retriever.kmeans import num_centroids


def clustered(n=4000, dim=64, k=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1)
    x = centers[torch.randint(0, k, (n,), generator=g)] + 0.15 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize("nbits,min_cos", [(1, 0.85), (2, 0.93), (4, 0.98)])
def test_roundtrip_quality(nbits, min_cos):
    x = clustered()
    codec = ResidualCodec.fit(x, CodecConfig(nbits=nbits, num_centroids=32), x.shape[0])
    codes, packed = codec.compress(x)
    assert packed.dtype == torch.uint8 and packed.shape == (x.shape[0], 64 * nbits // 8)
    y = codec.decompress(codes, packed)
    cos = (x * y).sum(-1).mean().item()
    assert cos > min_cos
    # more bits never reconstruct worse than the centroid alone
    base = (x * codec.centroids[codes]).sum(-1).mean().item()
    assert cos > base


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_bit_packing_is_lossless_on_buckets(nbits):
    x = clustered(n=500, dim=32)
    codec = ResidualCodec.fit(x, CodecConfig(nbits=nbits, num_centroids=8), x.shape[0])
    codes, packed = codec.compress(x)
    res = x - codec.centroids[codes]
    buckets = torch.bucketize(res, codec.bucket_cutoffs, right=True)
    expected = codec.centroids[codes] + codec.bucket_weights[buckets]
    assert torch.allclose(codec.decompress(codes, packed), torch.nn.functional.normalize(expected, dim=-1), atol=1e-6)


def test_bucket_weights_are_quantiles():
    x = clustered()
    codec = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=16), x.shape[0])
    assert codec.bucket_cutoffs.shape == (3,) and codec.bucket_weights.shape == (4,)
    assert torch.all(codec.bucket_weights[:-1] <= codec.bucket_cutoffs)
    assert torch.all(codec.bucket_cutoffs <= codec.bucket_weights[1:])


def test_tiny_samples_clamp_centroids():
    for n in (1, 3, 50):
        x = clustered(n=n, dim=16)
        codec = ResidualCodec.fit(x, CodecConfig(nbits=2), n)
        assert 1 <= codec.num_centroids <= n
        codes, packed = codec.compress(x)
        cos = (codec.decompress(codes, packed) * x).sum(-1)
        assert cos.mean() > 0.9 and cos.min() > 0.6


def test_num_centroids_heuristic():
    assert num_centroids(1_000_000, 10**9) == 8192  # 2**floor(log2(16*1000 = 16000))
    assert num_centroids(1_000_000, 65536) == 65536 // 39  # clamped: >= 39 points per centroid (faiss' minimum)
    assert num_centroids(10, 10) == 2  # small samples: at least 4 points per centroid
    assert num_centroids(50, 50) == 12 and num_centroids(1000, 1000) == 250 and num_centroids(3, 3) == 1
    assert code_dtype(256) == np.uint8 and code_dtype(257) == np.uint16 and code_dtype(70000) == np.int32


def test_bad_nbits_and_shape():
    with pytest.raises(InvalidArgument, match="nbits=3"):
        CodecConfig(nbits=3)
    x = clustered(n=100, dim=16)
    codec = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=4), 100)
    with pytest.raises(InvalidArgument, match="expected"):
        codec.compress(torch.randn(3, 8))


def test_arrays_roundtrip():
    x = clustered(n=300, dim=16)
    codec = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=8), 300)
    c2 = ResidualCodec.from_arrays(codec.arrays(), 2)
    codes, packed = codec.compress(x)
    assert torch.allclose(codec.decompress(codes, packed), c2.decompress(codes, packed), atol=2e-3)
