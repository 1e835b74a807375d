"""``compact``: rewrite an index without its deleted documents, in one segment, optionally with re-trained
centroids (from the stored texts re-encoded, or from the decompressed embeddings). Runs inside one writer
transaction; atomic like every write."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..codec.residual import ResidualCodec
from ..codec.strided import gather_rows
from ..config import CodecConfig
from ..errors import InvalidArgument
from ..store import layout
from ..store.docstore import DocStore
from ..store.layout import Counts
from .builder import SegmentWriter, StageTimes, encode_and_compress, progress_bar, train_codec, write_segment
from .pooling import pooled
from .writer import Writer, texts_encodable, write_codec

RECLUSTER_RATIO = 0.5
"""``compact`` re-trains the centroids when the embeddings added since they were trained exceed this fraction of
the embeddings they were trained for (added / at-training > 0.5)."""
REENCODE_MAX_EMBEDDINGS = 200_000
"""``compact`` re-trains by re-encoding the stored texts (not from decompressed embeddings) below this many
embeddings (about 5,000 passages of 40 tokens: a minute or two of encoding on 2 CPU cores)."""


def needs_recluster(codec_meta: layout.CodecMeta) -> bool:
    """True when more than ``RECLUSTER_RATIO`` of the embeddings the centroids were trained for were added since."""
    return codec_meta.embeddings_added > RECLUSTER_RATIO * max(1, codec_meta.embeddings_at_training)


def compact(writer: Writer, recluster: Optional[bool], reencode: Optional[bool], show_progress: bool) -> None:
    """See ``Index.compact``."""
    model, path = writer.model, writer.path
    with writer.transaction() as meta:
        snap = writer.reader.snapshot_of(meta, None)  # the committed generation's arrays
        arrays, n, gen = snap.arrays, meta.counts.documents, meta.generation
        offsets = arrays.doc_offsets.cpu()
        live = snap.live.nonzero().flatten().cpu()
        c = meta.codec
        config = CodecConfig.from_dict(c.config)
        if recluster is None:
            recluster = needs_recluster(c)
        old_codec = codec = arrays.codec
        if reencode and not texts_encodable(meta):
            raise InvalidArgument(f"the index at {path} holds documents given as embeddings: their stored texts are "
                                  f"not what was encoded, so compact(reencode=True) cannot rebuild them; use "
                                  f"reencode=False (re-train on the stored embeddings)")
        if reencode is None:
            reencode = meta.counts.embeddings < REENCODE_MAX_EMBEDDINGS and texts_encodable(meta)
        if recluster and reencode and len(live):  # exact: encode the stored texts (rows) again
            texts = [r[2] for rows in snap.docstore.iter_visible(n, gen) for r in rows]
            times = StageTimes()
            encoder = pooled(model, meta.pool_factor)  # pooled as the index was built
            with progress_bar(len(texts), show_progress, "re-encoding") as bar:
                codec, cache, _ = train_codec(encoder, texts, config, 32, show_progress, times, bar)
                with SegmentWriter(path, codec) as sw:
                    encode_and_compress(encoder, codec, texts, sw, cache, 32, 1024, show_progress, times,
                                        desc="re-encoding + compressing", bar=bar)
                    seg = sw.finish()
        else:
            if recluster and len(live):  # re-train on a sample of the decompressed embeddings
                idx, _ = gather_rows(offsets, live)
                sample = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
                sample = sample[: config.kmeans_sample_tokens].sort().values
                embs = codec.decompress(arrays.codes.take(sample), arrays.residuals.take(sample))
                codec = ResidualCodec.fit(embs, config, int(idx.numel())).as_stored(writer.reader.device)

            def chunks():
                for s in range(0, live.numel(), 8192):
                    idx, sub = gather_rows(offsets, live[s : s + 8192])
                    codes, residuals = arrays.codes.take(idx), arrays.residuals.take(idx)
                    if recluster:  # re-compress the decompressed embeddings against the new centroids
                        codes, residuals = codec.compress(old_codec.decompress(codes, residuals))
                        yield codes, residuals, sub[1:] - sub[:-1]
                    else:
                        yield codes.to(torch.int64), residuals, sub[1:] - sub[:-1], arrays.inv_norms.take(idx)

            seg = write_segment(path, codec, chunks())
        docstore = layout.new_docstore_name()
        with DocStore(path / docstore, create=True) as new_ds:
            pid = 0
            for rows in snap.docstore.iter_visible(n, gen):
                new_ds.insert(pid, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                              [r[4] for r in rows])
                pid += len(rows)
            if snap.docstore.has_lexical():
                new_ds.add_lexical(pid)
            new_ds.checkpoint()
        codec_meta = c
        if recluster:
            files, sums = write_codec(path, codec)
            codec_meta = layout.CodecMeta(c.config, codec.num_centroids, codec.avg_residual, files, sums,
                                          seg.num_embeddings, 0)
        del snap
        writer.commit(dataclasses.replace(
            meta, generation=gen + 1, segments=(seg,), docstore=docstore, codec=codec_meta,
            counts=Counts(seg.num_docs, 0, seg.num_docs, seg.num_embeddings)))
