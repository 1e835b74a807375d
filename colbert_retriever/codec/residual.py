"""ColBERTv2 residual codec: nearest centroid + per-dimension residual quantised to ``nbits`` and bit-packed.

Tensors in, tensors out, on the caller's device; the codec never touches files (``arrays``/``from_arrays``).
Layout of a packed row: ``dim * nbits / 8`` bytes; byte j holds dimensions ``j*per .. j*per+per-1``
(``per = 8 // nbits``), dimension ``j*per + i`` in bits ``[i*nbits, (i+1)*nbits)``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..config import CodecConfig
from ..errors import IndexFormatError, InvalidArgument
from ..kernels import dispatch
from ..model import halfgemm
from .kmeans import num_centroids, train_centroids
from .strided import offsets_from_lengths

DECODE_CHUNK = 4096
"""Rows decoded at a time on CPU: big enough to amortise per-call overhead, small enough to stay in cache."""
_CACHE_LOCK = threading.Lock()  # codecs are shared by every search of an index: their lazy caches fill under it
COARSE_ASSIGN_MIN_K = 4096
"""From this many centroids on, CPU assignment is coarse-to-fine."""


def code_dtype(num_centroids: int) -> np.dtype:
    """Smallest unsigned integer type that holds centroid ids."""
    if num_centroids <= 1 << 8:
        return np.dtype(np.uint8)
    if num_centroids <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def transposed(m: torch.Tensor) -> torch.Tensor:
    """``m.T`` as a new contiguous tensor, by a copy into a fresh buffer (~2x faster than ``m.T.contiguous()`` for
    the (q_len, K) query-centroid scores on CPU)."""
    out = torch.empty(m.shape[1], m.shape[0], dtype=m.dtype, device=m.device)
    out.T.copy_(m)
    return out


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
        self._coarse = None
        self._half = None  # cache: packed float16 centroids for centroid_scores (False: not usable), made at first use

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
        cents = torch.from_numpy(train_centroids(train.numpy(), k, config.kmeans_niters, config.seed,
                                                 flat=config.kmeans == "flat"))
        codes = torch.cat([(h @ cents.T).argmax(1) for h in torch.split(heldout, 4096)])
        res = (heldout - cents[codes]).flatten()
        if res.numel() > 1 << 22:
            res = res[torch.randperm(res.numel(), generator=g)[: 1 << 22]]
        qs, ws = bucket_levels(res.numpy().astype(np.float64), 1 << config.nbits)
        return cls(cents, torch.tensor(qs, dtype=torch.float32), torch.tensor(ws, dtype=torch.float32),
                   config.nbits, float(res.abs().mean()))

    # -------------------------------------------------------------- caches (built once, under a lock)
    def _coarse_assigner(self) -> "_CoarseAssigner":
        with _CACHE_LOCK:
            if self._coarse is None:
                self._coarse = _CoarseAssigner(self.centroids.cpu())
            return self._coarse

    def _packed_centroids(self):
        """The packed float16 centroids ``centroid_scores`` multiplies by, or False where they do not apply (not
        CPU, no fbgemm, or centroids that are not float16 values)."""
        with _CACHE_LOCK:
            if self._half is None:
                C = self.centroids
                self._half = (C.device.type == "cpu" and halfgemm.available()
                              and bool(torch.equal(C.to(torch.float16).float(), C)) and halfgemm.PackedWeights(C))
            return self._half

    # -------------------------------------------------------------- compress / decompress
    def assign(self, embs: torch.Tensor, batch: int = 4096, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Nearest centroid (max inner product) of each row: (n,) int64. Scores in ``dtype``: float32 (the
        default, ``Precision.assignment``) gives the same codes on every machine; in bf16 near-ties become exact
        ties and argmax takes the lowest centroid id, so CPUs with and without native bf16 would build different
        indexes from the same text. With many centroids the search is coarse-to-fine (``_CoarseAssigner``,
        float32)."""
        if self.num_centroids >= COARSE_ASSIGN_MIN_K and embs.device.type == "cpu":
            coarse = self._coarse_assigner()
            return torch.cat([coarse.assign(x) for x in torch.split(embs, 1 << 16)])
        C = self.centroids.to(embs.device, dtype)
        out = torch.empty(embs.shape[0], dtype=torch.long, device=embs.device)
        for s in range(0, embs.shape[0], batch):
            out[s : s + batch] = (embs[s : s + batch].to(dtype) @ C.T).argmax(1)
        return out

    def compress(self, embs: torch.Tensor, batch: int = 1 << 14, assign_dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """embs: (n, dim) float. Returns codes (n,) int64 and packed residuals (n, dim*nbits/8) uint8 (centroids
        assigned in ``assign_dtype``, see ``assign``)."""
        if embs.dim() != 2 or embs.shape[1] != self.dim:
            raise InvalidArgument(f"embeddings of shape {tuple(embs.shape)}; expected (n, {self.dim})")
        if dispatch.use_triton(embs):
            return dispatch.compress(embs, self.centroids.to(embs.device), self.bucket_cutoffs.to(embs.device),
                                     self.nbits)
        codes = self.assign(embs, batch, assign_dtype)
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

    def decompress(self, codes: torch.Tensor, packed: torch.Tensor, chunk: int = DECODE_CHUNK) -> torch.Tensor:
        """codes (n,) int, packed (n, dim*nbits/8) uint8 -> (n, dim) float32, rows L2-normalised."""
        if dispatch.use_triton(packed):
            return dispatch.decompress(codes, packed, self.centroids.to(packed.device),
                                       self.bucket_weights.to(packed.device), self.nbits)
        out = torch.empty(packed.shape[0], self.dim, dtype=torch.float32, device=packed.device)
        for s, e, E in self._decode_chunks(codes, packed, chunk):
            torch.nn.functional.normalize(E, dim=-1, out=out[s:e])
        return out

    def inverse_norms(self, codes: torch.Tensor, packed: torch.Tensor, chunk: int = DECODE_CHUNK) -> torch.Tensor:
        """1 / ||centroid + residual|| per row: (n,) float32 (what ``decompress`` divides by)."""
        out = torch.empty(packed.shape[0], dtype=torch.float32, device=packed.device)
        for s, e, E in self._decode_chunks(codes, packed, chunk):
            out[s:e] = torch.linalg.vector_norm(E, dim=1).clamp_min_(1e-12).reciprocal_()
        return out

    def query_lut(self, Q: torch.Tensor) -> torch.Tensor:
        """Per-query lookup table for scoring compressed rows without decompressing them: (packed_dim * 256, q_len),
        row ``j * 256 + b`` = the dot products of the query tokens with the residual part that byte value ``b``
        decodes to at byte position ``j``."""
        Qr = Q.to(self.centroids.device, torch.float32).reshape(Q.shape[0], self.packed_dim, 8 // self.nbits)
        # one batched matmul (byte position j: (256, per) @ (per, q_len)); ~4x faster than the same einsum on CPU
        return torch.matmul(self._lut, Qr.permute(1, 2, 0)).reshape(-1, Q.shape[0])

    def centroid_scores(self, Q: torch.Tensor, half: bool = True,
                        keep_sc: bool = True) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Query-centroid scores ``Sc = centroids @ Q.T`` (K, q_len) float32, contiguous, and its transpose
        (q_len, K) contiguous when that came for free (else None). On CPU, when the centroids are float16 values
        (always for an index read from disk: they are stored as float16), fbgemm is there and ``half`` is true
        (``Precision.half_centroid_scores``), the product runs on the packed float16 centroids (``_halfgemm``): the
        same scores up to summation order, in less time (benchmarks/NOTES.md, "Moved from docstrings").
        ``keep_sc=False``: a caller that only reads the transpose gets
        (None, transpose) whenever the transpose came for free, without the transposed copy. (The numba kernels
        compute their own scores, in a fixed order: ``kernels.numba_drivers.Tables``.)"""
        Q = Q.to(self.centroids.device, torch.float32)
        packed = self._packed_centroids() if half else None
        if packed:
            ScT = packed(Q)
            if not keep_sc:
                return None, ScT
            return transposed(ScT), ScT
        return self.centroids @ Q.T, None

    def token_scores(self, Sc: torch.Tensor, lut_q: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor,
                     inv_norms: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
        """Dot products of the query tokens with the decompressed, L2-normalised rows, computed in the compressed
        domain: (Sc[code] + sum over bytes of lut_q[byte]) * inverse norm. Sc: (K, q_len) = centroids @ Q.T;
        lut_q: ``query_lut(Q)``; inv_norms: ``inverse_norms(codes, packed)``. Returns (n, q_len) float32, equal to
        ``decompress(codes, packed) @ Q.T`` up to float rounding. The byte sums are one ``embedding_bag`` call
        (a fused gather-sum): on 2 CPU cores ~3x faster than decompress-then-matmul for short queries."""
        n = packed.shape[0]
        out = torch.empty(n, Sc.shape[1], dtype=torch.float32, device=packed.device)
        base = (torch.arange(self.packed_dim, device=packed.device, dtype=torch.int32) * 256)[None, :]
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            # bytes widened first, then offset in place: adding the int32 offsets to the uint8 bytes directly
            # (type promotion, broadcast) took ~4x longer (100k WordNet: exact stage 19 -> 14 ms)
            o = torch.nn.functional.embedding_bag(packed[s:e].to(torch.int32).add_(base), lut_q, mode="sum")
            o += Sc.index_select(0, codes[s:e].to(torch.int32))
            out[s:e] = o.mul_(inv_norms[s:e, None])
        return out

    def _decode_chunks(self, codes: torch.Tensor, packed: torch.Tensor, chunk: int):
        """Yield (start, end, unnormalised centroid + residual rows) for consecutive chunks; the rows live in
        buffers reused from one chunk to the next."""
        n, dev = packed.shape[0], packed.device
        lut = self._lut if self._lut.device == dev else self._lut.to(dev)
        C = self.centroids if self.centroids.device == dev else self.centroids.to(dev)
        per = lut.shape[1]
        m = min(chunk, max(n, 1))
        res_buf = torch.empty(m * self.packed_dim, per, dtype=torch.float32, device=dev)
        cen_buf = torch.empty(m, self.dim, dtype=torch.float32, device=dev)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            rows = e - s
            E = torch.index_select(lut, 0, packed[s:e].reshape(-1).to(torch.int32),
                                   out=res_buf[: rows * self.packed_dim]).view(rows, self.dim)
            E += torch.index_select(C, 0, codes[s:e].to(torch.int32), out=cen_buf[:rows])
            yield s, e, E

    # -------------------------------------------------------------- persistence helpers
    def as_stored(self, device: torch.device | str | None = None) -> "ResidualCodec":
        """This codec as an index stores and reads it back (float16 centroids, ``arrays``), on ``device`` (default:
        its own). Compress with this one: the rows written then match what searches decompress."""
        return ResidualCodec.from_arrays(self.arrays(), self.nbits, self.avg_residual,
                                         device=self.centroids.device if device is None else device)

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


def bucket_levels(res: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Cutoffs and decoding levels of ``nb`` residual buckets from held-out residual values ``res`` (1-D): the
    cutoffs are the equal-count quantiles (as ColBERTv2), each level the mean of the values that fall in its
    bucket (the level that minimises squared error for those cutoffs; a bucket with no values takes its quantile
    midpoint). Measured on scifact's 1.09M tokens with our model, 2 bits, fast-plaid's centroids, every token
    compressed in memory: top-10 overlap of exact MaxSim over the reconstructions with exact float MaxSim 0.914
    with ColBERTv2's quantile midpoints (fast-plaid's rule too), 0.929 with the means (token cosine 0.9755 ->
    0.9768; ``benchmarks/experiments/compression.py``)."""
    qs = np.quantile(res, np.arange(1, nb) / nb) if nb > 1 else np.array([])
    mid = np.quantile(res, (np.arange(nb) + 0.5) / nb)
    which = np.searchsorted(qs, res, side="right")
    counts = np.bincount(which, minlength=nb)
    sums = np.bincount(which, weights=res, minlength=nb)
    ws = np.where(counts > 0, sums / np.maximum(counts, 1), mid)
    return qs, ws


class _CoarseAssigner:
    """Approximate nearest-centroid search for many centroids: the centroids are grouped by a small k-means over
    the centroids themselves (2 sqrt(K) groups); each centroid is listed under its ``probe`` nearest groups. A
    row is compared with the group centres, then only with the centroids listed under its best group.

    ``probe`` = 32: on 300k scifact token embeddings (our model) with fast-plaid's 16,384 flat k-means centroids,
    the exact fp32 argmax's centroid for 97.3% / 98.9% / 99.6% of rows at probe 8 / 16 / 32 (mean cosine to the
    chosen centroid 0.8728 / 0.8750 / 0.8760, exact 0.8765), in ~1.9x probe 8's time and still ~5x faster than the
    exhaustive argmax. Probe 8 (the choice before 0.2.0, measured at 99.96% on WordNet glosses with two-level
    centroids) cost a 2-bit scifact index 0.005 of top-10 overlap with exact float MaxSim (0.8777 vs 0.8827 at a
    2^18-token k-means sample, ``benchmarks/experiments/compression.py``). A miss costs reconstruction quality
    only: the residual is always taken against the centroid chosen."""

    def __init__(self, centroids: torch.Tensor, probe: int = 32, seed: int = 0):
        K = centroids.shape[0]
        groups = max(1, int(round(2 * math.sqrt(K))))
        self.centres = torch.from_numpy(train_centroids(centroids.numpy(), groups, 10, seed))
        top = (centroids @ self.centres.T).topk(min(probe, self.centres.shape[0]), dim=1).indices  # (K, probe)
        flat_groups = top.flatten()
        order = torch.argsort(flat_groups, stable=True)
        self.members = torch.arange(K).repeat_interleave(top.shape[1])[order]  # centroid ids sorted by group
        self.member_offsets = offsets_from_lengths(torch.bincount(flat_groups, minlength=self.centres.shape[0]))
        self.centroids = centroids

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """float32 on purpose: bf16 matmuls of many different shapes grew the build's peak RSS by ~400 MB (oneDNN
        caches a primitive per shape), and these matmuls are small."""
        xd = x.float()
        group = (xd @ self.centres.T).argmax(1)
        order = torch.argsort(group)
        counts = torch.bincount(group, minlength=self.centres.shape[0]).tolist()
        C = self.centroids
        out = torch.empty(x.shape[0], dtype=torch.long)
        start = 0
        for g, n in enumerate(counts):
            if n:
                rows = order[start : start + n]
                m = self.members[self.member_offsets[g] : self.member_offsets[g + 1]]
                out[rows] = m[(xd[rows] @ C[m].T).argmax(1)]
                start += n
        return out
