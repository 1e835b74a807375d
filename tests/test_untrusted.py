"""An index folder is untrusted input: a crafted folder (pipes, links to devices, headers that declare huge arrays,
names with a trailing newline, SQL planted in the document store) gets the library's one-line error, never a hang,
a memory blow-up or planted code run; ``close()`` leaves no file of the folder open; a writer whose lock file was
deleted or replaced stops before committing."""

import fcntl
import json
import os
import sqlite3
import threading

import numpy as np
import pytest

from colbert_retriever import Index, IndexClosedError, IndexFormatError, IndexLockedError
from colbert_retriever.store import layout, storage


def within(seconds: float, fn, unblock=None):
    """Run ``fn`` in a thread; fail (after unblocking it with ``unblock``) if it has not returned in ``seconds``.
    Returns the exception it raised (None if none)."""
    out = {}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if unblock is not None:
            unblock()
        t.join(5)
        pytest.fail(f"{fn} still running after {seconds} s (a hang)")
    return out.get("error")


def unblock_fifo(path):
    """Open a FIFO for writing and close it: a reader blocked on it sees end of file."""
    def go():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
    return go


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg.strip(), msg
    return msg


def _segment(idx) -> str:
    return idx.metadata["segments"][0]["name"]


# ============================================================================ pipes, devices, huge files
def test_fifo_as_metadata_json_does_not_hang(built_index, tiny_model):
    meta = built_index.path / layout.METADATA
    meta.unlink()
    os.mkfifo(meta)
    err = within(10, lambda: Index.open(built_index.path, model=tiny_model), unblock_fifo(meta))
    assert isinstance(err, IndexFormatError) and "named pipe (FIFO)" in one_line(err), err
    # a folder whose metadata.json is a pipe is not ours: nothing is built there either
    err = within(10, lambda: Index.build(built_index.path, ["x y z"], model=tiny_model), unblock_fifo(meta))
    assert err is not None and "not a colbert-retriever index" in one_line(err), err


@pytest.mark.parametrize("which", ["array", "docstore", "wal"])
def test_fifo_as_an_array_or_the_document_store_does_not_hang(built_index, tiny_model, which):
    path = built_index.path
    store = built_index.metadata["docstore"]
    name = {"array": f"{_segment(built_index)}.codes.npy", "docstore": store, "wal": f"{store}-wal"}[which]
    built_index.close()
    (path / name).unlink(missing_ok=True)
    os.mkfifo(path / name)
    for verify in (False, "auto"):
        err = within(10, lambda: Index.open(path, model=tiny_model, verify=verify), unblock_fifo(path / name))
        assert isinstance(err, IndexFormatError) and name in one_line(err), err


def test_symlink_to_dev_zero_is_refused_unread(built_index, tiny_model):
    meta = built_index.path / layout.METADATA
    saved = meta.read_bytes()
    meta.unlink()
    meta.symlink_to("/dev/zero")
    err = within(10, lambda: Index.open(built_index.path, model=tiny_model))
    assert isinstance(err, IndexFormatError) and "symbolic link" in one_line(err), err
    meta.unlink()
    meta.write_bytes(saved)
    arr = built_index.path / f"{_segment(built_index)}.residuals.npy"
    arr.unlink()
    arr.symlink_to("/dev/zero")
    err = within(10, lambda: Index.open(built_index.path, model=tiny_model))
    assert isinstance(err, IndexFormatError) and "symbolic link" in one_line(err), err


