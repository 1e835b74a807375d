"""The sharded index's folder: ``shards.json`` (the manifest, the commit point), the shared codec, the shards.

Layout (a folder every worker and reader sees: local disk on one machine, a shared filesystem on a cluster)::

    root/shards.json         the manifest: its generation, the model, the codec, the routing rule, each shard's
                             committed generation and documents; replaced atomically by every write
    root/build.json          a build in progress (resumable); gone once the manifest is written
    root/codec.*.npy         the codec every shard shares (centroids trained once for the whole collection)
    root/shard-00000/ ...    ordinary index folders (the ``Index`` format), one per shard
    root/.lock               the writers' lock

A reader takes one manifest generation per call and checks that every shard answered from the generation the
manifest names for it (``ShardedIndex``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..codec.residual import ResidualCodec
from ..config import CodecConfig, EncoderConfig
from ..errors import IncompatibleModelError, IndexFormatError, IndexNotFoundError, InvalidArgument
from ..indexing.external import EmbeddingsOnly
from ..model.cache import load_model
from ..store import storage
from .routing import ROUTING, shard_name

MANIFEST = "shards.json"
BUILD_STATE = "build.json"
FORMAT = "colbert-retriever-sharded"
FORMAT_VERSION = 2
LOCK = ".lock"
CODEC_FILES = {part: f"codec.{part}.npy" for part in ("centroids", "bucket_cutoffs", "bucket_weights")}
_OWN = re.compile(r"^(shards\.json|build\.json|\.lock|codec\.[a-z_]+\.npy|shard-\d{5}|\..+\.[0-9a-f]{8}\.tmp)$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard as the manifest records it: its folder name, committed generation (0: not created yet, no
    document routed to it so far) and live documents."""

    name: str
    generation: int = 0
    documents: int = 0


