"""The lexical (BM25) side of the document store: SQLite FTS5 over the stored texts, answering from the committed
generation only.

FTS5's ``bm25()`` takes its statistics (rows, average length, document frequencies) from every row its index
holds. So that a writer's uncommitted rows never reach a reader's scores, the index is kept twice, in two slots
(``lexical_0``, ``lexical_1``), each holding exactly the rows ``pid < n`` for its own ``n`` (table
``lexical_state``). A reader at a generation with ``n`` committed rows uses a slot whose ``n`` is that. A writer
that adds rows brings the *other* slot to its new ``n`` before it commits (``advance``); a killed writer's slot
holds rows no generation committed and is rolled back by the next writer (``rollback``), or simply never chosen by
readers (a read-only copy). Deletions do not touch the slots: deleted rows count in the statistics until
``compact`` (as in Lucene), in every generation alike.

Each slot is an external-content FTS5 table whose content is a view of its own rows, so FTS5's
``integrity-check`` can compare a slot with exactly what it should hold (``deep_check``).

Stores written before this layout have one table ``lexical`` kept in step by triggers; readers still use it, and
the first writer moves the store to the two slots (``upgrade``).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Optional

from ..errors import InvalidArgument

TOKENIZER = "porter unicode61 remove_diacritics 2"
"""The lexical side's tokenisation (SQLite FTS5): Unicode-aware words, case and diacritics folded, Porter
stemming (English). Chosen on the shared sets: it beat the bm25s baseline's plain lowercase words on all three."""
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves""".split())
"""Query words the lexical side ignores (they match most documents and carry almost no BM25 weight)."""
SLOTS = (0, 1)
LEGACY = "lexical"
_SHADOWS = ("data", "idx", "docsize", "config")  # FTS5's shadow tables of an external-content table
LEGACY_SQL = {  # what colbert-retriever 0.1 created, exactly (stores in that layout are read, then upgraded)
    ("table", LEGACY): f"CREATE VIRTUAL TABLE lexical USING fts5(text, content='docs', content_rowid='pid', "
                       f"tokenize='{TOKENIZER}')",
    ("trigger", "lexical_insert"): "CREATE TRIGGER lexical_insert AFTER INSERT ON docs BEGIN INSERT INTO "
                                   "lexical(rowid, text) VALUES (new.pid, new.text); END",
    ("trigger", "lexical_delete"): "CREATE TRIGGER lexical_delete AFTER DELETE ON docs BEGIN INSERT INTO "
                                   "lexical(lexical, rowid, text) VALUES ('delete', old.pid, old.text); END",
}


def table(slot: int) -> str:
    return f"lexical_{slot}"


def no_fts5(e: sqlite3.OperationalError) -> None:
    """Raise the clear error when SQLite failed for want of FTS5."""
    if "fts5" in str(e).lower():
        raise InvalidArgument(f"this Python's SQLite ({sqlite3.sqlite_version}) has no FTS5, which the lexical "
                              f"(BM25) side needs") from None


def kind(conn: sqlite3.Connection) -> Optional[str]:
    """"slots", "legacy" (one trigger-fed table) or None (no lexical side)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name IN ('lexical_state', 'lexical')")}
    if "lexical_state" in names:
        return "slots"
    return "legacy" if LEGACY in names else None


def _view_sql(slot: int) -> str:
    return (f"CREATE VIEW {table(slot)}_rows AS SELECT pid, text FROM docs "
            f"WHERE pid < (SELECT n FROM lexical_state WHERE slot = {slot})")


def _fts_sql(slot: int) -> str:
    t = table(slot)
    return f"CREATE VIRTUAL TABLE {t} USING fts5(text, content='{t}_rows', content_rowid='pid', tokenize='{TOKENIZER}')"