def test_oversized_metadata_json_is_refused_before_reading(built_index, tiny_model):
    meta = built_index.path / layout.METADATA
    with open(meta, "r+b") as f:
        f.truncate(layout.METADATA_MAX_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(IndexFormatError, match=f"at most {layout.METADATA_MAX_BYTES} are read"):
        Index.open(built_index.path, model=tiny_model)


def _crafted_npy(path, shape, dtype, payload: bytes) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        f.write(payload)


@pytest.mark.parametrize("claim_in_metadata", [False, True])
def test_npy_header_declaring_512_gib_is_refused_before_allocating(built_index, tiny_model, claim_in_metadata):
    """The codec's centroids are read into memory (not mapped): a header declaring (2**33, 32) float16 with a
    matching crc32 used to allocate 512 GiB. Declared shapes are checked against the metadata and the file size
    first. With ``claim_in_metadata`` the metadata is edited to agree with the header too."""
    path = built_index.path
    meta = json.loads((path / layout.METADATA).read_text())
    name = meta["codec"]["files"]["centroids"]
    data = np.load(path / name)
    _crafted_npy(path / name, (2**33, data.shape[1]), data.dtype, data.tobytes())
    meta["codec"]["checksums"][name] = storage.file_crc(path / name)  # it "passes its checksum"
    if claim_in_metadata:
        meta["codec"]["num_centroids"] = 2**33
    (path / layout.METADATA).write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError) as e:
        Index.open(path, model=tiny_model)
    msg = one_line(e.value)
    assert name in msg
    assert ("header declares" in msg) if claim_in_metadata else ("metadata.json implies" in msg)


def test_fortran_order_and_object_arrays_are_refused(built_index, tiny_model):
    path = built_index.path
    seg = _segment(built_index)
    f = path / f"{seg}.doclens.npy"
    doclens = np.load(f)
    with open(f, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<i4", "fortran_order": True, "shape": doclens.shape})
        out.write(doclens.tobytes())
    with pytest.raises(IndexFormatError, match="Fortran order"):
        Index.open(path, model=tiny_model, verify=False)


@pytest.mark.parametrize("field", ["segment", "docstore"])
def test_names_with_a_trailing_newline_are_not_ours(built_index, tiny_model, field):
    path = built_index.path
    meta = json.loads((path / layout.METADATA).read_text())
    if field == "segment":
        meta["segments"][0]["name"] += "\n"
        needle = "is not a segment name of this library"
    else:
        meta["docstore"] += "\n"
        needle = "is not a document store name of this library"
    (path / layout.METADATA).write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=needle):
        Index.open(path, model=tiny_model)
    name = "docs-0123456789ab.sqlite"
    assert layout.is_own_file(name) and not layout.is_own_file(name + "\n")
    assert not layout.is_own_file(".metadata.json.0123abcd.tmp\n") and not layout.is_own_file("seg-0123456789ab\n")


def test_a_users_file_named_like_ours_with_a_newline_survives_every_write(built_index):
    odd = built_index.path / "docs-0123456789ab.sqlite\n"
    odd.write_text("the user's")
    built_index.add(["zebra quartz"], ids=["z"])
    built_index.compact()
    assert odd.read_text() == "the user's"


# ============================================================================ the document store runs only our SQL
@pytest.mark.parametrize("planted", [
    "CREATE TRIGGER planted AFTER INSERT ON docs BEGIN UPDATE docs SET text = 'planted'; END",
    "CREATE VIEW extra AS SELECT * FROM docs",
    "CREATE TABLE notes (x)",
    "CREATE INDEX by_text ON docs(text)",
])
def test_planted_sql_is_refused_on_open_and_on_write_and_texts_stay(built_index, tiny_model, planted):
    path = built_index.path
    store = path / built_index.metadata["docstore"]
    before = built_index.get(["d1", "d2"])
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute(planted)
    conn.close()
    with pytest.raises(IndexFormatError, match="holds SQL this library did not write") as e:
        built_index.add(["zebra quartz"], ids=["z"])  # the writer opens the store: refused before any SQL runs
    one_line(e.value)
    for verify in (False, "auto", True):
        with pytest.raises(IndexFormatError, match="holds SQL this library did not write"):
            Index.open(path, model=tiny_model, verify=verify)
    conn = sqlite3.connect(store)
    texts = dict(conn.execute("SELECT id, text FROM docs WHERE id IN ('d1', 'd2')").fetchall())
    assert conn.execute("SELECT count(*) FROM docs WHERE text = 'planted' OR id = 'z'").fetchone()[0] == 0
    conn.close()
    assert texts == {r.id: r.text for r in before}


def test_an_altered_lexical_view_is_refused(built_index, tiny_model):
    built_index.add_lexical()
    store = built_index.path / built_index.metadata["docstore"]
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("DROP VIEW lexical_0_rows")
    conn.execute("CREATE VIEW lexical_0_rows AS SELECT pid, 'planted' AS text FROM docs")
    conn.close()
    with pytest.raises(IndexFormatError, match="view 'lexical_0_rows' \\(altered\\)"):
        Index.open(built_index.path, model=tiny_model)


