"""The index folder's format, in one place: file names, the typed contents of ``metadata.json``, its validation,
the files a generation references, which files are ours, and the migration of older format versions.

Format version 2 (this library writes it):

* ``metadata.json`` — the commit point (``IndexMeta.to_json``).
* ``codec-<tag>.<part>.npy`` — centroids (K, dim) fp16, bucket_cutoffs, bucket_weights.
* ``seg-<id>.<part>.npy`` per segment, all immutable once written: ``codes`` (n_emb,) centroid ids in the smallest
  integer type, ``residuals`` (n_emb, dim*nbits/8) uint8, ``doclens`` (n_docs,) int32, ``invnorms`` (n_emb,) float32
  (1 / ||centroid + residual||, for compressed-domain exact scoring), and the segment's own inverted file
  ``ivfpids`` (segment-local pids, int32) + ``ivfoffsets`` (K + 1,) int64.
* ``docs-<id>.sqlite`` — the document store (ids, texts, metadata JSON, deletion generations).
* ``.lock`` — the writer lock.

Every file is the folder's own: the library opens each one without following a symbolic link and refuses anything
that is not a regular file (a named pipe, a device, a folder: ``open_regular``, checked on the open descriptor), and
reads no more than the metadata implies (an array's size follows from its shape; ``metadata.json`` is at most
``METADATA_MAX_BYTES``). File names match their patterns in full (``re.fullmatch``: a name with a trailing newline is
not ours).

Version 1 (colbert-retriever 0.1.0) had one inverted file for the whole index (``ivf-<tag>.{pids,offsets}.npy``) and
no stored inverse norms or checksums; it opens read-only-compatible (``IndexMeta.from_json`` migrates it in memory,
deriving the missing per-segment arrays at load) and is upgraded to version 2 by the first write.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import IndexFormatError, IndexNotFoundError

FORMAT_NAME = "colbert-retriever-index"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
METADATA = "metadata.json"
LOCK = ".lock"
METADATA_MAX_BYTES = 8 << 20
"""``metadata.json`` larger than this (8 MiB) is refused unread (ours hold a few hundred bytes per segment and an
index has O(log n) segments: well under 100 KB); a writer refuses to commit one larger (an oversized
``provenance``)."""

SEGMENT_PARTS = ("codes", "residuals", "doclens", "invnorms", "ivfpids", "ivfoffsets")
V1_SEGMENT_PARTS = ("codes", "residuals", "doclens")
CODEC_PARTS = ("centroids", "bucket_cutoffs", "bucket_weights")

_HEX = "[0-9a-f]"
_SEG = re.compile(rf"seg-{_HEX}{{12}}")
_CODEC_FILE = re.compile(rf"codec-{_HEX}{{8,12}}\.(centroids|bucket_cutoffs|bucket_weights)\.npy")
_DOCSTORE = re.compile(rf"docs-{_HEX}{{12}}\.sqlite")
_V1_IVF = re.compile(rf"ivf-{_HEX}{{8}}\.(pids|offsets)\.npy")
_OWN = re.compile(
    rf"(seg-{_HEX}{{12}}\.[a-z]+\.npy"  # segment arrays
    rf"|codec-{_HEX}{{8,12}}\.[a-z_]+\.npy"  # codec arrays
    rf"|ivf-{_HEX}{{8}}\.(pids|offsets)\.npy"  # v1 inverted file
    rf"|docs-{_HEX}{{12}}\.sqlite(-wal|-shm|-journal)?"  # document store and SQLite's side files
    rf"|\.seg-{_HEX}{{12}}\.[a-z]+\.(raw|npy\.tmp)"  # a segment being written
    rf"|\..+\.{_HEX}{{8}}\.tmp)"  # atomic_write / save_array temporaries of our own files
)
_TMP_TARGET = re.compile(rf"\.(.+)\.{_HEX}{{8}}\.tmp")


def is_own_file(name: str) -> bool:
    """True for a file name this library creates in an index folder (never a user's file)."""
    if name in (METADATA, LOCK):
        return True
    if not _OWN.fullmatch(name):
        return False
    tmp = _TMP_TARGET.fullmatch(name)
    return tmp is None or tmp.group(1) == METADATA or bool(_OWN.fullmatch(tmp.group(1)))


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex[:12]}"


