"""Fused MaxSim over variable-length documents in a packed layout with offsets.

``maxsim``: document embeddings already decompressed. ``maxsim_compressed``: decompression fused into scoring
(the PLAID/WARP idea), so decompressed embeddings never reach global memory. One program per document: it walks
the document's tokens in blocks, keeps a running max per query token, and sums at the end.

Precision: ``tl.dot`` on float32 runs as TF32 on NVIDIA GPUs by default (10-bit mantissa: score errors ~1e-3),
while the interpreter computes plain fp32. These are exact-scoring kernels, so the dots ask for
``input_precision="tf32x3"`` (three TF32 products on the tensor cores, the error of fp32): on an H200, 1,024
documents x 100 tokens x 32 query tokens took 0.16 ms at blocks of 16 tokens against 1.95 ms with true fp32
(``"ieee"``, blocks of 32) and 0.72 ms on the torch path, max score difference from the torch path 2.9e-6
(``benchmarks/experiments/triton_exact.py``). Tests: atol 1e-4 on MaxSim sums of up to 32 query tokens.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decompress import decompress_rows

PRECISION = "tf32x3"
BLOCK_T = 16


@triton.jit
def _maxsim_kernel(q_ptr, emb_ptr, offsets_ptr, out_ptr, n_q,
                   DIM: tl.constexpr, DIM_P2: tl.constexpr, LQ_P2: tl.constexpr, BLOCK_T: tl.constexpr,
                   PRECISION: tl.constexpr):
    doc = tl.program_id(0)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    qi = tl.arange(0, LQ_P2)
    dims = tl.arange(0, DIM_P2)
    q = tl.load(q_ptr + qi[:, None] * DIM + dims[None, :], mask=(qi[:, None] < n_q) & (dims[None, :] < DIM),
                other=0.0).to(tl.float32)
    best = tl.full((LQ_P2,), float("-inf"), tl.float32)
    for t0 in range(start, end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rmask = rows < end
        e = tl.load(emb_ptr + rows[:, None].to(tl.int64) * DIM + dims[None, :],
                    mask=rmask[:, None] & (dims[None, :] < DIM), other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(e), input_precision=PRECISION)  # (LQ_P2, BLOCK_T); see module docstring
        s = tl.where(rmask[None, :], s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
    best = tl.where((qi < n_q) & (best > float("-inf")), best, 0.0)
    tl.store(out_ptr + doc, tl.sum(best, axis=0))


@triton.jit
def _maxsim_compressed_kernel(q_ptr, codes_ptr, packed_ptr, centroids_ptr, weights_ptr, offsets_ptr, out_ptr, n_q,
                              DIM: tl.constexpr, DIM_P2: tl.constexpr, NBITS: tl.constexpr, LQ_P2: tl.constexpr,
                              BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):
    doc = tl.program_id(0)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    qi = tl.arange(0, LQ_P2)
    dims = tl.arange(0, DIM_P2)
    dmask = dims < DIM
    q = tl.load(q_ptr + qi[:, None] * DIM + dims[None, :], mask=(qi[:, None] < n_q) & dmask[None, :],
                other=0.0).to(tl.float32)
    best = tl.full((LQ_P2,), float("-inf"), tl.float32)
    for t0 in range(start, end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rmask = rows < end
        x = decompress_rows(codes_ptr, packed_ptr, centroids_ptr, weights_ptr, rows, rmask, dims, dmask, DIM, NBITS)
        s = tl.dot(q, tl.trans(x), input_precision=PRECISION)
        s = tl.where(rmask[None, :], s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
    best = tl.where((qi < n_q) & (best > float("-inf")), best, 0.0)
    tl.store(out_ptr + doc, tl.sum(best, axis=0))


def _prepare(Q: torch.Tensor, offsets: torch.Tensor, device) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Q as contiguous float32, its padded length (tl.dot needs >= 16 rows), and the zeroed (n_docs,) output."""
    if Q.dim() != 2:
        raise ValueError(f"Q must be (q_len, dim), got shape {tuple(Q.shape)}")
    out = torch.zeros(offsets.numel() - 1, dtype=torch.float32, device=device)
    return Q.float().contiguous(), max(16, triton.next_power_of_2(Q.shape[0])), out


def maxsim(Q: torch.Tensor, embs: torch.Tensor, offsets: torch.Tensor, block_t: int = BLOCK_T,
           precision: str = PRECISION) -> torch.Tensor:
    """Q (q_len, dim); embs (n_tokens, dim); offsets (n_docs + 1,) int64. Returns (n_docs,) float32."""
    Qc, lq, out = _prepare(Q, offsets, embs.device)
    if out.numel() == 0:
        return out
    dim = embs.shape[1]
    _maxsim_kernel[(out.numel(),)](Qc, embs.contiguous(), offsets.contiguous(), out, Q.shape[0], DIM=dim,
                              DIM_P2=triton.next_power_of_2(dim), LQ_P2=lq, BLOCK_T=block_t, PRECISION=precision)
    return out


def maxsim_compressed(Q: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor, centroids: torch.Tensor,
                      bucket_weights: torch.Tensor, nbits: int, offsets: torch.Tensor,
                      block_t: int = BLOCK_T, precision: str = PRECISION) -> torch.Tensor:
    """MaxSim of Q against documents stored compressed (codes, packed residuals) with ``offsets``; decompression
    happens in registers. Returns (n_docs,) float32. precision: ``tl.dot``'s input precision ("ieee": true fp32;
    "tf32x3": three TF32 products, ~fp32 accuracy on tensor cores; "tf32")."""
    Qc, lq, out = _prepare(Q, offsets, packed.device)
    if out.numel() == 0:
        return out
    dim = centroids.shape[1]
    _maxsim_compressed_kernel[(out.numel(),)](Qc, codes.contiguous(), packed.contiguous(), centroids.contiguous(),
                                         bucket_weights.float().contiguous(), offsets.contiguous(), out, Q.shape[0],
                                         DIM=dim, DIM_P2=triton.next_power_of_2(dim), NBITS=nbits, LQ_P2=lq,
                                         BLOCK_T=block_t, PRECISION=precision)
    return out
