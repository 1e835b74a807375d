"""SQLite document store: internal pid -> user id, text, JSON metadata, and the generation that deleted it.

Visibility is snapshot-based: a reader at generation ``gen`` with ``n`` committed documents sees the rows with
``pid < n`` and ``deleted_gen IS NULL OR deleted_gen > gen``. A writer that died before committing left rows that
no reader sees, and the next writer rolls them back (``rollback_uncommitted``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import IndexFormatError, InvalidArgument, InvalidType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    pid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    deleted_gen INTEGER
);
CREATE INDEX IF NOT EXISTS docs_id ON docs(id);
"""

_VISIBLE = "pid < ? AND (deleted_gen IS NULL OR deleted_gen > ?)"
_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FILTER_OPERATORS = sorted(list(_OPS) + ["$in", "$nin", "$and", "$or", "$not", "$exists"])


class DocStore:
    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise IndexFormatError(f"document store {self.path} is missing")
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if create:
                self.conn.executescript(_SCHEMA)
            self.conn.execute("SELECT pid FROM docs LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"document store {self.path} is unreadable: {e}") from None

    def close(self):
        with self._lock:
            self.conn.close()

    def _query(self, sql: str, params: Sequence[Any] = ()):
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def _write(self, statements: Iterable[tuple[str, Any]]):
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if isinstance(params, list) and params and isinstance(params[0], tuple):
                        self.conn.executemany(sql, params)
                    else:
                        self.conn.execute(sql, params)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------- writes
    def rollback_uncommitted(self, n: int, gen: int) -> None:
        self._write([("DELETE FROM docs WHERE pid >= ?", (n,)),
                     ("UPDATE docs SET deleted_gen = NULL WHERE deleted_gen > ?", (gen,))])

    def insert(self, first_pid: int, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict]) -> None:
        rows = [(first_pid + i, ids[i], texts[i], json.dumps(metadatas[i], ensure_ascii=False), None)
                for i in range(len(ids))]
        self._write([("INSERT INTO docs (pid, id, text, metadata, deleted_gen) VALUES (?, ?, ?, ?, ?)", rows)])

    def mark_deleted(self, pids: np.ndarray, new_gen: int) -> None:
        self._write([("UPDATE docs SET deleted_gen = ? WHERE pid = ?", [(new_gen, int(p)) for p in pids])])

    # ---------------------------------------------------------------- reads
    def pids_of(self, ids: Sequence[str], n: int, gen: int) -> dict[str, int]:
        """Live pid of each given id that exists in the snapshot."""
        out: dict[str, int] = {}
        ids = list(ids)
        for s in range(0, len(ids), 500):
            part = ids[s : s + 500]
            q = f"SELECT id, pid FROM docs WHERE id IN ({','.join('?' * len(part))}) AND {_VISIBLE}"
            out.update({i: p for i, p in self._query(q, [*part, n, gen])})
        return out

    def deleted_pids(self, n: int, gen: int) -> np.ndarray:
        rows = self._query("SELECT pid FROM docs WHERE pid < ? AND deleted_gen IS NOT NULL AND deleted_gen <= ?",
                           (n, gen))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM docs")[0][0]

    def fetch(self, pids: Sequence[int]) -> dict[int, tuple[str, str, dict]]:
        out = {}
        pids = [int(p) for p in pids]
        for s in range(0, len(pids), 500):
            part = pids[s : s + 500]
            q = f"SELECT pid, id, text, metadata FROM docs WHERE pid IN ({','.join('?' * len(part))})"
            for pid, id_, text, meta in self._query(q, part):
                out[pid] = (id_, text, json.loads(meta))
        return out

    def iter_visible(self, n: int, gen: int, batch: int = 2048):
        """(pid, id, text, metadata) of live rows in pid order, in batches."""
        last = -1
        while True:
            rows = self._query(f"SELECT pid, id, text, metadata FROM docs WHERE pid > ? AND {_VISIBLE} "
                               f"ORDER BY pid LIMIT ?", (last, n, gen, batch))
            if not rows:
                return
            yield [(p, i, t, json.loads(m)) for p, i, t, m in rows]
            last = rows[-1][0]

    def filter_pids(self, flt: dict, n: int, gen: int) -> np.ndarray:
        """Live pids whose metadata matches ``flt`` (see ``compile_filter``), sorted."""
        where, params = compile_filter(flt)
        rows = self._query(f"SELECT pid FROM docs WHERE ({where}) AND {_VISIBLE}", [*params, n, gen])
        return np.array(sorted(r[0] for r in rows), dtype=np.int64)