def new_docstore_name() -> str:
    return f"docs-{uuid.uuid4().hex[:12]}.sqlite"


def new_codec_files() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    return {part: f"codec-{tag}.{part}.npy" for part in CODEC_PARTS}


def segment_file(segment: str, part: str) -> str:
    return f"{segment}.{part}.npy"


# ====================================================================== typed metadata
def _need(d: Any, key: str, kind, where: str):
    if not isinstance(d, dict) or key not in d:
        raise IndexFormatError(f"{METADATA}: {where} lacks the entry {key!r}")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise IndexFormatError(f"{METADATA}: {where}.{key} is {v!r}; expected an integer")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        raise IndexFormatError(f"{METADATA}: {where}.{key} is {v!r}; expected a finite number")
    if kind not in (int, float) and not isinstance(v, kind):
        raise IndexFormatError(f"{METADATA}: {where}.{key} is {type(v).__name__}; expected {kind.__name__}")
    if kind is int and v < 0:
        raise IndexFormatError(f"{METADATA}: {where}.{key} is {v}; expected >= 0")
    return v


@dataclass(frozen=True)
class SegmentMeta:
    """One immutable segment: documents ``[doc_base, doc_base + num_docs)`` of the index (bases are derived)."""

    name: str
    num_docs: int
    num_embeddings: int
    checksums: dict = field(default_factory=dict)  # file name -> crc32 (hex); empty for v1 segments
    legacy: bool = False  # a v1 segment: no invnorms/ivf files (derived at load)

    def files(self) -> dict[str, str]:
        parts = V1_SEGMENT_PARTS if self.legacy else SEGMENT_PARTS
        return {part: segment_file(self.name, part) for part in parts}

    @classmethod
    def parse(cls, d: Any, i: int, version: int) -> "SegmentMeta":
        where = f"segments[{i}]"
        name = _need(d, "name", str, where)
        if not _SEG.fullmatch(name):
            raise IndexFormatError(f"{METADATA}: {where}.name {name!r} is not a segment name of this library")
        sums = d.get("checksums", {}) if version >= 2 else {}
        if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
            raise IndexFormatError(f"{METADATA}: {where}.checksums is malformed")
        seg = cls(name, _need(d, "num_docs", int, where), _need(d, "num_embeddings", int, where), dict(sums),
                  legacy=version < 2)
        if version >= 2 and set(sums) != set(seg.files().values()):
            raise IndexFormatError(f"{METADATA}: {where}.checksums does not list exactly the segment's files")
        return seg

    def to_dict(self) -> dict:
        return {"name": self.name, "num_docs": self.num_docs, "num_embeddings": self.num_embeddings,
                "checksums": self.checksums}


