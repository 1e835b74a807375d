"""File operations on an index folder: atomic writes, checksummed arrays, the writer lock, ownership and cleanup.

* ``metadata.json`` is the commit point (its contents belong to ``layout.IndexMeta``). Writers write new files
  (temporary name, fsync, rename), then replace ``metadata.json`` atomically, then delete the files of ours that no
  committed generation names. Files that are not ours (``layout.is_own_file``) are never touched.
* Arrays are ``.npy`` files opened with ``mmap_mode="r"``, each with a crc32 recorded in the metadata.
* A writer holds ``.lock`` (``fcntl.flock``) for the whole update; others wait up to a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import IndexFormatError, IndexLockedError, IndexNotFoundError, InvalidArgument
from . import layout
from .layout import METADATA, IndexMeta


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "xb") as f:  # a new file: never through a link
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Crc32Writer:
    """A file object wrapper that keeps the crc32 of what passes through it."""

    def __init__(self, f):
        self.f, self.crc = f, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.f.write(data)


def crc_hex(crc: int) -> str:
    return f"{crc & 0xFFFFFFFF:08x}"


def save_array(folder: Path, name: str, array: np.ndarray) -> str:
    """Write ``array`` as ``folder/name`` (.npy) atomically (fsynced); returns its crc32 (hex)."""
    path = Path(folder) / name
    tmp = _tmp_name(path)
    with open(tmp, "xb") as f:
        w = Crc32Writer(f)
        np.lib.format.write_array(w, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return crc_hex(w.crc)


def file_crc(path: Path, block: int = 1 << 20) -> str:
    crc = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                return crc_hex(crc)
            crc = zlib.crc32(data, crc)


def load_array(folder: Path, name: str, shape: Optional[tuple] = None, dtype=None, mmap: bool = True,
               checksum: Optional[str] = None) -> np.ndarray:
    """Open ``folder/name`` memory-mapped and check what the metadata says of it: shape (``None`` entries are
    free), dtype, and crc32 (when given). A missing, truncated, mis-shaped or altered file raises a clear error
    naming it."""
    path = Path(folder) / name
    if path.is_symlink():
        raise IndexFormatError(f"index file {path} is a symbolic link; an index folder holds its own files")
    if not path.is_file():
        raise IndexNotFoundError(f"index file {path} is missing")
    if checksum is not None:
        found = file_crc(path)
        if found != checksum:
            raise IndexFormatError(f"index file {path} is corrupt: its crc32 is {found}, metadata.json says "
                                   f"{checksum}")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"index file {path} is corrupt or truncated: {e}") from None
    if arr.ndim > 1 and not arr.flags.c_contiguous:  # the kernels read rows in order (numpy's fortran_order)
        raise IndexFormatError(f"index file {path} stores its array in Fortran order; index files are C order")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise IndexFormatError(f"index file {path} holds {arr.dtype}; expected {np.dtype(dtype)}")
    if shape is not None:
        if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
            want = tuple("n" if s is None else s for s in shape)
            raise IndexFormatError(f"index file {path} has shape {arr.shape}; metadata.json implies {want}")
    return arr


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a read-only memory map (never written to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


# ====================================================================== metadata
def read_metadata(folder: Path) -> IndexMeta:
    return layout.read_metadata_file(folder)


def write_metadata(folder: Path, meta: IndexMeta) -> None:
    """The commit point of every write."""
    atomic_write_bytes(Path(folder) / METADATA, meta.to_json())


def holds_our_index(folder: Path) -> bool:
    """True if ``folder/metadata.json`` says it is a colbert-retriever index (even a corrupt one)."""
    import json

    try:
        d = json.loads((Path(folder) / METADATA).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("format") == layout.FORMAT_NAME


def check_ownership(folder: Path) -> None:
    """Refuse to write into a folder that holds files of someone else and no index of ours."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise InvalidArgument(f"{folder} is a symbolic link to {os.readlink(folder)!r}, which does not exist; give "
                              f"a folder (or a link to one)")
    if folder.exists() and not folder.is_dir():
        raise InvalidArgument(f"{folder} exists and is not a folder")
    if not folder.exists() or holds_our_index(folder):
        return
    if (folder / METADATA).exists():
        raise InvalidArgument(f"refusing to write an index into {folder}: its {METADATA} is not a colbert-retriever "
                              f"index; choose a new or empty folder")
    foreign = sorted(p.name for p in folder.iterdir() if not layout.is_own_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InvalidArgument(f"refusing to build an index in {folder}: the folder is not empty ({shown}) and "
                              f"holds no colbert-retriever index; choose a new or empty folder")


def collect_garbage(folder: Path, keep: set[str]) -> list[str]:
    """Delete our own files that ``keep`` does not name: older generations' files and killed writers'
    temporaries. Call only while holding the writer lock. Files that are not ours are never touched. Open
    readers keep their memory maps (POSIX unlink semantics). Returns the names removed."""
    keep = keep | {METADATA, layout.LOCK}
    # SQLite side files live as long as their database does
    keep |= {f"{n}{s}" for n in list(keep) if n.endswith(".sqlite") for s in ("-wal", "-shm", "-journal")}
    removed = []
    for p in Path(folder).iterdir():
        if p.name not in keep and layout.is_own_file(p.name) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed


@contextlib.contextmanager
def write_lock(folder: Path, timeout_s: float = 0.0):
    """Exclusive writer lock on ``folder/.lock``. Waits up to ``timeout_s`` seconds for another writer (process
    or thread) to finish, then raises ``IndexLockedError``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / layout.LOCK
    if lock.is_symlink():
        raise IndexLockedError(f"{lock} is a symbolic link; refusing to follow it (the writer lock is a file of the "
                               f"index folder)")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise IndexLockedError(f"cannot take the writer lock of {folder}: {e.strerror} (a read-only folder?)") from None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexLockedError(f"another writer holds the index at {folder} (waited {timeout_s:g} s; "
                                           f"pass a larger lock_timeout to wait longer)") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