@dataclasses.dataclass(frozen=True)
class Manifest:
    generation: int
    model: dict  # name, identity, encoder_config, precision, kind ("embeddings" when no model made them)
    codec: dict  # nbits, num_centroids, avg_residual, config, checksums
    shards: tuple
    lexical: bool = False
    provenance: dict = dataclasses.field(default_factory=dict)
    routing: str = ROUTING

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def generations(self) -> dict[str, int]:
        return {s.name: s.generation for s in self.shards}

    def advanced(self, updates: dict[str, tuple[int, int]], **changes) -> "Manifest":
        """The next generation, with ``updates``: shard name -> (generation, documents)."""
        shards = tuple(Shard(s.name, *updates[s.name]) if s.name in updates else s for s in self.shards)
        return dataclasses.replace(self, generation=self.generation + 1, shards=shards, **changes)

    def to_json(self) -> bytes:
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": self.generation,
             "routing": self.routing, "model": self.model, "codec": self.codec, "lexical": self.lexical,
             "shards": [dataclasses.asdict(s) for s in self.shards],
             "counts": {"documents": self.documents}, "provenance": self.provenance}
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes, where: str) -> "Manifest":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise IndexFormatError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IndexFormatError(f"{where} is not the manifest of a sharded colbert-retriever index")
        if d.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{where} has format_version {d.get('format_version')!r}; this library reads "
                                   f"{FORMAT_VERSION} (version 1 placed documents by position: rebuild it with "
                                   f"build_sharded)")
        if d.get("routing") != ROUTING:
            raise IndexFormatError(f"{where} routes documents by {d.get('routing')!r}; this library knows {ROUTING}")
        try:
            shards = tuple(Shard(str(s["name"]), int(s["generation"]), int(s["documents"])) for s in d["shards"])
            if [s.name for s in shards] != [shard_name(i) for i in range(len(shards))] or not shards:
                raise ValueError(f"shards must be named {shard_name(0)}, {shard_name(1)}, ... in order")
            return cls(int(d["generation"]), dict(d["model"]), dict(d["codec"]), shards, bool(d.get("lexical")),
                       dict(d.get("provenance") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{where} is malformed: {e}") from None


def read(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise IndexNotFoundError(f"no sharded index at {root}: {MANIFEST} is missing") from None
    return Manifest.from_json(text, str(path))


def stamp(root: Path) -> Optional[tuple]:
    """Identifies the manifest file's version (a writer's atomic replace gives a new inode)."""
    try:
        st = (Path(root) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write(root: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (the commit point of every sharded write)."""
    storage.atomic_write_bytes(Path(root) / MANIFEST, manifest.to_json())


def check_root(root: Path) -> None:
    """Refuse a folder that holds anything but a sharded index of ours (nothing in it is touched)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InvalidArgument(f"{root} exists and is not a folder")
    if not root.exists():
        return
    foreign = sorted(p.name for p in root.iterdir() if not _OWN.match(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InvalidArgument(f"refusing to build a sharded index in {root}: it holds files that are not ours "
                              f"({shown}); choose a new or empty folder")
    for p in root.iterdir():
        if p.name.startswith("shard-") and p.exists() and not storage.holds_our_index(p) and any(p.iterdir()):
            raise InvalidArgument(f"refusing to build a sharded index in {root}: {p.name} is not an index of ours")


# ---------------------------------------------------------------- the shared codec
def save_codec(root: Path, codec: ResidualCodec, config: CodecConfig) -> dict:
    """Write the codec's arrays into ``root``; returns the manifest's codec entry."""
    sums = {CODEC_FILES[part]: storage.save_array(root, CODEC_FILES[part], arr)
            for part, arr in codec.arrays().items()}
    return {"nbits": codec.nbits, "num_centroids": codec.num_centroids, "avg_residual": codec.avg_residual,
            "dim": codec.dim, "config": config.to_dict(), "checksums": sums}


def load_codec(root: Path, entry: dict) -> ResidualCodec:
    K, dim, nbits = int(entry["num_centroids"]), int(entry["dim"]), int(entry["nbits"])
    shapes = {"centroids": ((K, dim), np.float16), "bucket_cutoffs": (((1 << nbits) - 1,), np.float32),
              "bucket_weights": ((1 << nbits,), np.float32)}
    arrays = {part: storage.load_array(root, CODEC_FILES[part], shape, dtype, mmap=False,
                                       checksum=entry["checksums"].get(CODEC_FILES[part]))
              for part, (shape, dtype) in shapes.items()}
    return ResidualCodec.from_arrays(arrays, nbits, float(entry["avg_residual"]))


def codec_config(entry: dict) -> CodecConfig:
    return CodecConfig.from_dict(entry["config"])


# ---------------------------------------------------------------- the model, without its weights
def model_entry(model: Any) -> dict:
    """What the manifest records of the model (as each shard's metadata does)."""
    entry = {"name": model.name, "identity": model.identity, "encoder_config": model.config.to_dict(),
             "precision": model.precision.to_dict()}
    if isinstance(model, EmbeddingsOnly):
        entry["kind"] = "embeddings"
    return entry


class RecordedModel:
    """A model as an index records it (name, weights hash, encoder config, precision) without its weights: what
    a shard's writer needs to write embeddings encoded elsewhere."""

    def __init__(self, entry: dict):
        from ..device import Precision

        self.name, self.identity = entry["name"], entry["identity"]
        self.config = EncoderConfig.from_dict(entry["encoder_config"])
        self.precision = Precision.from_dict(entry.get("precision") or {})
        self.device = None

    def reader(self) -> EmbeddingsOnly:
        """A stand-in that opens and searches a shard (queries come encoded from the driver): the recorded
        identity and encoder config, no weights."""
        stub = EmbeddingsOnly(self.config.dim, self.name, self.identity)
        stub.config = self.config
        stub.precision = self.precision
        return stub

    def writer(self):
        """What ``writer.build`` records for this model (an ``EmbeddingsOnly`` when no model made the
        embeddings)."""
        return self if self.identity != "external" else EmbeddingsOnly(self.config.dim, self.name)


def driver_model(root: Path, entry: dict, model):
    """The driver's query encoder: the manifest's model through ``load_model`` (or the one given, which must be
    the same weights); an embeddings-only stand-in when no model made the embeddings."""
    config = EncoderConfig.from_dict(entry["encoder_config"])
    if model is None and entry.get("kind") == "embeddings":
        stub = EmbeddingsOnly(config.dim, entry["name"], entry["identity"])
        stub.config = config
        return stub
    recorded = (entry.get("precision") or {}).get("documents", "auto")
    try:
        loaded = load_model(entry["name"] if model is None else model, dtype=recorded)
    except Exception as e:
        raise IncompatibleModelError(f"the sharded index at {root} was built with model {entry['name']!r}, which "
                                     f"cannot be loaded here ({e}); pass model=<the checkpoint folder>") from None
    if loaded.identity != entry["identity"]:
        raise IncompatibleModelError(f"the sharded index at {root} was built with model {entry['name']!r} (weights "
                                     f"{entry['identity']}); the model given is {loaded.name!r} (weights "
                                     f"{loaded.identity})")
    return loaded if loaded.config == config else loaded.with_config(config)
