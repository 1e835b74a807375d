import torch

from colbert_retriever.scoring import maxsim_packed, maxsim_padded, segment_maxsim
from colbert_retriever.strided import gather_rows, inverted_file, offsets_from_lengths


def naive(Q, docs):
    return torch.tensor([[float((q @ d.T).max(1).values.sum()) for d in docs] for q in Q])


def test_packed_equals_padded_equals_naive():
    g = torch.Generator().manual_seed(0)
    lengths = [1, 5, 17, 3, 40, 2]
    docs = [torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1) for n in lengths]
    Q = torch.nn.functional.normalize(torch.randn(3, 7, 16, generator=g), dim=-1)
    ref = naive(Q, docs)
    embs = torch.cat(docs)
    off = offsets_from_lengths(lengths)
    assert torch.allclose(maxsim_packed(Q, embs, off), ref, atol=1e-5)
    assert torch.allclose(maxsim_packed(Q, embs, off, chunk_tokens=8), ref, atol=1e-5)
    assert torch.allclose(maxsim_packed(Q[0], embs, off), ref[0], atol=1e-5)
    D = torch.zeros(len(docs), max(lengths), 16)
    mask = torch.zeros(len(docs), max(lengths), dtype=torch.bool)
    for i, d in enumerate(docs):
        D[i, : len(d)] = d
        mask[i, : len(d)] = True
    assert torch.allclose(maxsim_padded(Q, D, mask), ref, atol=1e-5)


def test_empty_doc_set():
    out = maxsim_packed(torch.randn(4, 8), torch.zeros(0, 8), torch.zeros(1, dtype=torch.long))
    assert out.shape == (0,)


def test_gather_rows_and_ivf():
    off = offsets_from_lengths([2, 3, 1])
    idx, sub = gather_rows(off, torch.tensor([2, 0]))
    assert idx.tolist() == [5, 0, 1] and sub.tolist() == [0, 1, 3]
    import numpy as np

    pids, offsets = inverted_file(np.array([0, 1, 1, 1, 0, 2]), np.array([2, 3, 1]), 4)
    assert offsets.tolist() == [0, 2, 4, 5, 5]
    assert pids.tolist() == [0, 1, 0, 1, 2]


def test_segment_maxsim_empty_documents_score_zero():
    sim = torch.tensor([[0.5, -0.2], [0.1, 0.3], [-0.4, -0.6]])
    off = offsets_from_lengths([2, 0, 1])
    assert torch.allclose(segment_maxsim(sim, off), torch.tensor([0.8, 0.0, -1.0]))