@dataclass(frozen=True)
class CodecMeta:
    config: dict  # CodecConfig.to_dict()
    num_centroids: int
    avg_residual: float
    files: dict  # part -> file name
    checksums: dict
    embeddings_at_training: int
    embeddings_added: int = 0

    @property
    def nbits(self) -> int:
        return int(self.config["nbits"])

    @classmethod
    def parse(cls, d: Any, version: int) -> "CodecMeta":
        files = _need(d, "files", dict, "codec")
        for part in CODEC_PARTS:
            name = files.get(part)
            if not isinstance(name, str) or not _CODEC_FILE.fullmatch(name) or not name.endswith(f".{part}.npy"):
                raise IndexFormatError(f"{METADATA}: codec.files.{part} is {name!r}; not a codec file of this library")
        config = _need(d, "config", dict, "codec")
        if config.get("nbits") not in (1, 2, 4):
            raise IndexFormatError(f"{METADATA}: codec.config.nbits is {config.get('nbits')!r}; expected 1, 2 or 4")
        k = _need(d, "num_centroids", int, "codec")
        if k < 1:
            raise IndexFormatError(f"{METADATA}: codec.num_centroids is {k}; expected >= 1")
        sums = d.get("checksums", {}) if version >= 2 else {}
        if not isinstance(sums, dict) or (version >= 2 and set(sums) != {files[p] for p in CODEC_PARTS}):
            raise IndexFormatError(f"{METADATA}: codec.checksums does not list exactly the codec's files")
        added = d.get("embeddings_added", 0)
        if isinstance(added, bool) or not isinstance(added, int) or added < 0:
            raise IndexFormatError(f"{METADATA}: codec.embeddings_added is {added!r}; expected an integer >= 0")
        return cls(dict(config), k, float(_need(d, "avg_residual", float, "codec")),
                   {p: files[p] for p in CODEC_PARTS}, dict(sums),
                   _need(d, "embeddings_at_training", int, "codec"), added)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Counts:
    documents: int  # rows ever committed in the current document store (pids 0..documents-1)
    deleted: int
    live: int
    embeddings: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IndexMeta:
    """The typed contents of ``metadata.json``. Immutable: writers derive the next generation with ``replace``."""

    generation: int
    library_version: str
    model: dict  # {"name", "identity", "encoder_config"}
    codec: CodecMeta
    segments: tuple  # of SegmentMeta, in pid order
    docstore: str
    counts: Counts
    provenance: dict
    format_version: int = FORMAT_VERSION
    legacy_ivf: Optional[dict] = None  # v1 only: {"pids": name, "offsets": name}
    pool_factor: int = 1  # documents' token embeddings pooled by this factor before compression (1: none)

    @property
    def is_legacy(self) -> bool:
        return self.format_version < FORMAT_VERSION

    # ---------------------------------------------------------------- files
    def referenced_files(self) -> set[str]:
        """Every file this generation needs (besides metadata.json and .lock)."""
        names = {self.docstore, *self.codec.files.values()}
        for seg in self.segments:
            names |= set(seg.files().values())
        if self.legacy_ivf:
            names |= set(self.legacy_ivf.values())
        return names

    # ---------------------------------------------------------------- json
    def to_dict(self) -> dict:
        d = {"format": FORMAT_NAME, "format_version": self.format_version, "generation": self.generation,
             "library_version": self.library_version, "model": self.model, "codec": self.codec.to_dict(),
             "segments": [s.to_dict() for s in self.segments], "docstore": self.docstore,
             "counts": self.counts.to_dict(), "provenance": self.provenance}
        if self.legacy_ivf:
            d["ivf"] = dict(self.legacy_ivf)
        d["pooling"] = pooling_entry(self.pool_factor)
        return json.loads(json.dumps(d))  # a deep copy

    def to_json(self) -> bytes:
        if self.is_legacy:
            raise IndexFormatError("refusing to write a format version 1 metadata.json; upgrade the index first")
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_json(cls, text: bytes | str, where: str = METADATA) -> "IndexMeta":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFormatError(f"{where} is not valid JSON: {e}") from None
        except RecursionError:
            raise IndexFormatError(f"{where} is nested too deeply to be an index's metadata") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{where} is not a colbert-retriever index (format="
                                   f"{d.get('format') if isinstance(d, dict) else None!r})")
        version = d.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise IndexFormatError(
                f"{where} has index format version {version!r}; this library reads versions "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Rebuild the index or use a matching colbert-retriever."
            )
        model = _need(d, "model", dict, "the top level")
        for key in ("name", "identity"):
            _need(model, key, str, "model")
        _need(model, "encoder_config", dict, "model")
        docstore = _need(d, "docstore", str, "the top level")
        if not _DOCSTORE.fullmatch(docstore):
            raise IndexFormatError(f"{where}: docstore {docstore!r} is not a document store name of this library")
        segs = _need(d, "segments", list, "the top level")
        segments = tuple(SegmentMeta.parse(s, i, version) for i, s in enumerate(segs))
        if len({s.name for s in segments}) != len(segments):
            raise IndexFormatError(f"{where}: a segment is listed twice")
        c = _need(d, "counts", dict, "the top level")
        counts = Counts(*(_need(c, k, int, "counts") for k in ("documents", "deleted", "live", "embeddings")))
        if counts.documents != sum(s.num_docs for s in segments):
            raise IndexFormatError(f"{where}: counts.documents is {counts.documents} but the segments hold "
                                   f"{sum(s.num_docs for s in segments)}")
        if counts.embeddings != sum(s.num_embeddings for s in segments):
            raise IndexFormatError(f"{where}: counts.embeddings is {counts.embeddings} but the segments hold "
                                   f"{sum(s.num_embeddings for s in segments)}")
        if counts.live + counts.deleted != counts.documents:
            raise IndexFormatError(f"{where}: counts.live + counts.deleted != counts.documents")
        legacy_ivf = None
        if version == 1:
            legacy_ivf = _need(d, "ivf", dict, "the top level")
            for part in ("pids", "offsets"):
                name = legacy_ivf.get(part)
                if not isinstance(name, str) or not _V1_IVF.fullmatch(name):
                    raise IndexFormatError(f"{where}: ivf.{part} is {name!r}; not an inverted-file name of this "
                                           f"library")
            legacy_ivf = {"pids": legacy_ivf["pids"], "offsets": legacy_ivf["offsets"]}
        prov = d.get("provenance", {})
        return cls(
            generation=_need(d, "generation", int, "the top level"),
            library_version=str(d.get("library_version", "unknown")),
            model=model, codec=CodecMeta.parse(d.get("codec"), version), segments=segments, docstore=docstore,
            counts=counts, provenance=prov if isinstance(prov, dict) else {}, format_version=version,
            legacy_ivf=legacy_ivf, pool_factor=parse_pooling(d.get("pooling"), where),
        )

    def upgraded(self, segments: tuple, codec_checksums: dict) -> "IndexMeta":
        """The v2 form of a v1 generation once its segments were rewritten with all v2 files."""
        return replace(self, segments=segments, codec=replace(self.codec, checksums=codec_checksums),
                       format_version=FORMAT_VERSION, legacy_ivf=None)


