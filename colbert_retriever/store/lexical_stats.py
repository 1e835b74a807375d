"""BM25 with collection statistics from outside one document store: the shards of one collection score their
documents with their summed statistics and give exactly the scores that one store holding all their rows gives.

FTS5's ``bm25()`` (k1 = 1.2, b = 0.75) scores a row from the statistics of its own table: the rows it holds, their
total tokens (the average length) and, per phrase of the query, how many rows match it; and from the row itself:
its length in tokens and how often each phrase occurs in it. ``collect`` reads all of these from one store's
lexical slot for a generation (one read transaction): the table's totals from FTS5's averages record, each
phrase's matching rows by one single-phrase query (their count is the phrase's document frequency), each
matching row's length from FTS5's ``docsize`` table, and each phrase's frequency in a row recovered exactly from
the single-phrase ``bm25()`` score (an integer; the inversion is checked). ``score`` then applies the same
formula, in the same order, with whatever totals it is given: the store's own reproduce ``DocStore.bm25``,
totals summed over shards reproduce one store over all of them. ``top_documents`` keeps the best passage of each
live document matching a filter, as ``DocStore.bm25`` does.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import IndexFormatError
from . import lexical
from .docstore import _VISIBLE, DocStore, StaleSnapshot

K1, B = 1.2, 0.75
"""FTS5's ``bm25()`` constants."""
_AVERAGES_ROWID = 1  # FTS5 keeps its table totals (rows, then tokens per column) as varints in this %_data row


@dataclass
class Terms:
    """One query's lexical evidence in one store at one generation: the table's ``rows`` and ``tokens`` (rows
    deleted since the last compaction count, as in ``bm25()``), per phrase the rows matching it (``hits``) and
    each matching row's frequency of it (``freqs``: pid -> occurrences), and each matching row's length."""

    phrases: list
    rows: int = 0
    tokens: int = 0
    hits: list = field(default_factory=list)
    freqs: list = field(default_factory=list)
    lengths: dict = field(default_factory=dict)

    def statistics(self) -> tuple[int, int, list]:
        """(rows, tokens, hits per phrase): what the shards of a collection add up."""
        return self.rows, self.tokens, list(self.hits)


def phrases(query: str) -> list[str]:
    """The query's phrases as ``DocStore.bm25`` searches them (``lexical.match_expression``), in order."""
    match = lexical.match_expression(query)
    return [] if match is None else [p[1:-1] for p in match.split(" OR ")]


def varints(blob: bytes) -> list[int]:
    """SQLite's variable-length integers (big-endian, 7 bits a byte, a ninth byte of 8 bits), as FTS5 stores
    sizes and totals."""
    out, i = [], 0
    while i < len(blob):
        v = 0
        for j in range(9):
            c = blob[i]
            i += 1
            if j == 8:
                v = (v << 8) | c
                break
            v = (v << 7) | (c & 0x7F)
            if not c & 0x80:
                break
        out.append(v)
    return out


def idf(rows: int, hits: int) -> float:
    """FTS5's inverse document frequency (never below 1e-6)."""
    value = math.log((rows - hits + 0.5) / (hits + 0.5))
    return value if value > 0.0 else 1e-6


def _length_norm(length: int, avgdl: float) -> float:
    return K1 * (1 - B + B * length / avgdl)


