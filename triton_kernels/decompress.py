"""Residual decompression: packed codes + centroid ids -> L2-normalised embeddings (float32 or float16).

Layout (see colbert_retriever/codec/residual.py): a row has ``dim * nbits / 8`` bytes; dimension d lives in byte
``d // (8 // nbits)`` at bit offset ``(d % (8 // nbits)) * nbits``; its value indexes ``bucket_weights``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def decompress_rows(codes_ptr, packed_ptr, centroids_ptr, weights_ptr, rows, rmask, dims, dmask,
                    DIM: tl.constexpr, NBITS: tl.constexpr):
    """(BLOCK_T, DIM_P2) float32 L2-normalised embeddings of ``rows`` (masked rows/dims are zero). Shared by the
    decompression kernel and the fused MaxSim kernel."""
    PER: tl.constexpr = 8 // NBITS
    PACKED: tl.constexpr = DIM * NBITS // 8
    m2 = rmask[:, None] & dmask[None, :]
    code = tl.load(codes_ptr + rows, mask=rmask, other=0).to(tl.int64)
    byte = tl.load(packed_ptr + rows[:, None].to(tl.int64) * PACKED + (dims // PER)[None, :], mask=m2, other=0)
    bucket = (byte.to(tl.int32) >> ((dims % PER) * NBITS)[None, :]) & ((1 << NBITS) - 1)
    x = tl.load(weights_ptr + bucket, mask=m2, other=0.0)
    x += tl.load(centroids_ptr + code[:, None] * DIM + dims[None, :], mask=m2, other=0.0).to(tl.float32)
    return x / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)[:, None]


@triton.jit
def _decompress_kernel(codes_ptr, packed_ptr, centroids_ptr, weights_ptr, out_ptr, n_tokens,
                       DIM: tl.constexpr, DIM_P2: tl.constexpr, NBITS: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, DIM_P2)
    rmask = rows < n_tokens
    dmask = dims < DIM
    x = decompress_rows(codes_ptr, packed_ptr, centroids_ptr, weights_ptr, rows, rmask, dims, dmask, DIM, NBITS)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * DIM + dims[None, :], x.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


def decompress(codes: torch.Tensor, packed: torch.Tensor, centroids: torch.Tensor, bucket_weights: torch.Tensor,
               nbits: int, out_dtype: torch.dtype = torch.float32, block_t: int = 32) -> torch.Tensor:
    """codes (n,) int; packed (n, dim*nbits/8) uint8; centroids (K, dim) float; bucket_weights (2**nbits,) float32.
    Returns (n, dim) ``out_dtype``, rows L2-normalised."""
    n, dim = packed.shape[0], centroids.shape[1]
    out = torch.empty(n, dim, dtype=out_dtype, device=packed.device)
    if n == 0:
        return out
    grid = (triton.cdiv(n, block_t),)
    _decompress_kernel[grid](codes.contiguous(), packed.contiguous(), centroids.contiguous(),
                             bucket_weights.float().contiguous(), out, n, DIM=dim,
                             DIM_P2=triton.next_power_of_2(dim), NBITS=nbits, BLOCK_T=block_t)
    return out
