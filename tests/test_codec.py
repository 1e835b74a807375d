import numpy as np
import pytest
import torch

from colbert_retriever import CodecConfig, InvalidArgument
from colbert_retriever.codec.residual import ResidualCodec, bucket_levels, code_dtype
from colbert_retriever.codec.kmeans import num_centroids


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


def test_bucket_cutoffs_are_quantiles_and_levels_lie_inside_their_buckets():
    x = clustered()
    codec = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=16), x.shape[0])
    assert codec.bucket_cutoffs.shape == (3,) and codec.bucket_weights.shape == (4,)
    assert torch.all(codec.bucket_weights[:-1] <= codec.bucket_cutoffs)
    assert torch.all(codec.bucket_cutoffs <= codec.bucket_weights[1:])


@pytest.mark.parametrize("nb", [2, 4, 16])
def test_bucket_levels_are_conditional_means_and_beat_quantile_midpoints(nb):
    res = np.random.default_rng(0).standard_t(5, 200_000) * 0.03  # heavy-tailed, like residuals
    cut, levels = bucket_levels(res, nb)
    assert np.allclose(cut, np.quantile(res, np.arange(1, nb) / nb))
    which = np.searchsorted(cut, res, side="right")  # torch.bucketize(right=True), as compress does
    assert np.allclose(levels, [res[which == b].mean() for b in range(nb)])
    mid = np.quantile(res, (np.arange(nb) + 0.5) / nb)
    assert ((res - levels[which]) ** 2).mean() < ((res - mid[which]) ** 2).mean()


def test_bucket_levels_fill_an_empty_bucket_with_its_midpoint():
    res = np.array([0.0] * 10 + [1.0])  # every quantile cut at 0: the lower buckets get no values
    cut, levels = bucket_levels(res, 4)
    assert np.isfinite(levels).all() and levels.shape == (4,)


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
    assert num_centroids(1_000_000, 65536) == 65536 // 16  # clamped: >= 16 sample points per centroid
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


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_compressed_domain_scores_equal_decompress_then_matmul(nbits):
    x = clustered(n=1000, dim=64)
    codec = ResidualCodec.fit(x, CodecConfig(nbits=nbits, num_centroids=16), x.shape[0])
    codes, packed = codec.compress(x)
    Q = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    ref = codec.decompress(codes, packed) @ Q.T
    Sc, lut_q, inv = codec.centroids @ Q.T, codec.query_lut(Q), codec.inverse_norms(codes, packed)
    for chunk in (7, 1000, 4096):  # chunks that do not divide n, exactly n, larger than n
        assert torch.allclose(codec.token_scores(Sc, lut_q, codes, packed, inv, chunk=chunk), ref, atol=1e-5)
        assert torch.allclose(codec.decompress(codes, packed, chunk=chunk) @ Q.T, ref, atol=1e-6)
        assert torch.allclose(codec.inverse_norms(codes, packed, chunk=chunk), inv)
    assert codec.token_scores(Sc, lut_q, codes[:0], packed[:0], inv[:0]).shape == (0, 5)


def test_centroid_scores_packed_and_float32():
    """Centroids that are float16 values (as read from disk) take the packed float16 product where fbgemm is
    there: same scores as the float32 product, plus the transpose; other centroids the float32 product."""
    from colbert_retriever.model import halfgemm

    x = clustered(n=2000, dim=64)
    fitted = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=64), x.shape[0])
    loaded = ResidualCodec.from_arrays(fitted.arrays(), 2)  # float16 centroids
    Q = torch.nn.functional.normalize(torch.randn(7, 64), dim=-1)
    for codec in (fitted, loaded):
        Sc, ScT = codec.centroid_scores(Q)
        assert Sc.shape == (64, 7) and Sc.is_contiguous()
        assert torch.allclose(Sc, codec.centroids @ Q.T, atol=1e-6)
        if ScT is not None:
            assert ScT.is_contiguous() and torch.equal(ScT, Sc.T)
    assert fitted.centroid_scores(Q)[1] is None  # float32 centroids: rounding them would change the scores
    assert (loaded.centroid_scores(Q)[1] is not None) == halfgemm.available()
    assert loaded.centroid_scores(Q[:0])[0].shape == (64, 0)