def _collect(conn: sqlite3.Connection, where: str, query_phrases: list, n: int) -> Terms:
    t = lexical.slot_for(conn, n)
    if t is None:
        raise StaleSnapshot(f"{where}: no lexical table holds the {n} rows of this generation")
    terms = Terms(query_phrases)
    row = conn.execute(f"SELECT block FROM {t}_data WHERE id = ?", (_AVERAGES_ROWID,)).fetchone()
    totals = varints(row[0]) if row and row[0] else []
    terms.rows, terms.tokens = (totals[0], totals[1]) if len(totals) >= 2 else (0, 0)
    scored = []
    for p in query_phrases:
        found = conn.execute(f"SELECT rowid, bm25({t}) FROM {t} WHERE {t} MATCH ?", ('"' + p + '"',)).fetchall()
        terms.hits.append(len(found))
        scored.append(found)
    pids = sorted({r for found in scored for r, _ in found})
    for s in range(0, len(pids), 500):
        part = pids[s : s + 500]
        q = f"SELECT id, sz FROM {t}_docsize WHERE id IN ({','.join('?' * len(part))})"
        for pid, sz in conn.execute(q, part):
            terms.lengths[int(pid)] = sum(varints(sz))
    avgdl = terms.tokens / terms.rows if terms.rows else 1.0
    for found, h in zip(scored, terms.hits):
        weight = idf(terms.rows, h)
        freqs = {}
        for pid, s in found:
            x = -s / weight  # = f (k1 + 1) / (f + norm): solve for the phrase frequency f
            norm = _length_norm(terms.lengths[pid], avgdl)
            f = x * norm / (K1 + 1 - x)
            if not (abs(f - round(f)) < 1e-6 * max(1.0, f) and round(f) >= 1):
                raise IndexFormatError(f"{where}: the lexical side's statistics are inconsistent (row {pid} gives "
                                       f"a frequency of {f!r} for {p!r}); run `info --check` on the shard")
            freqs[int(pid)] = int(round(f))
        terms.freqs.append(freqs)
    return terms


def collect(store: DocStore, query: str, n: int) -> Terms:
    """``Terms`` of ``query`` in ``store`` for the generation with ``n`` committed rows, read in one transaction.
    Raises ``StaleSnapshot`` when no lexical table holds that generation any more (as ``DocStore.bm25``)."""
    query_phrases = phrases(query)
    if not query_phrases:
        return Terms([])
    with store._lock:
        try:
            store.conn.execute("BEGIN")  # one read transaction: the slot chosen is the slot read
            try:
                return _collect(store.conn, str(store.path), query_phrases, n)
            finally:
                store.conn.execute("COMMIT")
        except sqlite3.ProgrammingError as e:
            raise IndexFormatError(f"document store {store.path} is closed: {e}") from None
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"document store {store.path} is unreadable: {e}") from None


def score(terms: Terms, rows: int, tokens: int, hits: Sequence[int]) -> dict[int, float]:
    """BM25 of every row matching ``terms`` under the given collection statistics (``Terms.statistics``, or their
    sums over the shards of a collection): pid -> score (higher is better), summed phrase by phrase in the
    query's order as ``bm25()`` sums them."""
    if not terms.phrases:
        return {}
    avgdl = tokens / rows if rows else 1.0
    weights = [idf(rows, h) for h in hits]
    out = {}
    for pid, length in terms.lengths.items():
        norm = _length_norm(length, avgdl)
        s = 0.0
        for w, freqs in zip(weights, terms.freqs):
            f = freqs.get(pid, 0)
            s += w * ((f * (K1 + 1.0)) / (f + norm))
        out[pid] = s
    return out


def top_documents(store: DocStore, scores: dict[int, float], limit: int, n: int, gen: int,
                  where: Optional[tuple] = None, ids: Optional[Sequence[str]] = None) -> list[tuple[int, float]]:
    """The ``limit`` best live documents of the generation (``n`` rows, generation ``gen``) among the scored rows,
    as (pid of the best passage, score), best first (ties: the lower pid), one per document id; only rows
    matching the compiled filter ``where`` and the ``ids``."""
    if not scores or limit < 1 or (ids is not None and not ids):
        return []
    clause, params = where if where is not None else ("1", [])
    id_sql = ""
    if ids is not None:
        ids = list(dict.fromkeys(ids))
        id_sql = f" AND id IN ({','.join('?' * len(ids))})"
    best: dict[str, tuple[float, int]] = {}
    pids = sorted(scores)
    for s in range(0, len(pids), 500):
        part = pids[s : s + 500]
        q = (f"SELECT pid, id FROM docs WHERE pid IN ({','.join('?' * len(part))}) AND {_VISIBLE} AND ({clause})"
             f"{id_sql}")
        for pid, doc in store._query(q, [*part, n, gen, *params, *(ids or [])]):
            key = (-scores[pid], pid)
            if doc not in best or key < best[doc]:
                best[doc] = key
    ranked = sorted(best.values())[:limit]
    return [(pid, -neg) for neg, pid in ranked]
