"""``Index``: build, open, search, add, delete, compact. Wires encoder + codec + storage + docstore + PLAID."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__, _validate, storage
from .builder import SegmentWriter, StageTimes, encode_and_compress, train_codec
from .codec import ResidualCodec
from .config import CodecConfig, EncoderConfig, SearchConfig
from .docstore import DocStore
from .encoder import DEFAULT_MODEL_NAME, ColBERT
from .errors import IncompatibleModelError, IndexFormatError, IndexNotFoundError, InvalidArgument, InvalidType
from .hits import Hit
from .plaid import IndexArrays, search_one
from .strided import gather_rows, inverted_file, offsets_from_lengths

logger = logging.getLogger(__name__)

RECLUSTER_RATIO = 0.5
"""``compact`` re-trains the centroids when the embeddings added since they were trained exceed this fraction of
the embeddings they were trained for (added / at-training > 0.5)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _model_meta(model: ColBERT) -> dict:
    return {"name": model.name, "identity": model.identity, "encoder_config": model.config.to_dict()}


class Index:
    """A compressed ColBERT index in one folder. Create with ``Index.build`` or ``Index.open``."""

    def __init__(self, path: Path, model: ColBERT, device: torch.device):
        self.path = Path(path)
        self.model = model
        self.device = device
        self._lock = threading.RLock()
        self._meta: dict = {}
        self._docstore: Optional[DocStore] = None
        self._load()

    # ================================================================ construction
    @classmethod
    def build(cls, path: Union[str, Path], texts: Sequence[str], ids: Optional[Sequence[str]] = None,
              metadatas: Optional[Sequence[dict]] = None, model: Optional[ColBERT] = None, nbits: int = 2, *,
              codec_config: Optional[CodecConfig] = None, batch_size: int = 32, chunk_docs: int = 1024,
              show_progress: bool = True, overwrite: bool = False, provenance: Optional[dict] = None,
              codec: Optional[ResidualCodec] = None) -> "Index":
        """Encode, compress and write ``texts`` as a new index at ``path``.

        ids: unique strings (default "0".."n-1"); metadatas: JSON-serialisable dicts; model: default
        ``ColBERT.default()``; nbits: residual bits per dimension (1, 2 or 4). An existing index at ``path`` is
        replaced only with ``overwrite=True``, and stays readable until the new one is committed. ``codec``: an
        already trained ``ResidualCodec`` to use instead of training one (shards of one collection share it).
        """
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        metadatas = _validate.metadata_list(metadatas, len(texts))
        codec_config = (codec_config or CodecConfig()).replace(nbits=nbits)  # nbits wins over codec_config
        model = model if model is not None else ColBERT.default()
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InvalidArgument(f"{path} exists and is not a folder")
        t_start = time.perf_counter()
        with storage.write_lock(path):
            old = None
            if (path / storage.METADATA).exists():
                if not overwrite:
                    raise InvalidArgument(f"an index already exists at {path}; pass overwrite=True to replace it")
                try:
                    old = storage.read_metadata(path)
                except IndexFormatError:
                    old = None
            times = StageTimes()
            if codec is None:
                codec, cache, est = train_codec(model, texts, codec_config, batch_size, show_progress, times)
            else:
                if codec.nbits != codec_config.nbits or codec.dim != model.config.dim:
                    raise InvalidArgument(f"the codec given has nbits={codec.nbits}, dim={codec.dim}; expected "
                                          f"nbits={codec_config.nbits}, dim={model.config.dim}")
                cache, est = {}, 0
            writer = SegmentWriter(path, codec)
            try:
                encode_and_compress(model, codec, texts, writer, cache, batch_size, chunk_docs, show_progress, times)
                seg = writer.finish()
            except BaseException:
                writer.abort()
                raise
            t0 = time.perf_counter()
            gen = (old["generation"] + 1) if old else 1
            docstore_name = f"docs-{uuid.uuid4().hex[:12]}.sqlite"
            ds = DocStore(path / docstore_name, create=True)
            try:
                ds.insert(0, ids, texts, metadatas)
            finally:
                ds.close()
            codec_files = cls._write_codec(path, codec)
            ivf = cls._write_ivf(path, [seg], codec.num_centroids)
            times.write_s += time.perf_counter() - t0
            meta = {
                "library_version": __version__,
                "generation": gen,
                "model": _model_meta(model),
                "codec": {"config": codec_config.to_dict(), "num_centroids": codec.num_centroids,
                          "avg_residual": codec.avg_residual, "files": codec_files,
                          "embeddings_at_training": est or seg["num_embeddings"]},
                "segments": [seg],
                "ivf": ivf,
                "docstore": docstore_name,
                "counts": {"documents": len(texts), "deleted": 0, "live": len(texts),
                           "embeddings": seg["num_embeddings"]},
                "provenance": {"created": _now(), "updated": _now(), "host": platform.node(),
                               "python": platform.python_version(), "torch": torch.__version__,
                               "build_seconds": round(time.perf_counter() - t_start, 3),
                               "stages": times.as_dict(), **(provenance or {})},
            }
            storage.write_metadata(path, meta)
            storage.collect_garbage(path, storage.referenced_files(meta))
        return cls(path, model, model.device)

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[ColBERT] = None, device=None) -> "Index":
        """Open an index; the model is restored from the index's metadata unless given (then it must match)."""
        path = Path(path)
        meta = storage.read_metadata(path)
        m = meta["model"]
        if model is None:
            try:
                model = ColBERT.from_pretrained(m["name"], device=device)
                # the index says how its documents were encoded (e.g. a doc_maxlen chosen at build time)
                model.set_config(EncoderConfig.from_dict(m["encoder_config"]))
            except Exception as e:
                raise IncompatibleModelError(
                    f"the index at {path} was built with model {m['name']!r}, which cannot be loaded here ({e}); "
                    f"pass model=ColBERT.from_pretrained(<folder>)"
                ) from None
        if model.identity != m["identity"]:
            raise IncompatibleModelError(
                f"the index at {path} was built with model {m['name']!r} (weights {m['identity']}); the model given is "
                f"{model.name!r} (weights {model.identity})"
            )
        if model.config.to_dict() != EncoderConfig.from_dict(m["encoder_config"]).to_dict():
            raise IncompatibleModelError(f"the model's encoder config differs from the one the index at {path} was "
                                         f"built with: {m['encoder_config']}")
        return cls(path, model, model.device)

    # ================================================================ loading
    @staticmethod
    def _write_codec(path: Path, codec: ResidualCodec) -> dict:
        return {name: storage.save_array(path, f"codec-{uuid.uuid4().hex[:8]}.{name}.npy", arr)
                for name, arr in codec.arrays().items()}

    @staticmethod
    def _write_ivf(path: Path, segments: list[dict], num_centroids: int) -> dict:
        codes = np.concatenate([storage.load_array(path, f"{s['name']}.codes.npy") for s in segments])
        doclens = np.concatenate([storage.load_array(path, f"{s['name']}.doclens.npy") for s in segments])
        pids, offsets = inverted_file(codes, doclens, num_centroids)
        tag = uuid.uuid4().hex[:8]
        return {"pids": storage.save_array(path, f"ivf-{tag}.pids.npy", pids),
                "offsets": storage.save_array(path, f"ivf-{tag}.offsets.npy", offsets)}

    def _load(self) -> None:
        meta = storage.read_metadata(self.path)
        p, dev = self.path, self.device
        c = meta["codec"]
        try:
            codec_arrays = {k: storage.load_array(p, v, mmap=False) for k, v in c["files"].items()}
            codec = ResidualCodec.from_arrays(codec_arrays, c["config"]["nbits"], c["avg_residual"], device=dev)
            segs = meta["segments"]
            codes = [storage.load_array(p, f"{s['name']}.codes.npy", s["num_embeddings"]) for s in segs]
            res = [storage.load_array(p, f"{s['name']}.residuals.npy", s["num_embeddings"]) for s in segs]
            lens = [storage.load_array(p, f"{s['name']}.doclens.npy", s["num_docs"]) for s in segs]
            ivf_pids = storage.load_array(p, meta["ivf"]["pids"])
            ivf_off = storage.load_array(p, meta["ivf"]["offsets"], codec.num_centroids + 1)
        except KeyError as e:
            raise IndexFormatError(f"{p / storage.METADATA} lacks the entry {e}") from None
        for r in res:
            if r.ndim != 2 or r.shape[1] != codec.packed_dim:
                raise IndexFormatError(f"residuals in {p} have shape {r.shape}; expected (n, {codec.packed_dim})")
        residuals = storage.as_tensor(res[0]) if len(res) == 1 else torch.from_numpy(np.concatenate(res))
        doclens = torch.from_numpy(np.concatenate(lens).astype(np.int64))
        n_docs = meta["counts"]["documents"]
        if doclens.numel() != n_docs:
            raise IndexFormatError(f"{p}: segments hold {doclens.numel()} documents; metadata says {n_docs}")
        arrays = IndexArrays(
            codec=codec,
            codes=torch.from_numpy(np.concatenate(codes).astype(np.int32)).to(dev),  # 4 B/token in RAM
            residuals=residuals.to(dev),
            doc_offsets=offsets_from_lengths(doclens).to(dev),
            ivf_pids=torch.from_numpy(np.asarray(ivf_pids, dtype=np.int64)).to(dev),
            ivf_offsets=torch.from_numpy(np.asarray(ivf_off, dtype=np.int64)).to(dev),
        )
        docstore = DocStore(p / meta["docstore"])
        live = torch.ones(n_docs, dtype=torch.bool)
        deleted = docstore.deleted_pids(n_docs, meta["generation"])
        live[torch.from_numpy(deleted)] = False
        with self._lock:
            old = self._docstore
            self._meta, self._arrays, self._docstore, self._live = meta, arrays, docstore, live.to(dev)
            self._live_count = int(live.sum())
            self._mtime = (p / storage.METADATA).stat().st_mtime_ns
        if old is not None and old is not docstore:
            old.close()

    def _refresh(self) -> None:
        """Reload if another writer committed a newer generation since we loaded."""
        try:
            mtime = (self.path / storage.METADATA).stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            meta = storage.read_metadata(self.path)
            if meta["generation"] != self._meta["generation"]:
                self._load()
            else:
                self._mtime = mtime

    # ================================================================ properties
    @property
    def metadata(self) -> dict:
        """A copy of metadata.json as loaded."""
        import copy

        return copy.deepcopy(self._meta)

    def __len__(self) -> int:
        return self._live_count

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, live={len(self)}, nbits={self._arrays.codec.nbits})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._docstore is not None:
            self._docstore.close()
            self._docstore = None

    # ================================================================ search
    def search(self, queries: Union[str, Sequence[str]], k: int = 10, *, filter: Optional[dict] = None,
               ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
               centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
               exhaustive: bool = False) -> Union[list[Hit], list[list[Hit]]]:
        """Top-k documents for one query (list[Hit]) or several (list[list[Hit]]), best first.

        filter: metadata filter (see ``docstore.compile_filter``); ids: restrict to these document ids.
        ncells, centroid_score_threshold, ndocs: PLAID knobs for this call only (defaults depend on k);
        exhaustive: decompress and score every allowed document (the reference). Returns exactly
        min(k, number of matching live documents) unique hits per query.
        """
        single = isinstance(queries, str)
        qs = _validate.texts_list(queries, "query" if single else "queries")
        k = _validate.positive_int(k, "k")
        cfg = SearchConfig(ncells, centroid_score_threshold, ndocs, bool(exhaustive))
        if ncells is not None:
            _validate.positive_int(ncells, "ncells")
        if ndocs is not None:
            _validate.positive_int(ndocs, "ndocs")
        Q = self.model.encode_queries(qs).to(self.device)
        results = self.search_embeddings(Q, k, filter=filter, ids=ids, config=cfg)
        return results[0] if single else results

    def search_embeddings(self, Q: torch.Tensor, k: int, *, filter: Optional[dict] = None,
                          ids: Optional[Sequence[str]] = None, config: SearchConfig = SearchConfig()) -> list[list[Hit]]:
        """Search with query embeddings Q: (n, q_len, dim) (zero rows are ignored)."""
        if not isinstance(Q, torch.Tensor) or Q.dim() != 3 or Q.shape[-1] != self.model.config.dim:
            shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
            raise InvalidArgument(f"query embeddings have shape {shape}; expected (n, q_len, {self.model.config.dim})")
        with self._lock:
            self._refresh()
            arrays, meta, docstore = self._arrays, self._meta, self._docstore
            allowed, n_allowed = self._allowed(filter, ids)
        n, gen = meta["counts"]["documents"], meta["generation"]
        Q = Q.to(self.device).float()
        Sc_all = arrays.codec.centroids @ Q.reshape(-1, Q.shape[-1]).T  # (K, n * q_len)
        out = []
        with torch.inference_mode():
            for qi in range(Q.shape[0]):
                rows = Q[qi].abs().sum(-1) > 0
                q = Q[qi][rows]
                Sc = Sc_all[:, qi * Q.shape[1] : (qi + 1) * Q.shape[1]][:, rows]
                pids, scores = search_one(q, Sc, arrays, k, config, allowed, n_allowed)
                out.append((pids.cpu().tolist(), scores.cpu().tolist()))
        docs = docstore.fetch(sorted({p for pids, _ in out for p in pids}))
        return [[Hit(id=docs[p][0], score=s, rank=r + 1, text=docs[p][1], metadata=docs[p][2])
                 for r, (p, s) in enumerate(zip(pids, scores))] for pids, scores in out]

    def _allowed(self, filter: Optional[dict], ids: Optional[Sequence[str]]):
        n, gen = self._meta["counts"]["documents"], self._meta["generation"]
        if filter is None and ids is None:
            if self._live_count == n:
                return None, n
            return self._live, self._live_count
        mask = self._live.clone()
        if filter is not None:
            if not isinstance(filter, dict):
                raise InvalidType(f"filter must be a dict, got {type(filter).__name__}")
            keep = torch.zeros_like(mask)
            keep[torch.from_numpy(self._docstore.filter_pids(filter, n, gen)).to(mask.device)] = True
            mask &= keep
        if ids is not None:
            ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
            keep = torch.zeros_like(mask)
            found = list(self._docstore.pids_of(ids, n, gen).values())
            keep[torch.tensor(found, dtype=torch.long, device=mask.device)] = True
            mask &= keep
        return mask, int(mask.sum())

    # ================================================================ updates
    def _begin_write(self) -> dict:
        meta = storage.read_metadata(self.path)
        DocStore(self.path / meta["docstore"]).rollback_uncommitted(meta["counts"]["documents"], meta["generation"])
        return meta

    def _commit(self, meta: dict) -> None:
        meta["provenance"]["updated"] = _now()
        storage.write_metadata(self.path, meta)
        storage.collect_garbage(self.path, storage.referenced_files(meta))
        self._load()

    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None, metadatas: Optional[Sequence[dict]] = None,
            *, batch_size: int = 32, show_progress: bool = False) -> list[str]:
        """Encode and append documents (existing centroids). Atomic. Returns their ids (uuid4 hex when not given).
        Ids must not collide with live documents."""
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [uuid.uuid4().hex for _ in texts]
        metadatas = _validate.metadata_list(metadatas, len(texts))
        with storage.write_lock(self.path):
            meta = self._begin_write()
            n, gen = meta["counts"]["documents"], meta["generation"]
            ds = DocStore(self.path / meta["docstore"])
            try:
                clash = ds.pids_of(ids, n, gen)
                if clash:
                    raise InvalidArgument(f"ids already in the index: {sorted(clash)[:10]}")
                codec = self._arrays.codec
                writer = SegmentWriter(self.path, codec)
                try:
                    encode_and_compress(self.model, codec, texts, writer, None, batch_size, 4096, show_progress,
                                        StageTimes(), desc="adding")
                    seg = writer.finish()
                except BaseException:
                    writer.abort()
                    raise
                ds.insert(n, ids, texts, metadatas)
            finally:
                ds.close()
            meta["segments"] = meta["segments"] + [seg]
            meta["ivf"] = self._write_ivf(self.path, meta["segments"], codec.num_centroids)
            meta["generation"] = gen + 1
            c = meta["counts"]
            c["documents"] += len(texts)
            c["live"] += len(texts)
            c["embeddings"] += seg["num_embeddings"]
            meta["codec"].setdefault("embeddings_added", 0)
            meta["codec"]["embeddings_added"] += seg["num_embeddings"]
            self._commit(meta)
        return ids

    def delete(self, ids: Union[str, Sequence[str]]) -> int:
        """Delete documents by id (unknown ids are ignored). Atomic; gone from results at once. Returns the count."""
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        with storage.write_lock(self.path):
            meta = self._begin_write()
            n, gen = meta["counts"]["documents"], meta["generation"]
            ds = DocStore(self.path / meta["docstore"])
            try:
                pids = np.array(sorted(ds.pids_of(ids, n, gen).values()), dtype=np.int64)
                if len(pids) == 0:
                    return 0
                ds.mark_deleted(pids, gen + 1)
            finally:
                ds.close()
            meta["generation"] = gen + 1
            meta["counts"]["deleted"] += len(pids)
            meta["counts"]["live"] -= len(pids)
            self._commit(meta)
        return len(pids)

    def compact(self, *, recluster: Optional[bool] = None, show_progress: bool = False) -> None:
        """Rewrite the index without deleted documents, in one segment. ``recluster=None`` re-trains the centroids
        (from the decompressed embeddings) when more than ``RECLUSTER_RATIO`` of the embeddings were added after
        the centroids were trained; True/False forces it. Atomic."""
        with storage.write_lock(self.path):
            meta = self._begin_write()
            self._load()
            arrays, n, gen = self._arrays, meta["counts"]["documents"], meta["generation"]
            offsets = arrays.doc_offsets.cpu()
            live = self._live.nonzero().flatten().cpu()
            c = meta["codec"]
            if recluster is None:
                recluster = c.get("embeddings_added", 0) > RECLUSTER_RATIO * max(1, c["embeddings_at_training"])
            codec = arrays.codec
            if recluster and len(live):
                idx, _ = gather_rows(offsets, live)
                sample = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
                sample = sample[: CodecConfig.from_dict(c["config"]).kmeans_sample_tokens]
                embs = codec.decompress(arrays.codes[sample], arrays.residuals[sample])
                codec = ResidualCodec.fit(embs, CodecConfig.from_dict(c["config"]), int(idx.numel()))
            writer = SegmentWriter(self.path, codec)
            try:
                for s in range(0, live.numel(), 8192):
                    idx, sub = gather_rows(offsets, live[s : s + 8192])
                    codes, residuals = arrays.codes[idx], arrays.residuals[idx]
                    if recluster:  # re-compress the decompressed embeddings against the new centroids
                        codes, residuals = codec.compress(arrays.codec.decompress(codes, residuals))
                    writer.append(codes, residuals, sub[1:] - sub[:-1])
                seg = writer.finish()
            except BaseException:
                writer.abort()
                raise
            docstore_name = f"docs-{uuid.uuid4().hex[:12]}.sqlite"
            new_ds = DocStore(self.path / docstore_name, create=True)
            try:
                pid = 0
                for rows in self._docstore.iter_visible(n, gen):
                    new_ds.insert(pid, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
                    pid += len(rows)
            finally:
                new_ds.close()
            if recluster:
                c["files"] = self._write_codec(self.path, codec)
                c["num_centroids"], c["avg_residual"] = codec.num_centroids, codec.avg_residual
                c["embeddings_at_training"] = seg["num_embeddings"]
                c["embeddings_added"] = 0
            meta["segments"] = [seg]
            meta["ivf"] = self._write_ivf(self.path, [seg], codec.num_centroids)
            meta["docstore"] = docstore_name
            meta["generation"] = gen + 1
            meta["counts"] = {"documents": seg["num_docs"], "deleted": 0, "live": seg["num_docs"],
                              "embeddings": seg["num_embeddings"]}
            self._commit(meta)
