"""File operations on an index folder: atomic writes, checksummed arrays, the writer lock, ownership and cleanup.

* ``metadata.json`` is the commit point (its contents belong to ``layout.IndexMeta``). Writers write new files
  (temporary name, fsync, rename), then replace ``metadata.json`` atomically, then delete the files of ours that no
  committed generation names. Files that are not ours (``layout.is_own_file``) are never touched.
* Arrays are ``.npy`` files opened with ``mmap_mode="r"``, each with a crc32 recorded in the metadata.
* Arrays are read through ``layout.open_regular`` (no links, no pipes or devices) and their declared shape and
  dtype are checked against the metadata and the file's size before anything is mapped or allocated.
* A writer holds ``.lock`` (``fcntl.flock``) for the whole update; others wait up to a timeout. After ``flock`` the
  locked file is checked to still be the one the path names (else the lock is taken again), and a writer checks
  that it still holds it before it commits (``WriteLock.check``): a lock file deleted under a running writer stops
  that writer with ``IndexLockedError`` instead of letting two writers commit.
* The operating system's failures during a write become the library's (``write_errors``): ``DiskFullError`` when
  the disk or quota is full, ``IndexWriteError`` otherwise; temporaries are removed on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import time
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import (ColbertRetrieverError, DiskFullError, IndexFormatError, IndexLockedError, IndexWriteError,
                      InvalidArgument)
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


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A new temporary file beside ``path`` (never opened through a link), flushed, fsynced and renamed over
    ``path`` when the block ends; removed if the block or the rename fails."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_file(path) as f:
        f.write(data)
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
    with _atomic_file(Path(folder) / name) as f:
        w = Crc32Writer(f)
        np.lib.format.write_array(w, np.ascontiguousarray(array), allow_pickle=False)
    return crc_hex(w.crc)


def _crc_of(fd: int, size: int, block: int = 1 << 20) -> str:
    crc, pos = 0, 0
    while pos < size:
        data = os.pread(fd, min(block, size - pos), pos)
        if not data:
            break
        crc = zlib.crc32(data, crc)
        pos += len(data)
    return crc_hex(crc)


def file_crc(path: Path) -> str:
    """crc32 (hex) of an index file (opened with ``layout.open_regular``)."""
    fd = layout.open_regular(Path(path))
    try:
        return _crc_of(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _read_header(f, path: Path):
    """(shape, fortran_order, dtype, data offset) of an open .npy file; a malformed header is an IndexFormatError."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise IndexFormatError(f"index file {path} is corrupt or truncated: {e}") from None
    return shape, fortran, dtype, f.tell()


def load_array(folder: Path, name: str, shape: Optional[tuple] = None, dtype=None, mmap: bool = True,
               checksum: Optional[str] = None) -> np.ndarray:
    """Open ``folder/name`` memory-mapped and check what the metadata says of it: shape (``None`` entries are
    free), dtype, and crc32 (when given). The file is opened with ``layout.open_regular`` (no link, pipe or device),
    and its header's shape and dtype are checked against the metadata and against the file's size before anything
    is mapped or read: a crafted header cannot make the library allocate more than the file holds. A missing,
    truncated, mis-shaped or altered file raises a clear error naming it."""
    path = Path(folder) / name
    fd = layout.open_regular(path)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(os.dup(fd), "rb") as f:
            found_shape, fortran, found_dtype, offset = _read_header(f, path)
        if found_dtype.hasobject:
            raise IndexFormatError(f"index file {path} holds Python objects; index arrays are plain numbers")
        if fortran:
            raise IndexFormatError(f"index file {path} is stored in Fortran order; this library writes C order")
        if dtype is not None and found_dtype != np.dtype(dtype):
            raise IndexFormatError(f"index file {path} holds {found_dtype}; expected {np.dtype(dtype)}")
        if shape is not None and (len(found_shape) != len(shape)
                                  or any(s is not None and a != s for a, s in zip(found_shape, shape))):
            want = tuple("n" if s is None else s for s in shape)
            raise IndexFormatError(f"index file {path} has shape {found_shape}; metadata.json implies {want}")
        nbytes = math.prod(found_shape) * found_dtype.itemsize  # Python ints: no overflow
        if size != offset + nbytes:
            raise IndexFormatError(f"index file {path} is corrupt: it is {size} bytes, but its header declares "
                                   f"{found_shape} {found_dtype} ({offset + nbytes} bytes): truncated or altered")
        if checksum is not None:
            found = _crc_of(fd, size)
            if found != checksum:
                raise IndexFormatError(f"index file {path} is corrupt: its crc32 is {found}, metadata.json says "
                                       f"{checksum}")
        if nbytes == 0:
            arr = np.empty(found_shape, dtype=found_dtype)
        elif mmap:
            with os.fdopen(os.dup(fd), "rb") as f:  # the map keeps its own descriptor
                arr = np.memmap(f, dtype=found_dtype, mode="r", offset=offset, shape=found_shape)
        else:
            arr = np.empty(found_shape, dtype=found_dtype)
            got = os.preadv(fd, [memoryview(arr).cast("B")], offset)
            if got != nbytes:
                raise IndexFormatError(f"index file {path} is truncated (read {got} of {nbytes} bytes)")
    finally:
        os.close(fd)
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
    data = meta.to_json()
    if len(data) > layout.METADATA_MAX_BYTES:
        raise InvalidArgument(f"{METADATA} would be {len(data)} bytes, over the {layout.METADATA_MAX_BYTES} the "
                              f"library reads back (is the provenance given that large?); nothing was committed")
    atomic_write_bytes(Path(folder) / METADATA, data)


