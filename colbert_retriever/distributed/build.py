"""``build_sharded``: a sharded index built by streaming a dataset through Ray Data.

The collection is never gathered on the driver: Ray Data reads it in blocks (``source``), an actor pool of
encoders (``map_batches``, on CPU or GPU workers, the model loaded once per worker) turns each block into encoded
documents (``chunks``), and the driver routes them in bounded chunks to one writer actor per shard (the shard's
``ShardServer``), which compresses them with the shared codec and commits them to its index folder.

- The codec is trained once, by the driver, on a sample drawn at random from the dataset (``sample_documents``,
  encoded by the driver's model as the pool encodes; those documents are written as they are, not encoded
  again), and written beside the shards before any shard is; every shard compresses with it, so scores from
  different shards are comparable (and equal one index's with that codec).
- A document goes to the shard its id hashes to (``routing``); a later write of the same id finds it there.
- Fault tolerance: Ray Data restarts a dead encoder and re-runs its block; a dead writer is restarted by Ray and
  its chunk retried (writes are idempotent: a document already stored as given is skipped).
- The manifest is the commit point: written last, atomically. Until then ``build.json`` records the build; a
  build that was killed or failed resumes when called again with the same folder: the codec is reused, the
  documents the shards committed are kept (and not encoded again), the rest is streamed.
- Precomputed embeddings (``embeddings_column``) take the same path without the encoders.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from tqdm import tqdm

from .. import _validate
from ..codec.residual import ResidualCodec
from ..config import CodecConfig, EncoderConfig
from ..errors import IncompatibleModelError, InvalidArgument
from ..indexing.external import EmbeddingsOnly
from ..indexing.ingest import TRUNCATE_MODES, check_mode
from ..model.cache import load_model
from ..store import storage
from . import chunks, source
from . import manifest as mf
from .cluster import ray_module, translate, user_error
from .routing import shard_name
from .shard import ShardServer

logger = logging.getLogger(__name__)
IF_EXISTS = ("upsert", "error")
BUFFERED_CHUNKS = 4
"""Encoded documents waiting on the driver for their shard's chunk to fill: at most this many chunks' worth (the
fullest buffer is sent early beyond it)."""
SAMPLE_DOCUMENTS = 8192
"""Documents drawn for the codec's k-means sample by default (at most ``CodecConfig.kmeans_sample_tokens`` of
their token embeddings are used)."""


class Encoder:
    """Ray Data actor: the model, loaded once per worker; a batch of documents in, encoded documents out."""

    def __init__(self, model: str, dtype: str, encoder_config: dict, num_shards: int, truncate: str,
                 threads: Optional[int], batch_size: int, device: Optional[str] = None):
        if threads:
            torch.set_num_threads(threads)  # this worker's own process
        config = EncoderConfig.from_dict(encoder_config)
        loaded = load_model(model, device=device, dtype=dtype)
        self.model = loaded if loaded.config == config else loaded.with_config(config)
        self.num_shards, self.truncate, self.batch_size = num_shards, truncate, batch_size

    def __call__(self, batch: dict) -> dict:
        return chunks.encode(self.model, list(batch["id"]), list(batch["text"]), list(batch["metadata"]),
                             self.num_shards, self.truncate, self.batch_size)


def _drop_present(batch: dict, writers: dict) -> dict:
    """Resuming: leave out the documents a shard already committed."""
    import numpy as np
    import ray

    present = set()
    shards = batch["shard"]
    for s in sorted(set(int(x) for x in shards)):
        ids = [str(i) for i, sh in zip(batch["id"], shards) if int(sh) == s]
        present |= set(ray.get(writers[s].present.remote(ids))[1])
    keep = np.array([str(i) not in present for i in batch["id"]], dtype=bool)
    return {k: v[keep] for k, v in batch.items()}


def _sample(drawn, driver, embeddings_column: Optional[str], num_shards: int, truncate: str, batch_size: int,
            config: CodecConfig, dim: int) -> tuple[torch.Tensor, float, list]:
    """The k-means sample (at most ``kmeans_sample_tokens`` token embeddings, float32) from the documents drawn,
    encoded by the driver's model as the encoders encode (``chunks.encode``); their mean tokens per document; and
    their encoded batches (written to the shards as they are: no document is encoded twice)."""
    parts, docs, batches = [], 0, []
    for batch in drawn.iter_batches(batch_size=1024, batch_format="numpy"):
        if embeddings_column is None:
            batch = chunks.encode(driver, list(batch["id"]), list(batch["text"]), list(batch["metadata"]),
                                  num_shards, truncate, min(batch_size, 64))
        batches.append(batch)
        decoded, normalize = chunks.decode(batch, dim)
        _, embs = chunks.to_rows(decoded)
        docs += len(decoded)
        parts += [torch.nn.functional.normalize(e.float(), dim=-1) if normalize else e.float() for e in embs]
    if not parts:
        raise InvalidArgument("the data holds no documents")
    sample = torch.cat(parts)
    del parts
    per_doc = sample.shape[0] / max(1, docs)
    if sample.shape[0] > config.kmeans_sample_tokens:
        g = torch.Generator().manual_seed(config.seed)
        sample = sample[torch.randperm(sample.shape[0], generator=g)[: config.kmeans_sample_tokens]]
    return sample, per_doc, batches


def _train(root: Path, ds, n: int, sample_documents: int, config: CodecConfig, **how) -> tuple[dict, list]:
    """The codec, trained once on ``sample_documents`` documents drawn from the dataset and written into
    ``root``; and the drawn documents, encoded."""
    frac = min(1.0, sample_documents / max(1, n))
    drawn = ds if frac >= 1.0 else ds.random_sample(frac, seed=config.seed)
    sample, per_doc, batches = _sample(drawn, config=config, **how)
    codec = ResidualCodec.fit(sample, config, int(per_doc * n)).as_stored()  # as a single index compresses
    del sample
    return mf.save_codec(root, codec, config), batches


def _encoder_cpus(ray, given: Optional[float], threads: Optional[int], workers: int) -> float:
    """Ray CPUs each encoder reserves: ``given``, else its threads, less what leaves the readers room on a small
    cluster (encoders reserving every CPU would leave none for the tasks that read their input)."""
    if given is not None:
        return given
    room = (float(ray.cluster_resources().get("CPU", 1.0)) - 2 * source.LIGHT_CPUS) / workers
    return max(source.LIGHT_CPUS, min(float(threads or 1), room))


def _drop_ids(batch: dict, ids: frozenset) -> dict:
    """Leave out the documents with these ids (the codec's sample: the driver encoded them already)."""
    import numpy as np

    keep = np.array([str(i) not in ids for i in batch["id"]], dtype=bool)
    return {k: v[keep] for k, v in batch.items()}


def _model(model: Any, dtype: str, embeddings_column: Optional[str], name: Optional[str], dim: Optional[int]):
    if embeddings_column is not None and model is None:
        return EmbeddingsOnly(dim, name or "external")
    return load_model(model, dtype=dtype)


def _first_dim(raw, kind: str, embeddings_column: str) -> int:
    """The embeddings' dimension, from the first document."""
    probe = source.Normalize(kind, 1, embeddings_column)(raw.take_batch(1, batch_format="pyarrow"))
    tokens = sum(json.loads(probe["lens"][0]))
    return len(probe["emb"][0]) // (4 * tokens)


def build_sharded(path: Union[str, Path], data: Any, ids: Optional[Sequence[str]] = None,
                  metadatas: Optional[Sequence[dict]] = None, *, model: Any = None,
                  num_shards: Optional[int] = None, num_workers: int = 2, nbits: Optional[int] = None,
                  codec_config: Optional[CodecConfig] = None, lexical: bool = False, truncate: str = "chunk",
                  embeddings_column: Optional[str] = None, name: Optional[str] = None, dtype: str = "auto",
                  batch_size: int = 256, chunk_docs: int = 2048, sample_documents: int = SAMPLE_DOCUMENTS,
                  threads_per_worker: Optional[int] = 1, cpus_per_worker: Optional[float] = None,
                  gpus_per_worker: float = 0, if_exists: str = "upsert", max_retries: int = 3,
                  show_progress: bool = True, lock_timeout: float = 60.0) -> Path:
    """Build (or add to) a sharded index at ``path`` by streaming ``data`` through Ray Data.

    data: a Ray Dataset (columns ``id`` or ``_id``, ``text``, optional ``title``; other columns are metadata), a
    BEIR folder, ``.jsonl[.gz]`` or ``.parquet`` files (read by Ray Data), or texts in memory (with ``ids`` and
    ``metadatas``, as ``Index.build``). model: a name or folder every worker can load (``load_model``; None: the
    default model); dtype: its documents' precision, resolved once by the driver and recorded. num_shards:
    default 2 (an existing index keeps its own). num_workers: encoders in the pool, each with
    ``threads_per_worker`` threads, ``cpus_per_worker`` (default: its threads, less room for the readers on a
    small cluster) and ``gpus_per_worker`` reserved from Ray (a GPU worker encodes on CUDA). batch_size: documents
    per encoder call; chunk_docs: documents per shard commit; sample_documents: documents drawn for the codec
    (encoded by the driver, which trains it). nbits,
    codec_config, lexical, truncate: as ``Index.build``. embeddings_column: precomputed embeddings (one
    (tokens, dim) array per document) in this column instead of encoding (then ``model`` names the encoder that
    made them, or None with ``name``). if_exists: "upsert" (default: documents added, same ids replaced,
    unchanged ones skipped) or "error". max_retries: restarts of a dead writer (encoders: Ray Data's own).
    Returns the folder; open it with ``ShardedIndex.open``."""
    ray = ray_module()
    root = _validate.path_arg(path)
    check_mode("if_exists", if_exists, IF_EXISTS)
    check_mode("truncate", truncate, TRUNCATE_MODES)
    _validate.flag(lexical, "lexical")
    num_workers = _validate.positive_int(num_workers, "num_workers")
    chunk_docs = _validate.positive_int(chunk_docs, "chunk_docs")
    if codec_config is not None and nbits is not None and codec_config.nbits != nbits:
        raise InvalidArgument(f"nbits={nbits} contradicts codec_config.nbits={codec_config.nbits}; give one")
    config = codec_config or CodecConfig(nbits=2 if nbits is None else _validate.positive_int(nbits, "nbits"))
    mf.check_root(root)
    t0 = time.perf_counter()
    raw, kind = source.dataset(ray, data, ids, metadatas, embeddings_column)
    raw.context.raise_original_map_exception = True  # a bad document's error reaches the caller as raised
    raw.context.enable_progress_bars = show_progress
    dim = _first_dim(raw, kind, embeddings_column) if embeddings_column is not None else None
    driver = _model(model, dtype, embeddings_column, name, dim)
    entry = mf.model_entry(driver)
    with storage.write_lock(root, _validate.lock_timeout(lock_timeout)):
        existing = mf.read(root) if (root / mf.MANIFEST).exists() else None
        state = json.loads((root / mf.BUILD_STATE).read_text()) if (root / mf.BUILD_STATE).exists() else None
        if existing is not None and if_exists == "error":
            raise InvalidArgument(f"a sharded index already exists at {root}; if_exists='upsert' adds to it by id")
        known = state
        if existing is not None:
            known = {"num_shards": existing.num_shards, "model": existing.model, "codec": existing.codec,
                     "lexical": existing.lexical}
        codec_entry = None
        if known is not None:
            if num_shards is not None and num_shards != known["num_shards"]:
                raise InvalidArgument(f"the sharded index at {root} has {known['num_shards']} shards; num_shards="
                                      f"{num_shards} cannot change them (build into a new folder)")
            if known["model"]["identity"] != entry["identity"]:
                raise IncompatibleModelError(f"the sharded index at {root} was built with model "
                                             f"{known['model']['name']!r}; the model given is {entry['name']!r}")
            num_shards, entry, codec_entry = known["num_shards"], known["model"], known["codec"]
            lexical = lexical or bool(known.get("lexical"))
        num_shards = _validate.positive_int(2 if num_shards is None else num_shards, "num_shards")
        dim = EncoderConfig.from_dict(entry["encoder_config"]).dim
        names = [shard_name(i) for i in range(num_shards)]
        resuming = existing is None and state is not None
        Writer = ray.remote(ShardServer).options(max_restarts=max_retries, max_task_retries=max_retries,
                                                 scheduling_strategy="SPREAD")
        # started now, they load while the codec trains; they read the codec from build.json or the manifest
        writers = [Writer.remote(str(root / n), str(root), entry, codec_entry, lexical, 1, lock_timeout)
                   for n in names]
        try:
            light = {"num_cpus": source.LIGHT_CPUS}
            ds = raw.map_batches(source.Normalize(kind, num_shards, embeddings_column, dim), batch_format="pyarrow",
                                 **light)
            total, sampled = None, []
            if codec_entry is None:
                total = len(data) if kind == "memory" else ds.count()
                if total == 0:
                    raise InvalidArgument("the data holds no documents")
                codec_entry, sampled = _train(root, ds, total, sample_documents, config, driver=driver,
                                              embeddings_column=embeddings_column, num_shards=num_shards,
                                              truncate=truncate, batch_size=batch_size, dim=dim)
                drawn = frozenset(str(i) for b in sampled for i in b["id"])
                ds = ds.map_batches(_drop_ids, batch_format="numpy", fn_kwargs={"ids": drawn}, **light)
                state = {"format": mf.FORMAT + "-build", "num_shards": num_shards, "model": entry,
                         "codec": codec_entry, "lexical": lexical, "started": time.time()}
                storage.atomic_write_bytes(root / mf.BUILD_STATE, json.dumps(state, indent=1).encode())
            if resuming:  # documents the shards committed before the build stopped are not encoded again
                ds = ds.map_batches(_drop_present, batch_format="numpy", fn_kwargs={"writers": writers}, **light)
            if embeddings_column is None:
                ds = ds.map_batches(Encoder, batch_size=batch_size, batch_format="numpy", concurrency=num_workers,
                                    num_cpus=_encoder_cpus(ray, cpus_per_worker, threads_per_worker, num_workers),
                                    num_gpus=gpus_per_worker or None, fn_constructor_kwargs={
                                        "model": entry["name"], "dtype": entry["precision"]["documents"],
                                        "encoder_config": entry["encoder_config"], "num_shards": num_shards,
                                        "truncate": truncate, "threads": threads_per_worker,
                                        "batch_size": min(batch_size, 64),
                                        "device": "cuda" if gpus_per_worker else None})
            batches = itertools.chain(sampled, ds.iter_batches(batch_size=None, batch_format="numpy"))
            written = _stream(ray, batches, writers, names, chunk_docs, total, show_progress)
            counts = ray.get([w.count.remote() for w in writers])
            base = existing if existing is not None else mf.Manifest(0, entry, codec_entry,
                                                                     tuple(mf.Shard(n) for n in names), lexical)
            provenance = {**base.provenance, "build_seconds": round(time.perf_counter() - t0, 2),
                          "workers": num_workers, "documents_written": written, "dataset": _describe(data)}
            if existing is None or written or lexical != existing.lexical:  # a re-run that changed nothing: no commit
                mf.write(root, base.advanced(dict(zip(names, counts)), lexical=lexical, provenance=provenance))
            (root / mf.BUILD_STATE).unlink(missing_ok=True)
        except Exception as e:
            cause = user_error(e)
            if cause is not None:
                raise cause from None
            if isinstance(e, ray.exceptions.RayError):
                raise translate(e, f"the build of {root}") from None
            raise
        finally:
            for w in writers:
                ray.kill(w)
    return root


def _stream(ray, batches, writers: list, names: list, chunk_docs: int, total: Optional[int],
            show_progress: bool) -> int:
    """Route encoded documents to their shards' writers in chunks of ``chunk_docs`` (a few in flight per
    writer); the documents written."""
    buffers: dict[int, list] = {}
    in_flight: dict = {}
    written = buffered = 0
    bar = tqdm(total=total, desc="encoding + writing shards", unit="doc", disable=not show_progress, mininterval=0.5)

    def settle(block: bool):
        nonlocal written
        while in_flight and (block or len(in_flight) > 2 * len(writers)):
            done, _ = ray.wait(list(in_flight), num_returns=1)
            shard, n = in_flight.pop(done[0])
            try:
                written += ray.get(done[0])[2]
            except ray.exceptions.RayError as e:
                cause = user_error(e)
                raise (cause if cause is not None else translate(e, f"the writer of {names[shard]}")) from None
            bar.update(n)

    def flush(shard: int):
        nonlocal buffered
        docs = buffers.pop(shard)
        buffered -= len(docs)
        chunk = {c: [d[c] for d in docs] for c in chunks.COLUMNS}
        in_flight[writers[shard].append_encoded.remote(chunk)] = (shard, len(docs))
        settle(False)

    for batch in batches:
        for i in range(len(batch["id"])):
            shard = int(batch["shard"][i])
            buffers.setdefault(shard, []).append({c: batch[c][i] for c in chunks.COLUMNS})
            buffered += 1
            if len(buffers[shard]) >= chunk_docs:
                flush(shard)
            elif buffered > BUFFERED_CHUNKS * chunk_docs:  # memory: at most a few chunks wait on the driver
                flush(max(buffers, key=lambda s: len(buffers[s])))
    for shard in sorted(buffers):
        flush(shard)
    settle(True)
    bar.close()
    return written


def _describe(data: Any) -> str:
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, (list, tuple)):
        return f"{len(data)} texts in memory" if all(isinstance(t, str) for t in data) else str(data[:3])
    return type(data).__name__