def _field_sql(field: str) -> str:
    if not isinstance(field, str) or not _FIELD.match(field):
        raise InvalidArgument(f"filter field {field!r} is not a valid metadata key (letters, digits, _ - and . only)")
    path = "$" + "".join(f'."{p}"' for p in field.split("."))
    return f"json_extract(metadata, '{path}')"


def _scalar(value: Any, field: str, op: str):
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, (int, float, str)):
        return value
    raise InvalidType(f"filter value for {field!r} {op} is {type(value).__name__}; use str, int, float, bool or None")


def compile_filter(flt: Any) -> tuple[str, list]:
    """Translate a metadata filter into SQL with bound parameters.

    Dialect (close to LangChain/Chroma): ``{"field": value}`` (equality), ``{"field": {"$eq"|"$ne"|"$gt"|"$gte"|
    "$lt"|"$lte": value}}``, ``{"field": {"$in"|"$nin": [values]}}``, ``{"field": {"$exists": bool}}``,
    ``{"$and": [filters]}``, ``{"$or": [filters]}``, ``{"$not": filter}``. Several keys in one dict are ANDed.
    Nested keys use dots (``"a.b"``). A field that a document lacks matches nothing (except ``$exists: False``,
    ``$ne`` and ``$nin``, which it satisfies).
    """
    if not isinstance(flt, dict):
        raise InvalidType(f"filter must be a dict, got {type(flt).__name__}")
    if not flt:
        return "1", []
    parts, params = [], []
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise InvalidArgument(f"{key} takes a non-empty list of filters, got {cond!r}")
            subs = [compile_filter(c) for c in cond]
            parts.append("(" + f" {key[1:].upper()} ".join(f"({w})" for w, _ in subs) + ")")
            params += [p for _, ps in subs for p in ps]
        elif key == "$not":
            w, ps = compile_filter(cond)
            parts.append(f"NOT ({w})")
            params += ps
        elif key.startswith("$"):
            raise InvalidArgument(f"unknown filter operator {key!r}; known operators: {FILTER_OPERATORS}")
        else:
            col = _field_sql(key)
            conds = cond if isinstance(cond, dict) and any(str(k).startswith("$") for k in cond) else {"$eq": cond}
            for op, value in conds.items():
                if op in _OPS:
                    if value is None:
                        parts.append(f"{col} IS {'NOT ' if op == '$ne' else ''}NULL")
                        continue
                    if isinstance(value, (list, dict)):
                        raise InvalidType(f"filter {key!r} {op} takes a scalar, got {type(value).__name__}")
                    if op == "$ne":
                        parts.append(f"({col} IS NULL OR {col} != ?)")
                    else:
                        parts.append(f"{col} {_OPS[op]} ?")
                    params.append(_scalar(value, key, op))
                elif op in ("$in", "$nin"):
                    if not isinstance(value, (list, tuple, set)):
                        raise InvalidArgument(f"filter {key!r} {op} takes a list, got {type(value).__name__}")
                    vals = [_scalar(v, key, op) for v in value]
                    if not vals:
                        parts.append("0" if op == "$in" else "1")
                        continue
                    ph = ",".join("?" * len(vals))
                    parts.append(f"{col} IN ({ph})" if op == "$in" else f"({col} IS NULL OR {col} NOT IN ({ph}))")
                    params += vals
                elif op == "$exists":
                    parts.append(f"{col} IS {'NOT ' if value else ''}NULL")
                else:
                    raise InvalidArgument(f"unknown filter operator {op!r} on {key!r}; known operators: {FILTER_OPERATORS}")
    return " AND ".join(f"({p})" for p in parts), params
