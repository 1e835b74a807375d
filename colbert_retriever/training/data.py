"""Training data formats.

* JSONL, one object a line: ``{"query", "positive", "negatives": [...]}`` (contrastive) or
  ``{"query", "passages": [...], "scores": [...]}`` (distillation; ``passages[0]`` is taken as the positive for the
  contrastive part, as in colbert-ai's scored triples).
* colbert-ai: a triples file (JSONL lists ``[qid, pid_pos, pid_neg, ...]`` or ``[qid, [pid, score], ...]``, or TSV
  ``qid<TAB>pid_pos<TAB>pid_neg``) with ``collection.tsv`` (``pid<TAB>text``) and ``queries.tsv`` (``qid<TAB>text``).

Malformed lines raise ``InvalidArgument`` naming the file and line number.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InvalidArgument


@dataclass(frozen=True)
class Example:
    query: str
    passages: tuple  # passages[0] is the positive
    scores: Optional[tuple] = None  # teacher scores, one per passage


def _bad(path, lineno, why):
    return InvalidArgument(f"{path}:{lineno}: {why}")


def _text(x, path, lineno, what):
    if not isinstance(x, str) or not x.strip():
        raise _bad(path, lineno, f"{what} must be a non-empty string")
    return x


def _from_object(obj, path, lineno) -> Example:
    if not isinstance(obj, dict):
        raise _bad(path, lineno, "expected a JSON object")
    q = _text(obj.get("query"), path, lineno, "'query'")
    if "passages" in obj:
        ps, sc = obj["passages"], obj.get("scores")
        if not isinstance(ps, list) or len(ps) < 2:
            raise _bad(path, lineno, "'passages' must be a list of at least 2 texts")
        if not isinstance(sc, list) or len(sc) != len(ps) or not all(isinstance(s, (int, float)) for s in sc):
            raise _bad(path, lineno, "'scores' must be a list of numbers, one per passage")
        return Example(q, tuple(_text(p, path, lineno, "each passage") for p in ps), tuple(float(s) for s in sc))
    if "positive" in obj:
        negs = obj.get("negatives", [])
        if not isinstance(negs, list):
            raise _bad(path, lineno, "'negatives' must be a list")
        return Example(q, (_text(obj["positive"], path, lineno, "'positive'"),
                           *(_text(n, path, lineno, "each negative") for n in negs)))
    raise _bad(path, lineno, "needs 'positive' (+ 'negatives') or 'passages' + 'scores'")


def _read_tsv(path: Path) -> dict[str, str]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (colbert-ai format needs collection.tsv and queries.tsv)")
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) < 2:
                raise _bad(path, lineno, "expected id<TAB>text")
            out[row[0]] = row[1]
    return out


def load_examples(path, collection: Optional[str] = None, queries: Optional[str] = None) -> list[Example]:
    """Read training examples. ``collection``/``queries`` (or collection.tsv/queries.tsv beside ``path``) switch to
    colbert-ai's id-based triples."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist")
    coll_path = Path(collection) if collection else path.parent / "collection.tsv"
    q_path = Path(queries) if queries else path.parent / "queries.tsv"
    id_based = collection is not None or (coll_path.exists() and q_path.exists())
    coll = _read_tsv(coll_path) if id_based else None
    qs = _read_tsv(q_path) if id_based else None
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not id_based:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _bad(path, lineno, f"not valid JSON ({e.msg})") from None
                out.append(_from_object(obj, path, lineno))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = line.rstrip("\n").split("\t")
            if not isinstance(row, list) or len(row) < 3:
                raise _bad(path, lineno, "a triple needs a query id and at least 2 passage ids")
            qid, rest = str(row[0]), row[1:]
            pids = [str(r[0]) if isinstance(r, list) else str(r) for r in rest]
            scores = [float(r[1]) for r in rest] if all(isinstance(r, list) and len(r) >= 2 for r in rest) else None
            if qid not in qs:
                raise _bad(path, lineno, f"query id {qid!r} is not in {q_path}")
            missing = [p for p in pids if p not in coll]
            if missing:
                raise _bad(path, lineno, f"passage ids {missing[:5]} are not in {coll_path}")
            out.append(Example(qs[qid], tuple(coll[p] for p in pids), tuple(scores) if scores else None))
    if not out:
        raise InvalidArgument(f"{path} holds no training examples")
    n = {len(e.passages) for e in out}
    if len(n) != 1:
        raise InvalidArgument(f"{path}: every example needs the same number of passages; found {sorted(n)}")
    return out
