"""Compression for indexing on a GPU: nearest centroid (max inner product), residual bucketising against the
cutoffs, and bit packing into ``dim * nbits / 8`` bytes per row (the layout of colbert_retriever/codec/residual.py).

Precision: the centroid assignment's dot products run in TF32 on purpose (``input_precision="tf32"``; the
interpreter computes fp32): a near-tie may pick the second-nearest centroid, which the residual absorbs since it
is always taken against the centroid chosen (the CPU path makes the same trade with bf16). Residuals and buckets
are computed in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _assign_kernel(x_ptr, c_ptr, out_ptr, n, k, DIM: tl.constexpr, DIM_P2: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, DIM_P2)
    rmask = rows < n
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * DIM + dims[None, :],
                mask=rmask[:, None] & (dims[None, :] < DIM), other=0.0).to(tl.float32)
    best = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK_T,), tl.int32)
    for c0 in range(0, k, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < k
        c = tl.load(c_ptr + cs[:, None].to(tl.int64) * DIM + dims[None, :],
                    mask=cmask[:, None] & (dims[None, :] < DIM), other=0.0).to(tl.float32)
        s = tl.dot(x, tl.trans(c), input_precision="tf32")  # see module docstring
        s = tl.where(cmask[None, :], s, float("-inf"))
        m = tl.max(s, axis=1)
        a = tl.argmax(s, axis=1).to(tl.int32) + c0
        better = m > best
        arg = tl.where(better, a, arg)
        best = tl.where(better, m, best)
    tl.store(out_ptr + rows, arg, mask=rmask)


@triton.jit
def _pack_kernel(x_ptr, c_ptr, codes_ptr, cut_ptr, out_ptr, n, DIM: tl.constexpr, NBITS: tl.constexpr,
                 NCUT: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    PER: tl.constexpr = 8 // NBITS
    PACKED: tl.constexpr = DIM * NBITS // 8
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n
    code = tl.load(codes_ptr + rows, mask=rmask, other=0).to(tl.int64)
    for j in tl.static_range(PACKED):
        byte = tl.zeros((BLOCK_T,), tl.int32)
        for i in tl.static_range(PER):
            d = j * PER + i
            r = tl.load(x_ptr + rows.to(tl.int64) * DIM + d, mask=rmask, other=0.0).to(tl.float32) - \
                tl.load(c_ptr + code * DIM + d, mask=rmask, other=0.0).to(tl.float32)
            b = tl.zeros((BLOCK_T,), tl.int32)
            for ci in tl.static_range(NCUT):
                b += (r >= tl.load(cut_ptr + ci)).to(tl.int32)
            byte |= b << (i * NBITS)
        tl.store(out_ptr + rows.to(tl.int64) * PACKED + j, byte.to(tl.uint8), mask=rmask)


def assign(x: torch.Tensor, centroids: torch.Tensor, block_t: int = 32, block_c: int = 64) -> torch.Tensor:
    """Nearest centroid of each row of x (n, dim): (n,) int64."""
    n, dim = x.shape
    out = torch.empty(n, dtype=torch.int32, device=x.device)
    if n == 0:
        return out.long()
    _assign_kernel[(triton.cdiv(n, block_t),)](x.float().contiguous(), centroids.float().contiguous(), out, n,
                                               centroids.shape[0], DIM=dim, DIM_P2=triton.next_power_of_2(dim),
                                               BLOCK_T=block_t, BLOCK_C=block_c)
    return out.long()


def compress(x: torch.Tensor, centroids: torch.Tensor, bucket_cutoffs: torch.Tensor, nbits: int,
             block_t: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, dim) float -> (codes (n,) int64, packed (n, dim*nbits/8) uint8)."""
    n, dim = x.shape
    codes = assign(x, centroids, block_t=block_t)
    packed = torch.empty(n, dim * nbits // 8, dtype=torch.uint8, device=x.device)
    if n == 0:
        return codes, packed
    cut = bucket_cutoffs.float().contiguous()
    _pack_kernel[(triton.cdiv(n, block_t),)](x.float().contiguous(), centroids.float().contiguous(), codes, cut,
                                             packed, n, DIM=dim, NBITS=nbits, NCUT=cut.numel(), BLOCK_T=block_t)
    return codes, packed