# ============================================================================ close() closes
def open_files_in(folder) -> list[str]:
    """The files under ``folder`` this process holds open: descriptors and memory maps."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    with open("/proc/self/maps") as f:
        out += [line.split()[-1] for line in f if str(folder) in line]
    return out


def test_close_leaves_no_file_of_the_folder_open(built_index, tiny_model):
    path = built_index.path
    built_index.add_lexical()
    built_index.add(["zebra quartz music"], ids=["z"])
    assert built_index.search("zebra music", k=3, mode="hybrid") and built_index.get(["z"])
    held = open_files_in(path)
    assert any(f.endswith(".sqlite") for f in held) and any(f.endswith("-wal") for f in held)
    assert any(f.endswith(".npy") for f in held)
    built_index.compact()  # a new document store: the old connection is closed once no search holds it
    built_index.search("zebra", k=2)
    stores = {f for f in open_files_in(path) if ".sqlite" in f}
    assert all(built_index.metadata["docstore"] in f for f in stores), stores
    built_index.close()
    assert open_files_in(path) == []  # no gc.collect(): close() itself released them
    with pytest.raises(IndexClosedError):
        built_index.search("zebra", k=1)
    other = Index.open(path, model=tiny_model)
    other.search("zebra", k=1)
    other.close()
    assert open_files_in(path) == []


def test_close_during_a_search_lets_it_finish(built_index):
    """A search in flight keeps its snapshot's document store open until it is done."""
    with built_index._reader.hold() as snap:
        built_index.close()
        assert snap.docstore.fetch([0])  # still open for the holder
    del snap
    assert open_files_in(built_index.path) == []


# ============================================================================ the writer lock
def test_a_writer_that_lost_its_lock_stops_before_committing(built_index, tiny_model, monkeypatch):
    path = built_index.path
    gen = built_index.generation
    encode = tiny_model.encode_documents_packed

    def lose_the_lock(*a, **k):
        (path / layout.LOCK).unlink()  # someone deletes the lock file while the write runs
        return encode(*a, **k)

    writer = Index.open(path, model=tiny_model)
    monkeypatch.setattr(tiny_model, "encode_documents_packed", lose_the_lock)  # this test's own copy of the model
    with pytest.raises(IndexLockedError, match="was deleted or replaced while this write ran") as e:
        writer.add(["zebra quartz"], ids=["z"])
    one_line(e.value)
    fresh = Index.open(path, model=tiny_model)
    assert fresh.generation == gen and not fresh.get(["z"])
    monkeypatch.undo()
    fresh.add(["zebra quartz"], ids=["z"])  # the next writer takes a new lock file
    assert fresh.get(["z"]) and (path / layout.LOCK).exists()


def test_a_waiting_writer_relocks_when_the_lock_file_was_replaced(built_index, tiny_model):
    """The lockfile pattern: a writer waiting on the old lock file's inode must not go ahead once it gets it, when
    the path names a new file another writer holds."""
    path = built_index.path
    lock = path / layout.LOCK
    first = os.open(lock, os.O_RDWR)
    fcntl.flock(first, fcntl.LOCK_EX)
    err = {}

    def wait_and_write():
        try:
            waiting.delete(["d1"])
        except Exception as e:  # noqa: BLE001
            err["e"] = e

    waiting = Index.open(path, model=tiny_model, lock_timeout=1.5)
    t = threading.Thread(target=wait_and_write)
    t.start()
    threading.Event().wait(0.3)  # the writer opened the old file and waits for it
    lock.unlink()
    second = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # a third party's new lock file, held
    fcntl.flock(second, fcntl.LOCK_EX)
    os.close(first)  # the old file is free now: the waiting writer locks it, sees it is stale, waits on the new one
    t.join(10)
    assert isinstance(err.get("e"), IndexLockedError) and "another writer holds" in str(err["e"])
    assert built_index.get(["d1"])  # nothing was written while another writer held the lock
    os.close(second)
    built_index.delete(["d1"])
    assert not built_index.get(["d1"])
