"""ColBERTv2 residual codec: nearest centroid + per-dimension residual quantised to ``nbits`` and bit-packed.

Tensors in, tensors out, on the caller's device; the codec never touches files (``arrays``/``from_arrays``).
Layout of a packed row: ``dim * nbits / 8`` bytes; byte j holds dimensions ``j*per .. j*per+per-1``
(``per = 8 // nbits``), dimension ``j*per + i`` in bits ``[i*nbits, (i+1)*nbits)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _kernels
from ._device import cpu_supports_bf16
from .config import CodecConfig
from .errors import IndexFormatError, InvalidArgument
from .kmeans import num_centroids, train_centroids


def code_dtype(num_centroids: int) -> np.dtype:
    """Smallest unsigned integer type that holds centroid ids."""
    if num_centroids <= 1 << 8:
        return np.dtype(np.uint8)
    if num_centroids <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


@dataclass
class ResidualCodec:
    centroids: torch.Tensor  # (K, dim) float32, rows L2-normalised
    bucket_cutoffs: torch.Tensor  # (2**nbits - 1,) float32
    bucket_weights: torch.Tensor  # (2**nbits,) float32
    nbits: int
    avg_residual: float = 0.0

    def __post_init__(self):
        if self.nbits not in (1, 2, 4):
            raise InvalidArgument(f"nbits={self.nbits} is not supported; use 1, 2 or 4")
        dim = self.centroids.shape[1]
        if (dim * self.nbits) % 8:
            raise InvalidArgument(f"dim={dim} * nbits={self.nbits} must be a multiple of 8")
        per = 8 // self.nbits
        mask = (1 << self.nbits) - 1
        byte = torch.arange(256, device=self.centroids.device)
        parts = (byte[:, None] >> (torch.arange(per, device=byte.device) * self.nbits)[None, :]) & mask
        self._lut = self.bucket_weights.to(self.centroids.device)[parts]  # (256, per) float32
        self._shifts = (torch.arange(per, device=self.centroids.device) * self.nbits).to(torch.int32)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def num_centroids(self) -> int:
        return self.centroids.shape[0]

    @property
    def packed_dim(self) -> int:
        return self.dim * self.nbits // 8

    # -------------------------------------------------------------- fit
    @classmethod
    def fit(cls, sample: torch.Tensor, config: CodecConfig, num_embeddings_estimate: int) -> "ResidualCodec":
        """Train centroids on ``sample`` (n, dim) and learn bucket cutoffs/weights from held-out residuals."""
        if sample.dim() != 2 or sample.shape[0] == 0:
            raise InvalidArgument(f"codec sample must be a non-empty (n, dim) tensor, got shape {tuple(sample.shape)}")
        x = sample.detach().float().cpu()
        g = torch.Generator().manual_seed(config.seed)
        perm = torch.randperm(x.shape[0], generator=g)
        n_heldout = min(int(0.05 * x.shape[0]), 50_000) if x.shape[0] >= 1000 else 0
        heldout, train = x[perm[:n_heldout]], x[perm[n_heldout:]]
        if n_heldout == 0:
            heldout = train
        k = num_centroids(num_embeddings_estimate, train.shape[0], config.num_centroids)
        cents = torch.from_numpy(train_centroids(train.numpy(), k, config.kmeans_niters, config.seed))
        codes = torch.cat([(h @ cents.T).argmax(1) for h in torch.split(heldout, 4096)])
        res = (heldout - cents[codes]).flatten()
        if res.numel() > 1 << 22:
            res = res[torch.randperm(res.numel(), generator=g)[: 1 << 22]]
        nb = 1 << config.nbits
        qs = np.quantile(res.numpy().astype(np.float64), np.arange(1, nb) / nb) if nb > 1 else np.array([])
        ws = np.quantile(res.numpy().astype(np.float64), (np.arange(nb) + 0.5) / nb)
        return cls(cents, torch.tensor(qs, dtype=torch.float32), torch.tensor(ws, dtype=torch.float32),
                   config.nbits, float(res.abs().mean()))

    # -------------------------------------------------------------- compress / decompress
    def assign(self, embs: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Nearest centroid (max inner product) of each row: (n,) int64. Scores are computed in bf16 where the CPU
        has native bf16 (about 2x faster here); a near-tie may then pick the second-nearest centroid, which the
        residual absorbs (it is always taken against the centroid chosen)."""
        dtype = torch.bfloat16 if embs.device.type == "cpu" and cpu_supports_bf16() else torch.float32
        C = self.centroids.to(embs.device, dtype)
        out = torch.empty(embs.shape[0], dtype=torch.long, device=embs.device)
        for s in range(0, embs.shape[0], batch):
            out[s : s + batch] = (embs[s : s + batch].to(dtype) @ C.T).argmax(1)
        return out

    def compress(self, embs: torch.Tensor, batch: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor]:
        """embs: (n, dim) float. Returns codes (n,) int64 and packed residuals (n, dim*nbits/8) uint8."""
        if embs.dim() != 2 or embs.shape[1] != self.dim:
            raise InvalidArgument(f"embeddings of shape {tuple(embs.shape)}; expected (n, {self.dim})")
        if _kernels.use_triton(embs):
            return _kernels.compress(embs, self.centroids.to(embs.device), self.bucket_cutoffs.to(embs.device),
                                     self.nbits)
        codes = self.assign(embs, batch)
        packed = torch.empty(embs.shape[0], self.packed_dim, dtype=torch.uint8, device=embs.device)
        C = self.centroids.to(embs.device)
        cut = self.bucket_cutoffs.to(embs.device)
        per = 8 // self.nbits
        for s in range(0, embs.shape[0], batch):
            e = slice(s, s + batch)
            res = embs[e].float() - C[codes[e]]
            buckets = torch.bucketize(res, cut, right=True).to(torch.int32)
            buckets = buckets.view(res.shape[0], self.packed_dim, per) << self._shifts.to(embs.device)
            packed[e] = buckets.sum(-1).to(torch.uint8)
        return codes, packed

    def decompress(self, codes: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """codes (n,) int, packed (n, dim*nbits/8) uint8 -> (n, dim) float32, rows L2-normalised."""
        if _kernels.use_triton(packed):
            return _kernels.decompress(codes, packed, self.centroids.to(packed.device),
                                       self.bucket_weights.to(packed.device), self.nbits)
        n = packed.shape[0]
        lut = self._lut if self._lut.device == packed.device else self._lut.to(packed.device)
        res = lut.index_select(0, packed.reshape(-1).to(torch.int32)).view(n, self.dim)
        C = self.centroids if self.centroids.device == packed.device else self.centroids.to(packed.device)
        res += C.index_select(0, codes.to(torch.int32))
        return torch.nn.functional.normalize(res, dim=-1)

    # -------------------------------------------------------------- persistence helpers
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "centroids": self.centroids.cpu().numpy().astype(np.float16),
            "bucket_cutoffs": self.bucket_cutoffs.cpu().numpy().astype(np.float32),
            "bucket_weights": self.bucket_weights.cpu().numpy().astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], nbits: int, avg_residual: float = 0.0,
                    device: torch.device | str = "cpu") -> "ResidualCodec":
        try:
            cents = torch.from_numpy(np.asarray(arrays["centroids"], dtype=np.float32)).to(device)
            cut = torch.from_numpy(np.asarray(arrays["bucket_cutoffs"], dtype=np.float32)).to(device)
            w = torch.from_numpy(np.asarray(arrays["bucket_weights"], dtype=np.float32)).to(device)
        except KeyError as e:
            raise IndexFormatError(f"codec array {e} is missing") from None
        if w.numel() != 1 << nbits or cut.numel() != (1 << nbits) - 1:
            raise IndexFormatError(f"codec buckets have {w.numel()} weights / {cut.numel()} cutoffs; nbits={nbits}")
        return cls(cents, cut, w, nbits, avg_residual)