def create(conn: sqlite3.Connection, n: int) -> None:
    """Create both slots holding rows ``pid < n`` (inside the caller's transaction)."""
    conn.execute("CREATE TABLE lexical_state (slot INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    for s in SLOTS:
        conn.execute(_view_sql(s))
        conn.execute(_fts_sql(s))
        conn.execute("INSERT INTO lexical_state (slot, n) VALUES (?, 0)", (s,))
        _fill(conn, s, 0, n)


def _fill(conn, slot: int, a: int, b: int) -> None:
    """Index rows [a, b) into ``slot`` and record ``n = b``."""
    if b > a:
        conn.execute(f"INSERT INTO {table(slot)} (rowid, text) SELECT pid, text FROM docs WHERE pid >= ? AND pid < ?",
                     (a, b))
    conn.execute("UPDATE lexical_state SET n = ? WHERE slot = ?", (b, slot))


def _unfill(conn, slot: int, a: int, b: int) -> None:
    """Remove rows [a, b) from ``slot`` (their texts are still in docs) and record ``n = a``."""
    if b > a:
        conn.execute(f"INSERT INTO {table(slot)} ({table(slot)}, rowid, text) SELECT 'delete', pid, text FROM docs "
                     f"WHERE pid >= ? AND pid < ?", (a, b))
    conn.execute("UPDATE lexical_state SET n = ? WHERE slot = ?", (a, slot))


def state(conn) -> dict[int, int]:
    return dict(conn.execute("SELECT slot, n FROM lexical_state").fetchall())


def rollback(conn, n: int) -> None:
    """A killed writer's rows (``pid >= n``, the committed count) out of every slot that holds them (inside the
    caller's transaction, before those rows leave docs)."""
    for s, ns in state(conn).items():
        if ns > n:
            _unfill(conn, s, n, ns)


def advance(conn, n: int, new_n: int) -> None:
    """Bring a slot that readers of the committed generation (``n`` rows) do not need to ``new_n`` rows."""
    st = state(conn)
    serving = [s for s, ns in st.items() if ns == n]
    target = next((s for s in SLOTS if s not in serving), serving[-1] if len(serving) > 1 else None)
    if target is None:  # cannot happen after ``rollback``: a slot holds exactly the committed rows
        raise AssertionError(f"no lexical slot to advance: {st}, committed {n}")
    ns = st[target]
    if ns > n:
        _unfill(conn, target, n, ns)
        ns = n
    _fill(conn, target, ns, new_n)


def upgrade(conn, n: int) -> None:
    """A legacy store (one trigger-fed table) moves to the two slots, filled to ``n``; the triggers go (the old
    table stays for readers still on it and goes with the next compaction)."""
    conn.execute("DROP TRIGGER IF EXISTS lexical_insert")
    conn.execute("DROP TRIGGER IF EXISTS lexical_delete")
    create(conn, n)


def _expected_objects(names: set) -> dict:
    """(type, name) -> the exact SQL (whitespace collapsed) of every object the lexical side of a store may hold,
    given the names present; None where the SQL is SQLite's own (FTS5's shadow tables)."""
    out: dict = {}
    if "lexical_state" in names:
        out[("table", "lexical_state")] = None
        for s in SLOTS:
            out[("view", f"{table(s)}_rows")] = _view_sql(s)
            out[("table", table(s))] = _fts_sql(s)
            out.update({("table", f"{table(s)}_{x}"): None for x in _SHADOWS})
    if LEGACY in names:
        out[("table", LEGACY)] = LEGACY_SQL[("table", LEGACY)]
        out.update({("table", f"{LEGACY}_{x}"): None for x in _SHADOWS})
        if "lexical_state" not in names:  # the 0.1 layout: its two triggers feed the table
            out.update({k: v for k, v in LEGACY_SQL.items() if k[0] == "trigger"})
    return out


def foreign_objects(conn: sqlite3.Connection, own: dict) -> list[str]:
    """Objects of the store's schema (one ``sqlite_master`` query) that this library did not create: triggers,
    views, tables or indexes it does not name, or a view, trigger or FTS5 table whose SQL differs from ours.
    ``own``: the document side's objects, (type, name) -> SQL or None (not compared). SQLite's internal tables
    (``sqlite_stat1``, ``sqlite_sequence``) and automatic indexes hold no code and pass."""
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    names = {name for _, name, _ in rows}
    expected = {**own, **_expected_objects(names)}
    out = []
    for kind, name, sql in rows:
        if kind == "table" and name in ("sqlite_stat1", "sqlite_stat4", "sqlite_sequence"):
            continue
        if kind == "index" and name.startswith("sqlite_autoindex_"):
            continue
        key = (kind, name)
        if key not in expected:
            out.append(f"{kind} {name!r}")
        elif expected[key] is not None and " ".join((sql or "").split()) != " ".join(expected[key].split()):
            out.append(f"{kind} {name!r} (altered)")
    return out


def match_expression(query: str) -> Optional[str]:
    """The FTS5 query for a text: its words (less ``STOPWORDS``), quoted and ORed; None when no word is left."""
    words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOPWORDS]
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def slot_for(conn, n: int) -> Optional[str]:
    """The table that answers for a generation with ``n`` committed rows (in the caller's read transaction):
    a slot holding exactly those rows, the legacy table, or None when none does (the snapshot is stale)."""
    k = kind(conn)
    if k == "legacy":
        return LEGACY
    row = conn.execute("SELECT slot FROM lexical_state WHERE n = ? ORDER BY slot LIMIT 1", (n,)).fetchone()
    return table(row[0]) if row else None


