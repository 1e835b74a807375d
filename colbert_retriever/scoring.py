"""Reference MaxSim scoring (torch). The ground truth that PLAID search and the Triton kernels are tested against.

MaxSim(q, d) = sum over query tokens i of max over document tokens j of <q_i, d_j>.
"""

from __future__ import annotations

import torch


def maxsim_padded(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor) -> torch.Tensor:
    """Score every query against every document.

    Q: (n_queries, query_len, dim); D: (n_docs, doc_len, dim); D_mask: (n_docs, doc_len) bool, True for real tokens.
    Returns (n_queries, n_docs) float32. A document with no real token scores 0.
    """
    sim = torch.einsum("qid,njd->qnij", Q.float(), D.float())
    sim = sim.masked_fill(~D_mask[None, :, None, :], float("-inf"))
    best = sim.amax(dim=-1)
    best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
    return best.sum(dim=-1)


def padded_index(offsets: torch.Tensor, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed rows delimited by ``offsets`` (n+1,), the (n, max_len) row index matrix and its validity mask."""
    lengths = offsets[1:] - offsets[:-1]
    if max_len is None:
        max_len = int(lengths.max()) if len(lengths) else 0
    ar = torch.arange(max_len, device=offsets.device)
    idx = offsets[:-1, None] + ar[None, :]
    valid = ar[None, :] < lengths[:, None]
    total = int(offsets[-1]) if len(offsets) else 0
    idx = torch.where(valid, idx, torch.zeros_like(idx)) if total > 0 else torch.zeros_like(idx)
    return idx, valid


def maxsim_packed(Q: torch.Tensor, embs: torch.Tensor, offsets: torch.Tensor, chunk_tokens: int = 1 << 16) -> torch.Tensor:
    """Score queries against documents stored packed.

    Q: (n_queries, query_len, dim) or (query_len, dim); embs: (n_tokens, dim); offsets: (n_docs + 1,) int64 with
    document i's tokens at embs[offsets[i]:offsets[i+1]]. Returns (n_queries, n_docs) (or (n_docs,)) float32.
    Work is chunked over documents so memory stays near ``chunk_tokens * query tokens`` floats.
    """
    single = Q.dim() == 2
    if single:
        Q = Q[None]
    nq, lq, dim = Q.shape
    n_docs = offsets.numel() - 1
    out = torch.zeros(nq, n_docs, dtype=torch.float32, device=Q.device)
    if n_docs == 0:
        return out[0] if single else out
    Qf = Q.reshape(nq * lq, dim).float()
    lengths = offsets[1:] - offsets[:-1]
    start = 0
    while start < n_docs:
        # grow the chunk until it holds about chunk_tokens tokens
        end = int(torch.searchsorted(offsets, offsets[start] + chunk_tokens, right=True))
        end = min(max(end - 1, start + 1), n_docs)
        lo, hi = int(offsets[start]), int(offsets[end])
        sim = embs[lo:hi].float() @ Qf.T  # (tokens, nq*lq)
        sub = offsets[start : end + 1] - lo
        idx, valid = padded_index(sub, int(lengths[start:end].max()))
        if hi > lo:
            s = sim[idx]  # (docs, max_len, nq*lq)
            s = s.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
            s = torch.where(torch.isinf(s), torch.zeros_like(s), s)
            out[:, start:end] = s.view(end - start, nq, lq).sum(-1).T
        start = end
    return out[0] if single else out
