"""Encoding + compression streams that write segments: used by ``Index.build``, ``Index.add`` and ``compact``.

Memory stays bounded: documents are encoded and compressed a chunk at a time, and compressed rows are appended to
raw files that become ``.npy`` segments at the end (the only full pass over them is a sequential copy).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..codec.residual import ResidualCodec, code_dtype
from ..codec.strided import inverted_file
from ..config import CodecConfig
from ..store import layout, storage


@dataclass
class StageTimes:
    encode_s: float = 0.0
    kmeans_s: float = 0.0
    compress_s: float = 0.0
    write_s: float = 0.0
    segment_s: float = 0.0  # ``SegmentWriter.finish``: the raw files copied into .npy files, the inverted file

    def as_dict(self):
        return {k: round(v, 3) for k, v in self.__dict__.items()}


class SegmentWriter:
    """Appends compressed chunks; ``finish`` turns them into the segment's files (``layout.SEGMENT_PARTS``): codes,
    residuals, doclens and inverse norms streamed to disk as they come, then the segment's own inverted file.
    Every file is fsynced and checksummed. Memory stays at one chunk."""

    def __init__(self, folder: Path, codec: ResidualCodec, name: Optional[str] = None):
        self.folder = Path(folder)
        self.codec = codec
        self.name = name or layout.new_segment_name()
        self.codes_dtype = code_dtype(codec.num_centroids)
        self.packed_dim = codec.packed_dim
        self.parts = {p: self.folder / f".{self.name}.{p}.raw" for p in ("codes", "residuals", "doclens", "invnorms")}
        self.files = {}
        try:
            for p, path in self.parts.items():
                self.files[p] = open(path, "xb")  # new files only: never written through a link
        except BaseException:
            self.abort()
            raise
        self.num_docs = 0
        self.num_embeddings = 0

    def append(self, codes: torch.Tensor, packed: torch.Tensor, doclens: torch.Tensor,
               inv_norms: Optional[torch.Tensor] = None) -> None:
        """Append documents: codes (n,), packed residuals (n, packed_dim), doclens (docs,), and (when the caller
        already has them, e.g. copying a segment) their inverse norms (n,)."""
        if inv_norms is None:
            inv_norms = self.codec.inverse_norms(codes, packed)
        self.files["codes"].write(codes.cpu().numpy().astype(self.codes_dtype).tobytes())
        self.files["residuals"].write(packed.cpu().numpy().tobytes())
        self.files["doclens"].write(doclens.cpu().numpy().astype(np.int32).tobytes())
        self.files["invnorms"].write(inv_norms.cpu().numpy().astype(np.float32).tobytes())
        self.num_docs += int(doclens.numel())
        self.num_embeddings += int(codes.numel())

    def finish(self) -> layout.SegmentMeta:
        shapes = {"codes": ((self.num_embeddings,), self.codes_dtype),
                  "residuals": ((self.num_embeddings, self.packed_dim), np.dtype(np.uint8)),
                  "doclens": ((self.num_docs,), np.dtype(np.int32)),
                  "invnorms": ((self.num_embeddings,), np.dtype(np.float32))}
        sums = {}
        for part, f in self.files.items():
            f.close()
            shape, dtype = shapes[part]
            final = self.folder / layout.segment_file(self.name, part)
            tmp = self.folder / f".{self.name}.{part}.npy.tmp"
            with open(tmp, "xb") as out, open(self.parts[part], "rb") as raw:
                w = storage.Crc32Writer(out)
                np.lib.format.write_array_header_1_0(w, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                         "fortran_order": False, "shape": shape})
                while True:
                    block = raw.read(1 << 24)
                    if not block:
                        break
                    w.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            os.unlink(self.parts[part])
            sums[final.name] = storage.crc_hex(w.crc)
        codes = np.load(self.folder / layout.segment_file(self.name, "codes"), mmap_mode="r")
        doclens = np.load(self.folder / layout.segment_file(self.name, "doclens"), mmap_mode="r")
        pids, offsets = inverted_file(codes, doclens, self.codec.num_centroids)
        for part, arr in (("ivfpids", pids), ("ivfoffsets", offsets)):
            name = layout.segment_file(self.name, part)
            sums[name] = storage.save_array(self.folder, name, arr)
        return layout.SegmentMeta(self.name, self.num_docs, self.num_embeddings, sums)

    def abort(self) -> None:
        """Remove every file of this segment (raw parts, temporaries, the files ``finish`` already renamed into
        place: the name is new, no generation references it). Each close and each removal is tried even when an
        earlier one fails (closing a buffered file flushes it, which fails on a full disk)."""
        for f in self.files.values():
            with contextlib.suppress(OSError, ValueError):
                f.close()
        names = [self.parts[p].name for p in self.files]  # only the raw files this writer created
        names += [f".{self.name}.{p}.npy.tmp" for p in self.parts]
        names += [layout.segment_file(self.name, p) for p in layout.SEGMENT_PARTS]
        own = tuple(f".{layout.segment_file(self.name, p)}." for p in layout.SEGMENT_PARTS)  # save_array's temps
        with contextlib.suppress(OSError):
            names += [n for n in os.listdir(self.folder) if n.startswith(own) and n.endswith(".tmp")]
        for n in names:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.unlink(self.folder / n)

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """An error inside ``with`` leaves nothing behind (the caller calls ``finish`` on success)."""
        if exc_type is not None:
            self.abort()


def write_segment(folder: Path, codec: ResidualCodec, chunks) -> layout.SegmentMeta:
    """Write one segment from an iterable of ``SegmentWriter.append`` argument tuples; nothing is left behind on
    error."""
    with SegmentWriter(folder, codec) as writer:
        for args in chunks:
            writer.append(*args)
        return writer.finish()


PROGRESS_MIN_ROWS = 256
"""``show_progress=None`` (the default of ``Index.build``): a bar only when more rows than this are encoded (a build
of a few texts takes seconds and prints nothing)."""


def rows_unit(rows) -> str:
    """What a bar over ``rows`` counts: "passage" when a document was split into passages, else "doc"."""
    return "passage" if rows.spans is not None and any(sp is not None for sp in rows.spans) else "doc"


def progress_bar(total: int, show: Optional[bool], desc: str, unit: str = "passage") -> tqdm:
    """The bar an index write shows: rows encoded (``unit``: documents, or passages when documents were split),
    moving with every encoded batch, labelled with the phase ("encoding a sample for the centroids", "training
    centroids (k-means)", "encoding + compressing"). show: None = only for more than ``PROGRESS_MIN_ROWS`` rows."""
    show = total > PROGRESS_MIN_ROWS if show is None else bool(show)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, mininterval=0.5)


