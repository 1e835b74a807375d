"""SQLite document store: internal pid -> user id, text, JSON metadata, and the generation that deleted it.

A long document indexed with ``truncate="chunk"`` is several rows with the same id and consecutive pids, one per
passage; each such row's ``span`` is JSON ``[passage, start, end]``: its text is ``original[start:end]``, and
the passages cover the original text in order (``rows_of`` rebuilds it). Stores written before passages existed
lack the column; the first chunked add adds it.

Visibility is snapshot-based: a reader at generation ``gen`` with ``n`` committed documents sees the rows with
``pid < n`` and ``deleted_gen IS NULL OR deleted_gen > gen``. A writer that died before committing left rows that
no reader sees, and the next writer rolls them back (``prepare_write``). The lexical (BM25) side lives in the same
file: see ``lexical.py``.

The store runs only the library's SQL: every open of an existing store refuses one whose schema holds a trigger,
view, table or index the format does not name (``lexical.foreign_objects``, one ``sqlite_master`` query), so SQL
planted in the file never runs on a write. The file and SQLite's side files must be regular files, not links.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ..errors import DiskFullError, IndexFormatError, IndexNotFoundError, IndexWriteError
from . import layout, lexical

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    pid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    deleted_gen INTEGER,
    span TEXT
);
CREATE INDEX IF NOT EXISTS docs_id ON docs(id);
"""

_VISIBLE = "pid < ? AND (deleted_gen IS NULL OR deleted_gen > ?)"
_OWN_OBJECTS = {("table", "docs"): None, ("index", "docs_id"): None}  # the document side (lexical.py: the rest)
_SQLITE_FULL, _SQLITE_IOERR = 13, 10

class StaleSnapshot(IndexFormatError):
    """The generation a reader holds was superseded while it read (retry on a fresh snapshot)."""


