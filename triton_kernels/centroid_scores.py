"""Centroid interaction: approximate MaxSim of each document from query-centroid scores and the document's
centroid ids, optionally with PLAID's threshold pruning (a pruned centroid contributes 0, and each query token's
max starts at 0)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _centroid_interaction_kernel(sc_ptr, codes_ptr, offsets_ptr, pids_ptr, keep_ptr, out_ptr, n_q,
                                 LQ_P2: tl.constexpr, BLOCK_T: tl.constexpr, PRUNE: tl.constexpr):
    i = tl.program_id(0)
    doc = tl.load(pids_ptr + i)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    qi = tl.arange(0, LQ_P2)
    qmask = qi < n_q
    if PRUNE:
        best = tl.zeros((LQ_P2,), tl.float32)
    else:
        best = tl.full((LQ_P2,), float("-inf"), tl.float32)
    for t0 in range(start, end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rmask = rows < end
        code = tl.load(codes_ptr + rows, mask=rmask, other=0).to(tl.int64)
        valid = rmask
        if PRUNE:
            valid = valid & (tl.load(keep_ptr + code, mask=rmask, other=0) != 0)
        s = tl.load(sc_ptr + code[:, None] * n_q + qi[None, :], mask=valid[:, None] & qmask[None, :],
                    other=float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=0))
    best = tl.where(qmask & (best > float("-inf")), best, 0.0)
    tl.store(out_ptr + i, tl.sum(best, axis=0))


def centroid_interaction(Sc: torch.Tensor, codes: torch.Tensor, doc_offsets: torch.Tensor, pids: torch.Tensor,
                         threshold: float | None = None, block_t: int = 64) -> torch.Tensor:
    """Sc (num_centroids, q_len) float32; codes (n_tokens,) int; doc_offsets (n_docs + 1,) int64; pids (m,) int64.
    With ``threshold``, centroids whose best score over the query tokens is below it are pruned.
    Returns (m,) float32."""
    out = torch.zeros(pids.numel(), dtype=torch.float32, device=Sc.device)
    if pids.numel() == 0:
        return out
    Sc = Sc.float().contiguous()
    prune = threshold is not None
    keep = (Sc.amax(1) >= threshold).to(torch.int8) if prune else torch.zeros(1, dtype=torch.int8, device=Sc.device)
    lq = max(2, triton.next_power_of_2(Sc.shape[1]))
    _centroid_interaction_kernel[(pids.numel(),)](Sc, codes.contiguous(), doc_offsets.contiguous(),
                                                  pids.contiguous(), keep, out, Sc.shape[1], LQ_P2=lq,
                                                  BLOCK_T=block_t, PRUNE=prune)
    return out