def encode_sample(model, texts: Sequence[str], config: CodecConfig, batch_size: int, bar: tqdm,
                  times: StageTimes) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Encode documents in random order until ``config.kmeans_sample_tokens`` tokens are seen (or all documents).
    Returns ({doc index: (n_i, dim) float32 CPU embeddings}, the sample as one (n, dim) tensor): the cache's
    entries are views of that tensor. The sample is kept in float32 (``Precision.assignment``): sampled documents
    are compressed from the same embeddings as the others."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(texts))
    docs: list[int] = []
    chunks, sizes = [], []
    tokens = 0
    step = 1024
    bar.set_description("encoding a sample for the centroids")
    t0 = time.perf_counter()
    for s in range(0, len(order), step):
        idx = order[s : s + step].tolist()
        embs, lengths = model.encode_documents_packed([texts[i] for i in idx], batch_size=batch_size,
                                                      progress=bar.update)
        chunks.append(embs.to("cpu", torch.float32))
        docs += idx
        sizes += lengths.tolist()
        tokens += int(lengths.sum())
        if tokens >= config.kmeans_sample_tokens:
            break
    # one copy of the sample: the cache's entries are views of the tensor k-means trains on (at 2^20 tokens a
    # copy is 0.5 GB: keeping chunks and a concatenation of them doubled the build's peak memory)
    sample = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    del chunks
    cache = dict(zip(docs, torch.split(sample, sizes)))
    times.encode_s += time.perf_counter() - t0
    return cache, sample


def train_codec(model, texts: Sequence[str], config: CodecConfig, batch_size: int, show_progress: Optional[bool],
                times: StageTimes, bar: Optional[tqdm] = None) -> tuple[ResidualCodec, dict[int, torch.Tensor], int]:
    """Encode the k-means sample (``encode_sample``) and fit the codec on it. Returns the codec, the sample cache
    (reusable by ``encode_and_compress``) and the estimated number of embeddings in ``texts``. bar: the caller's
    progress bar over ``texts`` (else one is made for this step)."""
    own = bar is None
    bar = progress_bar(len(texts), show_progress, "") if own else bar
    cache, sample = encode_sample(model, texts, config, batch_size, bar, times)
    bar.set_description("training centroids (k-means)")
    bar.refresh()
    t0 = time.perf_counter()
    est = int(sample.shape[0] / max(1, len(cache)) * len(texts))
    # compress against exactly what is stored (fp16 centroids), so stored inverse norms match search time
    codec = ResidualCodec.fit(sample, config, est).as_stored()
    times.kmeans_s += time.perf_counter() - t0
    if own:
        bar.close()
    return codec, cache, est


def encode_and_compress(model, codec: ResidualCodec, texts: Sequence[str], writer: SegmentWriter,
                        cache: Optional[dict[int, torch.Tensor]], batch_size: int, chunk_docs: int,
                        show_progress: Optional[bool], times: StageTimes, desc: str = "encoding + compressing",
                        bar: Optional[tqdm] = None, unit: str = "passage") -> None:
    """Encode (reusing ``cache`` where it has a document) and compress ``texts`` in order into ``writer``. bar:
    the caller's progress bar (documents already counted in it, the cached sample, are not counted again); else
    one is made, counting ``unit``."""
    cache = cache or {}
    own = bar is None
    bar = progress_bar(len(texts), show_progress, desc, unit) if own else bar
    bar.set_description(desc)
    for s in range(0, len(texts), chunk_docs):
        idx = list(range(s, min(s + chunk_docs, len(texts))))
        missing = [i for i in idx if i not in cache]
        t0 = time.perf_counter()
        fresh = {}
        if missing:
            embs, lengths = model.encode_documents_packed([texts[i] for i in missing], batch_size=batch_size,
                                                          progress=bar.update)
            fresh = dict(zip(missing, torch.split(embs, lengths.tolist())))
        t1 = time.perf_counter()
        pieces = [fresh[i] if i in fresh else cache.pop(i) for i in idx]
        embs = torch.cat([p.float() for p in pieces]).to(codec.centroids.device)
        codes, packed = codec.compress(embs, assign_dtype=model.precision.assignment)
        t2 = time.perf_counter()
        writer.append(codes, packed, torch.tensor([p.shape[0] for p in pieces]))
        t3 = time.perf_counter()
        times.encode_s += t1 - t0
        times.compress_s += t2 - t1
        times.write_s += t3 - t2
    if own:
        bar.close()
