"""The index folder on disk.

* ``metadata.json`` is the commit point: it names every file of the current generation. Writers write new files
  (temporary name, fsync, rename), then replace ``metadata.json`` atomically, then delete files no generation names.
* Arrays are ``.npy`` files opened with ``mmap_mode="r"``; the document store is SQLite.
* A writer holds ``.lock`` (``fcntl.flock``) for the whole update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .errors import IndexFormatError, IndexLockedError, IndexNotFoundError

FORMAT_NAME = "colbert-retriever-index"
FORMAT_VERSION = 1
METADATA = "metadata.json"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_array(folder: Path, name: str, array: np.ndarray) -> str:
    """Write ``array`` as ``folder/name`` (.npy) atomically; returns the name."""
    path = folder / name
    tmp = path.with_name(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return name


def load_array(folder: Path, name: str, shape0: Optional[int] = None, mmap: bool = True) -> np.ndarray:
    """Open ``folder/name`` memory-mapped; a missing, truncated or mis-sized file raises a clear error."""
    path = folder / name
    if not path.exists():
        raise IndexNotFoundError(f"index file {path} is missing")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"index file {path} is corrupt or truncated: {e}") from None
    if shape0 is not None and arr.shape[0] != shape0:
        raise IndexFormatError(f"index file {path} has {arr.shape[0]} rows; metadata.json says {shape0}")
    return arr


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a read-only memory map (never written to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def read_metadata(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / METADATA
    if not folder.is_dir():
        raise IndexNotFoundError(f"no index at {folder}: the folder does not exist")
    if not path.exists():
        raise IndexNotFoundError(f"no index at {folder}: {METADATA} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a colbert-retriever index (format={meta.get('format')!r})"
                               if isinstance(meta, dict) else f"{path} is not a colbert-retriever index")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{folder} has index format version {meta.get('format_version')}; this library reads version "
            f"{FORMAT_VERSION}. Rebuild the index or use a matching colbert-retriever version."
        )
    return meta


def write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    """The commit point of every write."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta}
    atomic_write_bytes(Path(folder) / METADATA, json.dumps(meta, indent=1, sort_keys=True).encode())


def referenced_files(meta: dict[str, Any]) -> set[str]:
    names = {METADATA, ".lock", meta["docstore"], meta["docstore"] + "-wal", meta["docstore"] + "-shm"}
    names |= set(meta["codec"]["files"].values())
    names |= set(meta["ivf"].values())
    for seg in meta["segments"]:
        names |= {f"{seg['name']}.{part}.npy" for part in ("codes", "residuals", "doclens")}
    return names


def collect_garbage(folder: Path, keep: set[str]) -> None:
    """Delete files of older generations. Open readers keep their memory maps (POSIX unlink semantics)."""
    for p in Path(folder).iterdir():
        if p.is_file() and p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def write_lock(folder: Path, timeout_s: float = 0.0):
    """Exclusive writer lock on ``folder/.lock``. Raises IndexLockedError if another writer holds it."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexLockedError(f"another process is writing the index at {folder}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
