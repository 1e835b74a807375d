import pytest
import torch

from colbert_retriever.kernels.scoring import maxsim_packed, maxsim_padded, segment_maxsim
from colbert_retriever.codec.strided import gather_rows, inverted_file, offsets_from_lengths


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


@pytest.mark.parametrize("cols", [1, 5, 8, 9, 22])  # segment_reduce up to SEGMENT_REDUCE_MAX_COLS, scatter beyond
def test_segment_max_equals_a_loop(cols):
    from colbert_retriever.kernels.scoring import SEGMENT_REDUCE_MAX_COLS, segment_max

    assert SEGMENT_REDUCE_MAX_COLS == 8
    g = torch.Generator().manual_seed(cols)
    lengths = torch.randint(0, 30, (40,), generator=g)
    lengths[[0, 17, 39]] = 0
    off = offsets_from_lengths(lengths)
    sim = torch.randn(int(off[-1]), cols, generator=g) - 2.0  # mostly negative: an empty document must give 0
    ref = torch.stack([sim[off[d] : off[d + 1]].amax(0) if lengths[d] else torch.zeros(cols) for d in range(40)])
    assert torch.equal(segment_max(sim, off), ref)
    assert segment_max(sim[:0], offsets_from_lengths([0, 0])).tolist() == [[0.0] * cols] * 2
    assert segment_max(sim[:0], offsets_from_lengths([])).shape == (0, cols)


def test_padded_positions_blocks_cover_each_document_once():
    from colbert_retriever.kernels.scoring import padded_positions, segment_max

    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 40, (57,), generator=g)
    lengths[[0, 9, 56]] = 0  # documents with no tokens are left out
    off = offsets_from_lengths(lengths)
    sim = torch.randn(int(off[-1]), 5, generator=g)
    ref = segment_maxsim(sim, off)
    for max_rows in (1, 16, 200, 1 << 20):  # one document per block ... everything in one block
        seen, blocks = [], 0
        out = torch.zeros(57)
        for docs, pos in padded_positions(off[:-1], lengths, max_rows):
            blocks += 1
            assert pos.shape == (int(lengths[docs].max()), docs.numel())
            assert pos.shape[0] * pos.shape[1] <= max(max_rows, pos.shape[0])
            for j, d in enumerate(docs.tolist()):  # each column: the document's rows, then its last row repeated
                rows = list(range(int(off[d]), int(off[d + 1])))
                assert pos[:, j].tolist() == rows + [rows[-1]] * (pos.shape[0] - len(rows))
            seen += docs.tolist()
            out[docs] = sim[pos.flatten()].view(*pos.shape, 5).amax(0).sum(-1)
        assert sorted(seen) == [d for d in range(57) if lengths[d] > 0]
        assert blocks == 1 if max_rows >= 57 * 40 else blocks > 1
        assert torch.allclose(out, ref)
    assert torch.equal(segment_max(sim, off).sum(-1), ref)
    assert list(padded_positions(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))) == []