def holds_our_index(folder: Path) -> bool:
    """True if ``folder/metadata.json`` says it is a colbert-retriever index (even a corrupt one)."""
    try:
        d = json.loads(layout.read_regular(Path(folder) / METADATA, layout.METADATA_MAX_BYTES))
    except (ColbertRetrieverError, OSError, ValueError, RecursionError):
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


class WriteLock:
    """The writer lock held on ``folder/.lock``: the (device, inode) of the file locked, to tell whether the path
    still names it (a lock file deleted or replaced while held no longer excludes other writers)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        st = os.fstat(fd)
        self.key = (st.st_dev, st.st_ino)

    def held(self) -> bool:
        """Whether ``.lock`` still names the file this writer locked."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.key

    def lost(self) -> IndexLockedError:
        return IndexLockedError(f"the writer lock {self.path} was deleted or replaced while this write ran, so another "
                                f"writer may hold the index now; this write stopped before committing (the index keeps "
                                f"its last committed generation)")

    def check(self) -> None:
        """Raise ``IndexLockedError`` when the lock was lost (call right before committing)."""
        if not self.held():
            raise self.lost()


@contextlib.contextmanager
def write_lock(folder: Path, timeout_s: float = 0.0):
    """Exclusive writer lock on ``folder/.lock``; yields a ``WriteLock``. Waits up to ``timeout_s`` seconds for
    another writer (process or thread) to finish, then raises ``IndexLockedError``. The lockfile pattern: open,
    ``flock``, then compare the locked file with what the path names now; when a writer deleted or replaced the file
    meanwhile, lock the new one instead."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / layout.LOCK
    deadline = time.monotonic() + timeout_s
    while True:
        if lock.is_symlink():
            raise IndexLockedError(f"{lock} is a symbolic link; refusing to follow it (the writer lock is a file of "
                                   f"the index folder)")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IndexLockedError(f"{lock} is a symbolic link; refusing to follow it") from None
            raise IndexLockedError(f"cannot take the writer lock of {folder}: {e.strerror} (a read-only folder?)"
                                   ) from None
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
            held = WriteLock(lock, fd)
        except BaseException:
            os.close(fd)
            raise
        if held.held():
            break
        os.close(fd)  # the file locked is no longer .lock (deleted or replaced meanwhile): lock what it names now
    try:
        yield held
    finally:
        os.close(fd)


def write_error(e: OSError, folder: Path) -> IndexWriteError:
    """The library's error for an operating-system failure while writing the index at ``folder``."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        out = DiskFullError(f"the disk is full: writing the index at {folder} failed{where}; the index keeps its last "
                            f"committed generation (free some space and retry)", folder)
    else:
        out = IndexWriteError(f"writing the index at {folder} failed: {e.strerror or e}{where}; the index keeps its "
                              f"last committed generation", folder)
    out.errno = e.errno
    return out


@contextlib.contextmanager
def write_errors(folder: Path, lock: Optional[WriteLock] = None):
    """Around a write: an ``OSError`` from any stage becomes ``write_error`` (``DiskFullError`` for a full disk), and
    any failure after the writer lost its lock (``WriteLock.held``) becomes that ``IndexLockedError``, whatever
    stage noticed it first. The library's own errors pass through."""
    try:
        yield
    except Exception as e:
        if lock is not None and not lock.held():
            raise lock.lost() from None
        if isinstance(e, OSError) and not isinstance(e, ColbertRetrieverError):
            raise write_error(e, Path(folder)) from None
        raise


def copy_file(src: Path, dst: Path) -> None:
    """Copy an index file (opened with ``layout.open_regular``) to a new file ``dst``, fsynced."""
    fd = layout.open_regular(Path(src))
    with os.fdopen(fd, "rb") as f, open(dst, "xb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
