"""What broke or grew faster than linear on the way to 100M token embeddings (``make bench-100m``), each at a size
that shows it: the inverted file built in runs of documents (memory: the output plus one run, not ~34 bytes per
token), the two-level k-means giving exactly the centroids asked for (65,536 must stay uint16 codes), and the
build's stage times covering the inverted file."""

import tracemalloc

import numpy as np
import pytest
import torch

from colbert_retriever.codec.kmeans import split_shares
from colbert_retriever.codec.residual import code_dtype
from colbert_retriever.codec.strided import inverted_file


def one_sort_inverted_file(codes, doclens, k):
    """The reference: every (centroid, document) key of the whole collection sorted at once."""
    n_docs = len(doclens)
    pid = np.repeat(np.arange(n_docs, dtype=np.int64), doclens)
    keys = np.unique(np.asarray(codes, dtype=np.int64) * max(n_docs, 1) + pid)
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // max(n_docs, 1), minlength=k), out=offsets[1:])
    return (keys % max(n_docs, 1)).astype(np.int32), offsets


@pytest.mark.parametrize("seed", range(4))
def test_inverted_file_in_runs_equals_one_sort(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 300))
    doclens = rng.integers(0, 30, int(rng.integers(1, 400)))  # some documents hold no tokens
    codes = rng.integers(0, k, int(doclens.sum())).astype(code_dtype(k))
    ref = one_sort_inverted_file(codes, doclens, k)
    for run in (1, 7, 64, 1 << 20):  # a run is whole documents: one of 29 tokens stays whole with runs of 7
        pids, offsets = inverted_file(codes, doclens, k, chunk_tokens=run)
        assert pids.dtype == np.int32 and offsets.dtype == np.int64
        assert np.array_equal(pids, ref[0]) and np.array_equal(offsets, ref[1]), run
    empty = inverted_file(np.zeros(0, np.uint8), np.zeros(0, np.int64), 5)
    assert empty[0].size == 0 and empty[1].tolist() == [0] * 6


def test_inverted_file_memory_is_output_plus_one_run():
    """2M tokens in runs of 64k: the peak allocation stays near the output (~8 MB here), where sorting every
    token's key at once took ~34 bytes a token (~65 MB)."""
    rng = np.random.default_rng(0)
    doclens = rng.integers(150, 250, 10_000)
    codes = rng.integers(0, 8192, int(doclens.sum())).astype(np.uint16)
    tracemalloc.start()
    try:
        pids, _ = inverted_file(codes, doclens, 8192, chunk_tokens=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = int(doclens.sum())
    assert peak < pids.nbytes + 8 * 2**20, (peak, pids.nbytes)
    assert peak / tokens < 8


def test_split_shares_sum_to_exactly_k():
    rng = np.random.default_rng(1)
    for _ in range(200):
        counts = rng.integers(0, 2000, int(rng.integers(1, 300)))
        counts[rng.random(counts.size) < 0.1] = 0
        n = int(counts.sum())
        if n == 0:
            continue
        k = int(rng.integers(1, n + 1))
        s = split_shares(counts, k)
        nonempty = counts > 0
        assert s.sum() == max(int(nonempty.sum()), k)
        assert (s[~nonempty] == 0).all() and (s[nonempty] >= 1).all() and (s <= counts).all()
    # 65,536 centroids over 256 coarse clusters of uneven size: exactly 65,536, so the codes stay uint16
    counts = rng.integers(2000, 6000, 256)
    assert split_shares(counts, 1 << 16).sum() == 1 << 16 and code_dtype(1 << 16) == np.uint16


def test_build_stage_times_cover_the_inverted_file(tmp_path):
    from colbert_retriever import CodecConfig, Index

    g = torch.Generator().manual_seed(0)
    docs = [torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=-1) for _ in range(200)]
    idx = Index.build_from_embeddings(tmp_path / "i", docs, show_progress=False,
                                      codec_config=CodecConfig(nbits=2, num_centroids=16))
    stages = idx.metadata["provenance"]["stages"]
    assert set(stages) >= {"encode_s", "kmeans_s", "compress_s", "write_s", "segment_s"}


def _unit(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)


def test_compact_never_reencodes_documents_given_as_embeddings(tmp_path, tiny_model):
    """Found by the updates benchmark on a small index: compact() re-trains by re-encoding the stored texts below
    REENCODE_MAX_EMBEDDINGS, but documents given as embeddings have no text that encodes to them (an index built
    from embeddings without a model failed; with a model, its empty or unrelated texts would have been encoded in
    their place). Now they are re-trained from their stored embeddings; asking to re-encode them is refused."""
    from colbert_retriever import CodecConfig, Index, InvalidArgument

    from .test_embedded import clustered, planted_query

    docs = clustered(200, dim=32, seed=1)
    idx = Index.build_from_embeddings(tmp_path / "e", docs, [f"p{i}" for i in range(200)], name="given",
                                      show_progress=False, codec_config=CodecConfig(nbits=2, num_centroids=32),
                                      pool_factor=1)  # stored rows are compared with the given ones
    more = clustered(200, dim=32, seed=2)
    idx.add_embeddings(more, ids=[f"m{i}" for i in range(200)])
    assert idx.needs_recluster
    with pytest.raises(InvalidArgument, match="reencode=False"):
        idx.compact(reencode=True)
    idx.compact()  # re-trained from the stored embeddings
    assert idx.metadata["codec"]["embeddings_added"] == 0 and len(idx) == 400
    assert sum(idx.search_embeddings(planted_query(more[i], i)[None], k=1)[0][0].id == f"m{i}"
               for i in range(0, 200, 20)) >= 9

    from .conftest import make_corpus

    texts = make_corpus(40, seed=4)
    t = Index.build(tmp_path / "t", texts, model=tiny_model, show_progress=False,
                    codec_config=CodecConfig(nbits=2, num_centroids=16), pool_factor=1)  # rows counted below
    given = [_unit(n, 32, n) for n in (5, 9, 30)]
    t.add_embeddings(given, ids=["g0", "g1", "g2"], texts=["x", "y", "z"])  # texts that do not encode to them
    with pytest.raises(InvalidArgument, match="given as embeddings"):
        t.compact(recluster=True, reencode=True)
    t.compact(recluster=True)
    lens = t.snapshot().arrays.doc_offsets.diff().tolist()
    assert lens[-3:] == [5, 9, 30]  # their own rows, not the encodings of "x", "y", "z"
