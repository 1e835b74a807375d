"""Each Triton kernel against the torch reference, under TRITON_INTERPRET=1 on CPU."""

import pytest
import torch

from colbert_retriever import CodecConfig, kernel_backend
from colbert_retriever.codec.residual import ResidualCodec
from colbert_retriever.kernels.scoring import maxsim_packed
from colbert_retriever.codec.strided import offsets_from_lengths
from colbert_retriever.triton_kernels import centroid_scores, compress, decompress, maxsim


def make_codec(dim, nbits, n=400, k=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return ResidualCodec.fit(x, CodecConfig(nbits=nbits, num_centroids=k), n), x


@pytest.mark.parametrize("dim", [64, 96, 128])
@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_decompress(dim, nbits):
    codec, x = make_codec(dim, nbits, n=70)
    with kernel_backend("torch"):
        codes, packed = codec.compress(x)
        ref = codec.decompress(codes, packed)
    out = decompress.decompress(codes, packed, codec.centroids, codec.bucket_weights, nbits)
    assert torch.allclose(out, ref, atol=1e-5)
    out16 = decompress.decompress(codes, packed, codec.centroids, codec.bucket_weights, nbits, torch.float16)
    assert torch.allclose(out16.float(), ref, atol=2e-3)
    assert decompress.decompress(codes[:0], packed[:0], codec.centroids, codec.bucket_weights, nbits).shape == (0, dim)


@pytest.mark.parametrize("lengths", [[1], [1, 33, 5, 64, 2], [17, 31, 32, 33], []])
@pytest.mark.parametrize("q_len", [1, 7, 32])
def test_maxsim(lengths, q_len):
    g = torch.Generator().manual_seed(len(lengths) + q_len)
    dim = 96
    embs = torch.nn.functional.normalize(torch.randn(sum(lengths), dim, generator=g), dim=-1)
    Q = torch.nn.functional.normalize(torch.randn(q_len, dim, generator=g), dim=-1)
    off = offsets_from_lengths(lengths)
    ref = maxsim_packed(Q, embs, off)
    assert torch.allclose(maxsim.maxsim(Q, embs, off), ref, atol=1e-4)


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_maxsim_compressed_fused(nbits):
    codec, x = make_codec(128, nbits, n=150)
    with kernel_backend("torch"):
        codes, packed = codec.compress(x)
        lengths = [1, 40, 3, 70, 36]
        off = offsets_from_lengths(lengths)
        Q = torch.nn.functional.normalize(torch.randn(5, 128), dim=-1)
        ref = maxsim_packed(Q, codec.decompress(codes, packed), off)
    out = maxsim.maxsim_compressed(Q, codes, packed, codec.centroids, codec.bucket_weights, nbits, off)
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_centroid_interaction(threshold):
    g = torch.Generator().manual_seed(3)
    K, q_len = 50, 5
    Sc = torch.rand(K, q_len, generator=g) * 0.8 - 0.1
    lengths = [1, 9, 70, 3, 65]
    codes = torch.randint(0, K, (sum(lengths),), generator=g)
    off = offsets_from_lengths(lengths)
    pids = torch.tensor([0, 2, 4, 1])
    ref = []
    keep = Sc.amax(1) >= (threshold if threshold is not None else -1e9)
    for p in pids.tolist():
        c = codes[off[p]:off[p + 1]]
        s = Sc[c]
        if threshold is not None:
            s = torch.where(keep[c][:, None], s, torch.zeros_like(s))
            s = torch.cat([s, torch.zeros(1, q_len)])  # each query token's max starts at 0
        ref.append(float(s.max(0).values.sum()))
    out = centroid_scores.centroid_interaction(Sc, codes, off, pids, threshold)
    assert torch.allclose(out, torch.tensor(ref), atol=1e-5)
    assert centroid_scores.centroid_interaction(Sc, codes, off, pids[:0]).shape == (0,)


def test_centroid_interaction_matches_plaid_reference():
    """The kernel equals stages.centroid_interaction / stages.pruned_interaction (the torch paths)."""
    from colbert_retriever.search import arrays as arrays_mod, stages
    from colbert_retriever.codec.strided import inverted_file

    codec, x = make_codec(64, 2, n=300, k=32)
    with kernel_backend("torch"):
        codes, packed = codec.compress(x)
    lengths = torch.tensor([30, 1, 50, 19, 200])
    ivf_p, ivf_o = inverted_file(codes.numpy(), lengths.numpy(), 32)
    arrays = arrays_mod.IndexArrays.single(codec, codes, packed, offsets_from_lengths(lengths),
                                           torch.from_numpy(ivf_p).long(),
                               torch.from_numpy(ivf_o))
    Q = torch.nn.functional.normalize(torch.randn(6, 64), dim=-1)
    Sc = codec.centroids @ Q.T
    pids = torch.tensor([0, 1, 2, 3, 4])
    ref_full = stages.centroid_interaction(Sc, arrays, pids, kernels="torch")
    ref_pruned = stages.pruned_interaction(Sc, arrays, pids, 0.3, kernels="torch")
    assert torch.allclose(stages.centroid_interaction(Sc, arrays, pids, kernels="triton"), ref_full, atol=1e-5)
    assert torch.allclose(stages.pruned_interaction(Sc, arrays, pids, 0.3, kernels="triton"), ref_pruned, atol=1e-5)


@pytest.mark.parametrize("nbits", [1, 2, 4])
@pytest.mark.parametrize("dim", [64, 96])
def test_compress(nbits, dim):
    codec, x = make_codec(dim, nbits, n=45, k=20)
    codes, packed = compress.compress(x, codec.centroids, codec.bucket_cutoffs, nbits)
    S = x @ codec.centroids.T  # fp32 reference: the best centroid (two within last bits are a tie)
    assert torch.allclose(S.gather(1, codes.long()[:, None])[:, 0], S.amax(1), atol=1e-6)
    res = x - codec.centroids[codes.long()]
    buckets = torch.bucketize(res, codec.bucket_cutoffs, right=True)
    per = 8 // nbits
    ref_packed = (buckets.view(len(x), -1, per) << (torch.arange(per) * nbits)).sum(-1).to(torch.uint8)
    assert torch.equal(packed, ref_packed)


def test_dispatch_defaults_to_torch_on_cpu_and_can_be_forced():
    from colbert_retriever.kernels import dispatch

    t = torch.zeros(2)
    assert not dispatch.use_triton(t)  # CPU tensors take the torch path unless forced
    with kernel_backend("triton"):
        assert dispatch.use_triton(t)
        with kernel_backend("torch"):
            assert not dispatch.use_triton(t)
    with pytest.raises(ValueError, match="unknown"):
        with kernel_backend("cuda"):
            pass


def test_search_with_forced_triton_equals_torch(tmp_path, tiny_model):
    """End to end: PLAID search through the kernels (interpreter) gives the torch path's results."""
    from colbert_retriever import Index

    from ..conftest import assert_ranked_alike, make_corpus

    texts = make_corpus(40, seed=1)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False,
                      codec_config=CodecConfig(nbits=2, num_centroids=16))
    q = "python kernel memory"
    with kernel_backend("torch"):
        ref = idx.search(q, k=5, ncells=2, ndocs=20)
        ref_exh = idx.search(q, k=5, exhaustive=True)
    with kernel_backend("triton"):
        got = idx.search(q, k=5, ncells=2, ndocs=20)
        got_exh = idx.search(q, k=5, exhaustive=True)
    assert_ranked_alike(got, ref, 1e-4)  # two computations: ties in any order
    assert_ranked_alike(got_exh, ref_exh, 1e-4)

