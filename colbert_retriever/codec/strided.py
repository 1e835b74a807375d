"""Ragged arrays as (values, offsets): row i is ``values[offsets[i]:offsets[i+1]]``."""

from __future__ import annotations

import numpy as np
import torch


def offsets_from_lengths(lengths) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    out = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=lengths.device)
    out[1:] = torch.cumsum(lengths, 0)
    return out


def gather_rows(offsets: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat value indices of the given rows, concatenated in order, and the offsets of the result.

    offsets: (n + 1,) int64; rows: (m,) int64. Returns (idx (total,), sub_offsets (m + 1,)).
    """
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    sub = offsets_from_lengths(lengths)
    total = int(sub[-1])
    shift = torch.repeat_interleave(starts - sub[:-1], lengths, output_size=total)
    return torch.arange(total, device=offsets.device) + shift, sub


def inverted_file(codes: np.ndarray, doclens: np.ndarray, num_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """For each centroid, the sorted unique document ids (pids) that have a token assigned to it.

    codes: (n_embeddings,) centroid id per token; doclens: (n_docs,) tokens per document.
    Returns (pids (total,) int32, offsets (num_centroids + 1,) int64).
    """
    n_docs = len(doclens)
    pid_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), doclens)
    keys = np.unique(np.asarray(codes, dtype=np.int64) * max(n_docs, 1) + pid_of_token)
    cents = keys // max(n_docs, 1)
    pids = (keys % max(n_docs, 1)).astype(np.int32)
    counts = np.bincount(cents, minlength=num_centroids)
    offsets = np.zeros(num_centroids + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return pids, offsets