CHECK_TERMS = 50_000
"""``deep_check`` looks up every term of a table (up to this many; beyond, this many spread evenly)."""


def _lookups(conn, t: str) -> list[str]:
    """Each term's document count by a query (which walks FTS5's term index, ``_idx``) against the count a full
    scan of the index segments gives (``fts5vocab``): FTS5's own integrity check does not notice a damaged term
    index. A query re-tokenises its text (Porter stemming is not idempotent), so each term checked is first put
    through the tokenizer, in a temporary table, and its query's expected count is that of what it becomes."""
    conn.execute(f"CREATE VIRTUAL TABLE temp.{t}_terms USING fts5vocab(main, {t}, 'row')")
    conn.execute(f"CREATE VIRTUAL TABLE temp.{t}_stems USING fts5(term, tokenize='{TOKENIZER}')")
    conn.execute(f"CREATE VIRTUAL TABLE temp.{t}_stemv USING fts5vocab(temp, {t}_stems, 'instance')")
    try:
        docs = dict(conn.execute(f"SELECT term, doc FROM temp.{t}_terms").fetchall())
        step = max(1, -(-len(docs) // CHECK_TERMS))
        terms = sorted(docs)[::step]
        conn.executemany(f"INSERT INTO temp.{t}_stems (rowid, term) VALUES (?, ?)", list(enumerate(terms)))
        became: dict[int, list] = {}
        for token, i in conn.execute(f"SELECT term, doc FROM temp.{t}_stemv"):
            became.setdefault(i, []).append(token)
        wrong = []
        for i, term in enumerate(terms):
            tokens = became.get(i, [])
            if len(tokens) != 1:
                continue
            got = conn.execute(f"SELECT count(*) FROM {t} WHERE {t} MATCH ?",
                               ('"' + term.replace('"', '""') + '"',)).fetchone()[0]
            if got != docs.get(tokens[0], 0):
                wrong.append(term)
    finally:
        for x in ("stemv", "stems", "terms"):
            conn.execute(f"DROP TABLE IF EXISTS temp.{t}_{x}")
    if wrong:
        return [f"{t}: {len(wrong)} of {len(terms)} terms checked are not found as indexed (e.g. {wrong[0]!r}): "
                f"its term index is damaged"]
    return []


def deep_check(conn, n: int) -> list[str]:
    """Problems found by a full check of the lexical side for a generation with ``n`` committed rows: SQLite's
    ``quick_check``, FTS5's ``integrity-check`` of each slot against exactly the rows it should hold, the
    shadow tables, no stray triggers, and a slot that serves ``n``. Empty when all is well."""
    problems = [f"quick_check: {r[0]}" for r in conn.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
    k = kind(conn)
    if k is None:
        return problems
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    tables = [LEGACY] if k == "legacy" else [table(s) for s in SLOTS]
    if k == "legacy":
        missing = {"lexical_insert", "lexical_delete"} - triggers
        if missing:
            problems.append(f"the lexical side's triggers {sorted(missing)} are missing")
    elif triggers:
        problems.append(f"unexpected triggers {sorted(triggers)}")
    for t in tables:
        gone = [f"{t}_{x}" for x in _SHADOWS if f"{t}_{x}" not in names]
        if gone:
            problems.append(f"FTS5 shadow tables {gone} are missing")
            continue
        try:
            conn.execute(f"INSERT INTO {t} ({t}, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as e:
            problems.append(f"{t}: {e}")
            continue
        problems += _lookups(conn, t)
    if k == "slots":
        st = state(conn)
        if sorted(st) != list(SLOTS):
            problems.append(f"lexical_state lists slots {sorted(st)}")
        elif n not in st.values():
            problems.append(f"no lexical slot holds the {n} committed rows (slots hold {st})")
        for s, ns in st.items():
            rows = conn.execute(f"SELECT count(*) FROM {table(s)}_docsize").fetchone()[0]
            if rows != ns:
                problems.append(f"{table(s)} indexes {rows} rows; lexical_state says {ns}")
    return problems
