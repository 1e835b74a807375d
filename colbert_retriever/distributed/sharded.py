"""Beyond one machine: distributed index build and sharded search on Ray (extra ``[distributed]``).

Single-machine users never import this module (nor Ray). Layout of a sharded index (a folder all workers see:
local disk in tests, a shared filesystem in production)::

    root/shards.json        manifest, written last and atomically, only when every shard is complete
    root/shard-00000/       an ordinary index folder (same format as Index), one per shard
    root/shard-00001/ ...

Every shard uses the same codec (centroids trained once on a sample by the driver), so MaxSim scores from
different shards are comparable and the exact top-k merge equals a single index's ranking. Object stores would
plug in by syncing a finished shard folder up (and down before ``ShardedIndex.open``); the manifest stays the
commit point.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .. import _validate
from ..codec.residual import ResidualCodec
from ..config import CodecConfig, SearchConfig
from ..errors import ColbertRetrieverError, IndexFormatError, IndexNotFoundError
from ..hits import Hit
from ..index import Index
from ..indexing.builder import StageTimes, train_codec
from ..model.encoder import ColBERT
from ..store import storage

logger = logging.getLogger(__name__)

MANIFEST = "shards.json"
FORMAT = "colbert-retriever-sharded"


class ShardError(ColbertRetrieverError, RuntimeError):
    """A shard could not be built or searched (its name is in the message)."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("distributed indexing needs Ray: pip install 'colbert-retriever[distributed]'") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    return ray


def _load_model(model_name: str, dtype: str, threads: Optional[int]):
    if threads:
        torch.set_num_threads(threads)
    return ColBERT.from_pretrained(model_name, dtype=dtype)


class _ShardBuilder:
    """Ray actor: holds the model once and builds shards with a shared codec."""

    def __init__(self, model_name: str, dtype: str, threads: Optional[int] = None):
        self.model = _load_model(model_name, dtype, threads)

    def build(self, path: str, texts, ids, metadatas, codec_arrays: dict, nbits: int, avg_residual: float) -> dict:
        codec = ResidualCodec.from_arrays(codec_arrays, nbits, avg_residual)
        index = Index.build(path, texts, ids=ids, metadatas=metadatas, model=self.model, nbits=nbits, codec=codec,
                            show_progress=False, overwrite=True)
        meta = index.metadata
        index.close()
        return {"documents": meta["counts"]["documents"], "embeddings": meta["counts"]["embeddings"]}


class _ShardSearcher:
    """Ray actor: serves one shard."""

    def __init__(self, path: str, model_name: str, dtype: str, threads: Optional[int] = None):
        self.index = Index.open(path, model=_load_model(model_name, dtype, threads))

    def search(self, Q, k, filter, ids, config):
        hits = self.index.search_embeddings(Q, k, filter=filter, ids=ids, config=config)
        return [[(h.id, h.score, h.text, h.metadata) for h in hs] for hs in hits]

    def add(self, texts, ids, metadatas):
        return self.index.add(texts, ids=ids, metadatas=metadatas)

    def delete(self, ids):
        return self.index.delete(ids)

    def count(self):
        return len(self.index)

    def ping(self):
        return True


def build_sharded(path: Union[str, Path], texts: Sequence[str], ids: Optional[Sequence[str]] = None,
                  metadatas: Optional[Sequence[dict]] = None, *, model: str = "default", num_shards: int = 2,
                  num_workers: int = 2, nbits: int = 2, dtype: str = "auto", threads_per_worker: Optional[int] = 1,
                  codec_config: Optional[CodecConfig] = None, max_retries: int = 2) -> Path:
    """Build a sharded index with Ray workers. ``model`` is a name or folder every worker can load.

    The driver trains the codec on a sample; shards (contiguous slices of the collection) are encoded and
    compressed by ``num_workers`` actors, each holding the model once. A worker that dies is restarted and its shard
    retried up to ``max_retries`` times; the manifest is written only when every shard is complete."""
    ray = _ray()
    texts = _validate.texts_list(texts, "texts")
    ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
    metadatas = _validate.metadata_list(metadatas, len(texts))
    num_shards = max(1, min(_validate.positive_int(num_shards, "num_shards"), len(texts)))
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    codec_config = (codec_config or CodecConfig()).replace(nbits=nbits)
    t0 = time.perf_counter()
    driver_model = ColBERT.from_pretrained(model, dtype=dtype)
    # the policy resolved once, on the driver: every worker encodes with it, never with its own CPU's guess
    precision = driver_model.precision.to_dict()
    dtype = precision["documents"]
    codec, cache, _ = train_codec(driver_model, texts, codec_config, 32, False, StageTimes())
    del cache
    arrays = codec.arrays()
    t_codec = time.perf_counter() - t0
    Builder = ray.remote(max_restarts=max_retries, max_task_retries=max_retries)(_ShardBuilder)
    workers = [Builder.remote(model, dtype, threads_per_worker) for _ in range(min(num_workers, num_shards))]
    bounds = [round(i * len(texts) / num_shards) for i in range(num_shards + 1)]
    names = [f"shard-{i:05d}" for i in range(num_shards)]
    futures = []
    for i, name in enumerate(names):
        lo, hi = bounds[i], bounds[i + 1]
        w = workers[i % len(workers)]
        futures.append(w.build.remote(str(root / name), texts[lo:hi], ids[lo:hi], metadatas[lo:hi], arrays,
                                      nbits, codec.avg_residual))
    shards = []
    for name, fut in zip(names, futures):
        try:
            shards.append({"name": name, **ray.get(fut)})
        except Exception as e:
            raise ShardError(f"building {name} failed after {max_retries} retries: {e}") from None
    for w in workers:
        ray.kill(w)
    manifest = {"format": FORMAT, "format_version": 1, "model": {"name": model, "identity": driver_model.identity,
                                                                  "dtype": dtype, "precision": precision},
                "codec": {"nbits": nbits, "num_centroids": codec.num_centroids}, "shards": shards,
                "counts": {"documents": len(texts)}, "provenance": {"build_seconds": round(time.perf_counter() - t0, 2),
                                                                    "codec_seconds": round(t_codec, 2),
                                                                    "workers": len(workers)}}
    storage.atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=1).encode())
    return root