# ---------------------------------------------------------------- token pooling (indexing/pooling.py)
def pooling_entry(pool_factor: int) -> dict:
    """metadata.json's ``pooling``: the factor, and the method when documents are pooled."""
    return {"pool_factor": pool_factor, "method": "ward"} if pool_factor > 1 else {"pool_factor": 1}


def parse_pooling(d: Any, where: str) -> int:
    """The pool factor an index records (absent, as in indexes written before pooling existed: 1)."""
    if d is None:
        return 1
    factor = _need(d, "pool_factor", int, "pooling")
    if factor < 1 or (factor > 1 and d.get("method") != "ward"):
        raise IndexFormatError(f"{where}: pooling is {d!r}; expected pool_factor >= 1 (method 'ward' when > 1)")
    return factor


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words ("a named pipe (FIFO)", "a character device"...)."""
    return next((name for test, name in _KINDS if test(mode)), "something else")


def open_regular(path: Path, what: str = "index file") -> int:
    """Open ``path`` read-only the way the format allows: never through a symbolic link (``O_NOFOLLOW``), without
    blocking (opening a named pipe would wait for a writer forever), and only if the descriptor is a regular file
    (``fstat`` on what was opened: no check-then-open race). Returns the descriptor (the caller closes it). A missing
    file raises ``IndexNotFoundError``; a link, a pipe, a device or a folder ``IndexFormatError``, naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IndexNotFoundError(f"{what} {path} is missing") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IndexFormatError(f"{what} {path} is a symbolic link; an index folder holds its own files (refusing "
                                   f"to follow it)") from None
        raise IndexFormatError(f"{what} {path} cannot be opened: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise IndexFormatError(f"{what} {path} is {kind_of(mode)}, not a regular file; an index folder holds only "
                                   f"the files this library wrote")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int, what: str = "index file") -> bytes:
    """The bytes of ``path`` (opened with ``open_regular``), refused when larger than ``limit`` (checked before
    reading, and again while reading in case the file grows)."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise IndexFormatError(f"{what} {path} is {size} bytes; at most {limit} are read (not an index's file)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IndexFormatError(f"{what} {path} is larger than {limit} bytes (not an index's file)")
    return data


def read_metadata_file(folder: Path) -> IndexMeta:
    """The typed ``metadata.json`` of ``folder`` (a regular file of at most ``METADATA_MAX_BYTES``, not a link)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexNotFoundError(f"no index at {folder}: the folder does not exist")
    path = folder / METADATA
    try:
        data = read_regular(path, METADATA_MAX_BYTES, "index metadata")
    except IndexNotFoundError:
        raise IndexNotFoundError(f"no index at {folder}: {METADATA} is missing") from None
    return IndexMeta.from_json(data, str(path))