def test_coarse_to_fine_assignment_matches_exhaustive_argmax():
    """With >= COARSE_ASSIGN_MIN_K centroids, CPU assignment searches near groups only; it must still find the
    nearest centroid for almost every row and the residual is taken against whichever it picked."""
    from colbert_retriever.codec.residual import COARSE_ASSIGN_MIN_K

    g = torch.Generator().manual_seed(5)
    K, dim = COARSE_ASSIGN_MIN_K, 64
    topics = torch.nn.functional.normalize(torch.randn(64, dim, generator=g), dim=-1)  # clustered, like embeddings
    cents = torch.nn.functional.normalize(topics[torch.arange(K) % 64] + 0.08 * torch.randn(K, dim, generator=g),
                                          dim=-1)
    x = torch.nn.functional.normalize(cents[torch.randint(0, K, (20000,), generator=g)]
                                      + 0.04 * torch.randn(20000, dim, generator=g), dim=-1)
    codec = ResidualCodec(cents, torch.tensor([-0.03, 0.0, 0.03]), torch.tensor([-0.05, -0.01, 0.01, 0.05]), 2)
    got = codec.assign(x)
    exact = (x @ cents.T).argmax(1)
    assert (got == exact).float().mean() > 0.95  # misses are near-ties (and bf16 rounding on bf16 CPUs)
    assert (x * cents[got]).sum(-1).mean() > (x * cents[exact]).sum(-1).mean() - 0.002
    codes, packed = codec.compress(x)
    assert torch.equal(codes, got)


def test_two_level_kmeans_for_many_centroids():
    from colbert_retriever.codec.kmeans import TWO_LEVEL_MIN_K, train_centroids

    x = clustered(n=16 * TWO_LEVEL_MIN_K, dim=16, k=512, seed=2).numpy()
    cents = train_centroids(x, TWO_LEVEL_MIN_K, 4, 0)
    assert cents.shape[0] == TWO_LEVEL_MIN_K  # exactly k (split_shares)
    assert np.allclose(np.linalg.norm(cents, axis=1), 1.0, atol=1e-5)
    flat = train_centroids(x, TWO_LEVEL_MIN_K - 1, 4, 0)  # below TWO_LEVEL_MIN_K: one flat faiss k-means
    X = torch.from_numpy(x)
    two_level_fit = (X @ torch.from_numpy(cents).T).amax(1).mean()
    flat_fit = (X @ torch.from_numpy(flat).T).amax(1).mean()
    assert two_level_fit > flat_fit - 0.01


def test_flat_kmeans_option_runs_one_kmeans_over_all_centroids():
    """CodecConfig(kmeans="flat") skips the two-level path even at many centroids: the centroids are faiss' flat
    k-means' (normalised), not the two-level ones; the choice is recorded in the config (absent in older indexes:
    two-level); an unknown value is refused by name."""
    faiss = pytest.importorskip("faiss")
    from colbert_retriever.codec.kmeans import TWO_LEVEL_MIN_K, train_centroids

    x = clustered(n=16 * TWO_LEVEL_MIN_K, dim=16, k=512, seed=2).numpy()
    flat = train_centroids(x, TWO_LEVEL_MIN_K, 4, 0, flat=True)
    km = faiss.Kmeans(16, TWO_LEVEL_MIN_K, niter=4, seed=0, verbose=False, spherical=True,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x)
    ref = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True)
    assert np.allclose(flat, ref, atol=1e-6)
    two_level = train_centroids(x, TWO_LEVEL_MIN_K, 4, 0)
    assert two_level.shape != flat.shape or not np.allclose(two_level, flat, atol=1e-3)
    cfg = CodecConfig(nbits=2, kmeans="flat")
    assert CodecConfig.from_dict(cfg.to_dict()).kmeans == "flat"
    assert CodecConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "kmeans"}).kmeans == "two-level"
    with pytest.raises(InvalidArgument, match="kmeans='fast'"):
        CodecConfig(kmeans="fast")


def test_as_stored_is_what_the_arrays_read_back():
    x = clustered()
    codec = ResidualCodec.fit(x, CodecConfig(nbits=2, num_centroids=32), x.shape[0])
    stored = codec.as_stored()
    assert torch.equal(stored.centroids, codec.centroids.half().float())
    assert torch.equal(stored.bucket_cutoffs, codec.bucket_cutoffs)
    assert torch.equal(stored.bucket_weights, codec.bucket_weights)
    assert (stored.nbits, stored.avg_residual) == (codec.nbits, codec.avg_residual)
    assert torch.equal(stored.as_stored().centroids, stored.centroids)  # idempotent