class ShardedIndex:
    """Search a sharded index with one Ray actor per shard; same ``search`` signature as ``Index``."""

    def __init__(self, root: Path, manifest: dict, model: ColBERT, threads_per_shard: Optional[int]):
        self.root, self.manifest, self.model = root, manifest, model
        self._threads = threads_per_shard
        self._actors = {s["name"]: self._start(s["name"]) for s in manifest["shards"]}

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[ColBERT] = None,
             threads_per_shard: Optional[int] = 1) -> "ShardedIndex":
        root = Path(path)
        mpath = root / MANIFEST if root.is_dir() else root
        if not mpath.exists():
            raise IndexNotFoundError(f"no sharded index at {path}: {MANIFEST} is missing")
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") != FORMAT:
            raise IndexFormatError(f"{mpath} is not a sharded colbert-retriever index")
        m = manifest["model"]
        model = model or ColBERT.from_pretrained(m["name"], dtype=m.get("dtype", "auto"))
        return cls(mpath.parent, manifest, model, threads_per_shard)

    def _start(self, name: str):
        ray = _ray()
        Searcher = ray.remote(_ShardSearcher)
        m = self.manifest["model"]
        actor = Searcher.remote(str(self.root / name), m["name"], m.get("dtype", "auto"), self._threads)
        return actor

    def _call(self, name: str, method: str, *args):
        """Call a shard; a dead actor is restarted once, then the error names the shard."""
        ray = _ray()
        for attempt in (0, 1):
            try:
                return ray.get(getattr(self._actors[name], method).remote(*args))
            except ray.exceptions.RayActorError as e:
                if attempt:
                    raise ShardError(f"shard {name} is unavailable: {e}") from None
                logger.warning("shard %s actor died; restarting it", name)
                self._actors[name] = self._start(name)

    def _fanout(self, method: str, *args) -> dict:
        ray = _ray()
        futures = {n: getattr(a, method).remote(*args) for n, a in self._actors.items()}
        out = {}
        for name, fut in futures.items():
            try:
                out[name] = ray.get(fut)
            except ray.exceptions.RayActorError:
                out[name] = self._call(name, method, *args)
        return out

    def search(self, queries: Union[str, Sequence[str]], k: int = 10, *, filter: Optional[dict] = None,
               ids: Optional[Sequence[str]] = None, ncells: Optional[int] = None,
               centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None,
               exhaustive: bool = False):
        single = isinstance(queries, str)
        qs = _validate.texts_list(queries, "query" if single else "queries")
        k = _validate.positive_int(k, "k")
        Q = self.model.encode_queries(qs).cpu()
        cfg = SearchConfig(ncells, centroid_score_threshold, ndocs, bool(exhaustive))
        per_shard = self._fanout("search", Q, k, filter, ids, cfg)
        results = []
        for qi in range(len(qs)):
            merged = sorted((h for hs in per_shard.values() for h in hs[qi]), key=lambda h: -h[1])[:k]
            results.append([Hit(id=i, score=s, rank=r + 1, text=t, metadata=m)
                            for r, (i, s, t, m) in enumerate(merged)])
        return results[0] if single else results

    def add(self, texts, ids=None, metadatas=None) -> list[str]:
        """Add to the newest shard."""
        return self._call(self.manifest["shards"][-1]["name"], "add", texts, ids, metadatas)

    def delete(self, ids) -> int:
        """Delete by id: every shard drops the ids it holds."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        return sum(self._fanout("delete", ids).values())

    def __len__(self) -> int:
        return sum(self._fanout("count").values())

    def close(self) -> None:
        ray = _ray()
        for a in self._actors.values():
            ray.kill(a)
        self._actors = {}