def _nearly_full(path) -> bool:
    """Whether the file system holding ``path`` has (almost) no room left: SQLite reports a write into a full disk
    as a plain I/O error when the write that failed was its shared-memory or journal file."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


class DocStore:
    """One SQLite file. Writers hold the index's writer lock; any number of readers (threads share one
    connection, serialised by a lock). ``read_only``: open without ever writing (a read-only folder or mount);
    chosen automatically when the folder cannot be written."""

    def __init__(self, path: Path, create: bool = False, read_only: bool = False):
        self.path = Path(path)
        self._check_side_files()
        fd = None
        if not create:
            try:
                fd = layout.open_regular(self.path, "document store")  # not a link, a pipe or a device
            except IndexNotFoundError as e:
                raise IndexFormatError(str(e)) from None
        self._lock = threading.RLock()
        self._spans = False
        self.conn = None
        if not create and not read_only and not os.access(self.path.parent, os.W_OK):
            read_only = True
        self.read_only = read_only
        try:
            if read_only:
                # immutable: no -shm/-wal needed; writers checkpoint the WAL into the main file at every commit
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro&immutable=1"
                self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            if fd is not None:  # what SQLite opened is what was checked (closed before any query takes a lock)
                st, now = os.fstat(fd), os.stat(self.path, follow_symlinks=False)
                os.close(fd)
                fd = None
                if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                    raise IndexFormatError(f"document store {self.path} was replaced while it was being opened")
            if not read_only:
                self.conn.execute("PRAGMA busy_timeout=10000")
                if create:
                    self.conn.execute("PRAGMA journal_mode=WAL")
                    self.conn.executescript(_SCHEMA)
            if not create:
                foreign = lexical.foreign_objects(self.conn, _OWN_OBJECTS)
                if foreign:
                    raise IndexFormatError(
                        f"document store {self.path} holds SQL this library did not write ({', '.join(foreign[:5])}"
                        f"{' and more' if len(foreign) > 5 else ''}); refusing to open it, so that nothing planted "
                        f"there runs (rebuild the index from its texts, or drop what you added with sqlite3)")
            self.conn.execute("SELECT pid, id, text, metadata, deleted_gen FROM docs LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, IndexFormatError, OSError) as e:
            if self.conn is not None:
                self.conn.close()
            if isinstance(e, IndexFormatError):
                raise
            if isinstance(e, OSError):
                raise IndexFormatError(f"document store {self.path} cannot be opened: {e.strerror or e}") from None
            if create:
                raise self._write_failure(e) from None
            raise IndexFormatError(f"document store {self.path} is unreadable: {e}") from None
        finally:
            if fd is not None:
                os.close(fd)

    def _check_side_files(self) -> None:
        for side in (self.path, *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm", "-journal"))):
            try:
                mode = os.lstat(side).st_mode
            except FileNotFoundError:
                continue
            except OSError as e:
                raise IndexFormatError(f"{side} cannot be read: {e.strerror}") from None
            if stat.S_ISLNK(mode):
                raise IndexFormatError(f"{side} is a symbolic link; an index folder holds its own files (refusing to "
                                       f"open it, which would read or write another file)")
            if not stat.S_ISREG(mode):
                raise IndexFormatError(f"{side} is {layout.kind_of(mode)}, not a regular file; an index folder holds "
                                       f"only the files this library wrote")

    def _write_failure(self, e: sqlite3.DatabaseError) -> Exception:
        """The library's error for a failed write: the disk full (SQLite's SQLITE_FULL), an I/O error, or else a
        store that cannot be written."""
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
        if code == _SQLITE_FULL or "database or disk is full" in str(e) or (code == _SQLITE_IOERR
                                                                           and _nearly_full(self.path)):
            return DiskFullError(f"the disk is full: writing the document store {self.path} failed ({e}); the index "
                                 f"keeps its last committed generation (free some space and retry)", self.path)
        if code == _SQLITE_IOERR:
            return IndexWriteError(f"writing the document store {self.path} failed ({e}); the index keeps its last "
                                   f"committed generation", self.path)
        return IndexFormatError(f"document store {self.path} cannot be written: {e}")

    def close(self):
        with self._lock:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()):
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.ProgrammingError as e:
                raise IndexFormatError(f"document store {self.path} is closed: {e}") from None
            except sqlite3.DatabaseError as e:
                raise IndexFormatError(f"document store {self.path} is unreadable: {e}") from None

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction (the writer holds the index's writer lock); yields the connection."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                lexical.no_fts5(e)
                raise self._write_failure(e) from None
            except sqlite3.DatabaseError as e:
                raise self._write_failure(e) from None

    def _write(self, statements: Iterable[tuple[str, Any]]):
        with self._transaction() as conn:
            for sql, params in statements:
                if isinstance(params, list) and params and isinstance(params[0], tuple):
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)

    def checkpoint(self) -> None:
        """Move the write-ahead log into the main file (so a read-only copy of the folder sees everything)."""
        with self._lock:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.DatabaseError:
                pass  # readers may hold the log; the next writer's checkpoint completes it

    # ---------------------------------------------------------------- lexical side (BM25: see lexical.py)
    def has_lexical(self) -> bool:
        with self._lock:
            return self._read(lexical.kind) is not None

    def _read(self, fn, *args):
        try:
            return fn(self.conn, *args)
        except sqlite3.ProgrammingError as e:
            raise IndexFormatError(f"document store {self.path} is closed: {e}") from None
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"document store {self.path} is unreadable: {e}") from None

    def add_lexical(self, n: int) -> None:
        """Create the lexical side over the rows ``pid < n`` (both slots), in one transaction. Idempotent."""
        with self._transaction() as conn:
            if lexical.kind(conn) is None:
                lexical.create(conn, n)

    def lexical_advance(self, n: int, new_n: int) -> None:
        """Before a commit that takes the store from ``n`` to ``new_n`` rows: a lexical slot holds them."""
        with self._transaction() as conn:
            if lexical.kind(conn) == "slots" and new_n != n:
                lexical.advance(conn, n, new_n)

    def lexical_check(self, n: int) -> list[str]:
        """``lexical.deep_check`` (problems found; empty when sound)."""
        with self._lock:
            return self._read(lexical.deep_check, n)

    def bm25(self, query: str, limit: int, n: int, gen: int, where: Optional[tuple] = None,
             ids: Optional[Sequence[str]] = None) -> list[tuple[int, float]]:
        """Top ``limit`` live documents for ``query`` by BM25 (FTS5: k1 = 1.2, b = 0.75) over the generation with
        ``n`` committed rows (its statistics only), as (pid of the best passage, score) best first, one per
        document id; only documents matching ``where`` (a compiled filter, ``filters.compile_filter``) and ``ids``.
        The query's words (``lexical.TOKENIZER``, less ``lexical.STOPWORDS``) are ORed. Deleted rows count in the
        collection statistics until ``compact``, as in Lucene. Raises ``StaleSnapshot`` when no lexical table
        holds that generation any more (a writer moved on: search a newer snapshot)."""
        match = lexical.match_expression(query)
        if match is None:
            return []
        where, params = where if where is not None else ("1", [])
        id_sql = ""
        if ids is not None:
            ids = list(dict.fromkeys(ids))
            if not ids:
                return []
            id_sql = f" AND d.id IN ({','.join('?' * len(ids))})"
            params = [*params, *ids]
        with self._lock:
            try:
                self.conn.execute("BEGIN")  # one read transaction: the slot chosen is the slot read
                try:
                    t = lexical.slot_for(self.conn, n)
                    if t is None:
                        raise StaleSnapshot(f"{self.path}: no lexical table holds the {n} rows of this generation")
                    q = (f"WITH m AS MATERIALIZED (SELECT rowid AS pid, bm25({t}) AS s FROM {t} WHERE {t} MATCH ?) "
                         f"SELECT d.pid, MIN(m.s) FROM m JOIN docs d ON d.pid = m.pid WHERE d.pid < ? AND "
                         f"(d.deleted_gen IS NULL OR d.deleted_gen > ?) AND ({where}){id_sql} GROUP BY d.id "
                         f"ORDER BY MIN(m.s), d.pid LIMIT ?")
                    rows = self.conn.execute(q, [match, n, gen, *params, limit]).fetchall()
                finally:
                    self.conn.execute("COMMIT")
            except sqlite3.ProgrammingError as e:
                raise IndexFormatError(f"document store {self.path} is closed: {e}") from None
            except sqlite3.DatabaseError as e:
                raise IndexFormatError(f"document store {self.path} is unreadable: {e}") from None
        return [(int(p), -float(s)) for p, s in rows]

    # ---------------------------------------------------------------- writes
    def prepare_write(self, n: int, gen: int) -> None:
        """Start of a write transaction: a killed writer's uncommitted rows (``pid >= n``, deletions after
        ``gen``) rolled back, in the lexical slots first (their texts are needed), and a legacy lexical side
        moved to the two slots. One transaction."""
        with self._transaction() as conn:
            k = lexical.kind(conn)
            if k == "slots":
                lexical.rollback(conn, n)
            conn.execute("DELETE FROM docs WHERE pid >= ?", (n,))
            conn.execute("UPDATE docs SET deleted_gen = NULL WHERE deleted_gen > ?", (gen,))
            if k == "legacy":
                lexical.upgrade(conn, n)

    def has_spans(self) -> bool:
        """Whether this store has the ``span`` column (stores from before passages existed do not; a writer may
        add it later, and once there it stays, so only a yes is remembered)."""
        if not self._spans:
            self._spans = any(r[1] == "span" for r in self._query("PRAGMA table_info(docs)"))
        return self._spans

    def insert(self, first_pid: int, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict],
               spans: Optional[Sequence[Optional[tuple]]] = None) -> None:
        """Rows at pids first_pid, first_pid + 1, ...; ``spans[i]``: (passage, start, end) for a passage row."""
        meta = [json.dumps(m, ensure_ascii=False, allow_nan=False) for m in metadatas]
        if spans is None or all(sp is None for sp in spans):
            rows = [(first_pid + i, ids[i], texts[i], meta[i], None) for i in range(len(ids))]
            self._write([("INSERT INTO docs (pid, id, text, metadata, deleted_gen) VALUES (?, ?, ?, ?, ?)", rows)])
            return
        rows = [(first_pid + i, ids[i], texts[i], meta[i], None, None if sp is None else json.dumps(list(sp)))
                for i, sp in enumerate(spans)]
        statements = [] if self.has_spans() else [("ALTER TABLE docs ADD COLUMN span TEXT", ())]
        self._write(statements + [
            ("INSERT INTO docs (pid, id, text, metadata, deleted_gen, span) VALUES (?, ?, ?, ?, ?, ?)", rows)])

    def mark_deleted(self, pids: np.ndarray, new_gen: int) -> None:
        self._write([("UPDATE docs SET deleted_gen = ? WHERE pid = ?", [(new_gen, int(p)) for p in pids])])

    # ---------------------------------------------------------------- reads
    def _meta(self, text: str, pid: int) -> dict:
        try:
            return json.loads(text)
        except (TypeError, ValueError, RecursionError):
            raise IndexFormatError(f"document store {self.path}: the metadata of row {pid} is not valid JSON") from None

    def _rows_in(self, sql: str, keys: Sequence[Any], extra: Sequence[Any] = ()):
        """Rows of ``sql`` (its ``{marks}`` the placeholders of an ``IN (...)`` list) for ``keys`` in chunks of 500
        (SQLite's bound on parameters), ``extra`` parameters after each chunk's; chunk by chunk, in order."""
        for s in range(0, len(keys), 500):
            part = list(keys[s : s + 500])
            yield from self._query(sql.format(marks=",".join("?" * len(part))), [*part, *extra])

    def pids_of(self, ids: Sequence[str], n: int, gen: int) -> dict[str, list[int]]:
        """Live pids of each given id that exists in the snapshot (several for a document stored as passages)."""
        out: dict[str, list[int]] = {}
        q = f"SELECT id, pid FROM docs WHERE id IN ({{marks}}) AND {_VISIBLE} ORDER BY pid"
        for i, p in self._rows_in(q, list(dict.fromkeys(ids)), (n, gen)):
            out.setdefault(i, []).append(p)
        return out

    def count_documents(self, n: int, gen: int) -> int:
        """Live documents (a document stored as passages counts once)."""
        if not self.has_spans():
            return self._query(f"SELECT COUNT(*) FROM docs WHERE {_VISIBLE}", (n, gen))[0][0]
        q = f"SELECT COUNT(*) FROM docs WHERE {_VISIBLE} AND (span IS NULL OR span LIKE '[0,%')"
        return self._query(q, (n, gen))[0][0]

    def deleted_pids(self, n: int, gen: int) -> np.ndarray:
        rows = self._query("SELECT pid FROM docs WHERE pid < ? AND deleted_gen IS NOT NULL AND deleted_gen <= ?",
                           (n, gen))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def continuation_pids(self, n: int) -> np.ndarray:
        """Rows (pid < n) that continue the document of the row before them (a passage other than the first)."""
        if not self.has_spans():
            return np.zeros(0, dtype=np.int64)
        rows = self._query("SELECT pid FROM docs WHERE pid < ? AND span IS NOT NULL AND span NOT LIKE '[0,%'", (n,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM docs")[0][0]

    def fetch(self, pids: Sequence[int]) -> dict[int, tuple[str, str, dict, Optional[int]]]:
        """pid -> (id, text, metadata, passage number or None)."""
        out = {}
        span = "span" if self.has_spans() else "NULL"
        q = f"SELECT pid, id, text, metadata, {span} FROM docs WHERE pid IN ({{marks}})"
        for pid, id_, text, meta, sp in self._rows_in(q, [int(p) for p in pids]):
            out[pid] = (id_, text, self._meta(meta, pid), None if sp is None else self._span(sp, pid)[0])
        return out

    def doc_ids(self, pids: Sequence[int]) -> dict[int, str]:
        """pid -> document id only (no text or metadata to decode: what grouping passages by document needs)."""
        return dict(self._rows_in("SELECT pid, id FROM docs WHERE pid IN ({marks})", [int(p) for p in pids]))

    def _span(self, sp: str, pid: int) -> tuple:
        try:
            return tuple(json.loads(sp))
        except (TypeError, ValueError):
            raise IndexFormatError(f"document store {self.path}: row {pid} has no valid passage span") from None

    def rows_of(self, ids: Sequence[str], n: int, gen: int) -> dict[str, tuple[str, dict]]:
        """Live (text, metadata) of each given id that exists in the snapshot; a document stored as passages
        comes back whole (its original text)."""
        out: dict[str, tuple[str, dict]] = {}
        span = "span" if self.has_spans() else "NULL"
        q = f"SELECT id, pid, text, metadata, {span} FROM docs WHERE id IN ({{marks}}) AND {_VISIBLE} ORDER BY pid"
        pieces: dict[str, list] = {}
        for i, p, t, m, sp in self._rows_in(q, list(dict.fromkeys(ids)), (n, gen)):
            pieces.setdefault(i, []).append((p, t, m, sp))  # an id's rows come in one chunk, ordered by pid
        for i, rows in pieces.items():
            p, t, m, _ = rows[0]
            out[i] = (t if len(rows) == 1 else self._join(rows), self._meta(m, p))
        return out

    def _join(self, rows) -> str:
        """The original text of a document stored as passages (each ``original[start:end]``, in order)."""
        spans = [self._span(sp, p) for p, _, _, sp in rows]
        text = []
        for j, ((_, t, _, _), (_, a, b)) in enumerate(zip(rows, spans)):
            nxt = spans[j + 1][1] if j + 1 < len(spans) else b
            text.append(t[: nxt - a])
        return "".join(text)

    def live_ids(self, n: int, gen: int, where: Optional[tuple] = None) -> list[str]:
        """Ids of the live documents (matching the compiled filter ``where`` if given), in the order they were
        added."""
        where, params = where if where is not None else ("1", [])
        rows = self._query(f"SELECT id FROM docs WHERE ({where}) AND {_VISIBLE} ORDER BY pid", [*params, n, gen])
        return list(dict.fromkeys(r[0] for r in rows))

    def iter_visible(self, n: int, gen: int, batch: int = 2048):
        """(pid, id, text, metadata, span) of live rows in pid order, in batches."""
        last = -1
        span = "span" if self.has_spans() else "NULL"
        while True:
            rows = self._query(f"SELECT pid, id, text, metadata, {span} FROM docs WHERE pid > ? AND {_VISIBLE} "
                               f"ORDER BY pid LIMIT ?", (last, n, gen, batch))
            if not rows:
                return
            yield [(p, i, t, self._meta(m, p), None if sp is None else self._span(sp, p)) for p, i, t, m, sp in rows]
            last = rows[-1][0]

    def filter_pids(self, where: tuple, n: int, gen: int) -> np.ndarray:
        """Live pids whose metadata matches the compiled filter ``where`` (``filters.compile_filter``), sorted."""
        where, params = where
        rows = self._query(f"SELECT pid FROM docs WHERE ({where}) AND {_VISIBLE}", [*params, n, gen])
        return np.array(sorted(r[0] for r in rows), dtype=np.int64)
