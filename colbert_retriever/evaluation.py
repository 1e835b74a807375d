"""BEIR-layout loading and retrieval metrics (nDCG@k with linear gains, MRR@k, Recall@k), checked against ranx
in the tests."""

from __future__ import annotations

import csv
import gzip
import json
import math
import time
import zlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import InvalidArgument

TITLE_JOIN = "title. text"


def join_title(title: str, text: str) -> str:
    title, text = (title or "").strip(), (text or "").strip()
    if title and text:
        return f"{title}. {text}"
    return title or text


def read_jsonl(path: Path) -> Iterator[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidArgument(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise InvalidArgument(f"{path}:{lineno}: JSON nested too deeply") from None
                if not isinstance(row, dict):
                    raise InvalidArgument(f"{path}:{lineno}: expected a JSON object")
                yield row
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InvalidArgument(f"{path}: not a readable gzip file after line {lineno} ({e})") from None
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{path}:{lineno + 1}: not UTF-8 text (byte {e.start})") from None


def load_corpus(path: Path, limit: Optional[int] = None) -> tuple[list[str], list[str], list[dict]]:
    """A BEIR folder (corpus.jsonl[.gz]) or a .jsonl[.gz] file of {_id|id, title?, text}. Returns ids, texts,
    metadatas (extra fields, plus ``title``)."""
    path = Path(path)
    if path.is_dir():
        cands = [path / "corpus.jsonl", path / "corpus.jsonl.gz"]
        found = [c for c in cands if c.exists()]
        if not found:
            raise InvalidArgument(f"{path} has no corpus.jsonl or corpus.jsonl.gz")
        path = found[0]
    elif not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    ids, texts, metas = [], [], []
    for lineno, row in enumerate(read_jsonl(path), 1):
        id_ = row.get("_id", row.get("id"))
        if id_ is None or "text" not in row:
            raise InvalidArgument(f"{path}:{lineno}: each object needs '_id' (or 'id') and 'text'")
        text = join_title(row.get("title", ""), row.get("text", ""))
        if not text:
            continue
        ids.append(str(id_))
        texts.append(text)
        metas.append({k: v for k, v in row.items() if k not in ("_id", "id", "text")})
        if limit and len(ids) >= limit:
            break
    if not ids:
        raise InvalidArgument(f"{path} holds no documents")
    return ids, texts, metas


TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def load_text_folder(path: Path, limit: Optional[int] = None) -> tuple[list[str], list[str], list[dict]]:
    """A folder of text files (``TEXT_SUFFIXES``, searched recursively, hidden ones skipped): one document per
    file, id = the path relative to the folder (with /), metadata ``{"path": id}``. Empty files are skipped."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    ids, texts, metas = [], [], []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgument(f"{f}: not UTF-8 text (byte {e.start})") from None
        if not text.strip():
            continue
        rel = f.relative_to(path).as_posix()
        ids.append(rel), texts.append(text), metas.append({"path": rel})
        if limit and len(ids) >= limit:
            break
    if not ids:
        raise InvalidArgument(f"{path} holds no corpus.jsonl and no non-empty text files ({', '.join(TEXT_SUFFIXES)})")
    return ids, texts, metas


FORMATS = ("auto", "beir", "jsonl", "text", "colbert", "lotte")


def detect_format(path: Path) -> str:
    """The layout of ``path``: "beir" (corpus.jsonl[.gz] [+ queries.jsonl, qrels/test.tsv]), "colbert" (colbert-ai's
    collection.tsv [+ queries.tsv, qrels*]), "lotte" (collection.tsv + questions.<split>.tsv + qas.<split>.jsonl),
    "jsonl" (a .jsonl[.gz] file), "tsv" (a collection.tsv-style file) or "text" (a folder of text files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return "jsonl"
        if path.name.endswith(".tsv"):
            return "tsv"
        raise InvalidArgument(f"{path}: expected a .jsonl[.gz] or .tsv file, or a folder (BEIR, colbert-ai TSV, "
                              f"LoTTE, or text files)")
    if (path / "corpus.jsonl").exists() or (path / "corpus.jsonl.gz").exists():
        return "beir"
    if (path / "collection.tsv").exists():
        return "lotte" if any(path.glob("qas.*.jsonl")) else "colbert"
    return "text"


def read_collection_tsv(path: Path, limit: Optional[int] = None) -> tuple[list[str], list[str], list[dict]]:
    """colbert-ai's collection.tsv: ``pid<TAB>passage[<TAB>title]`` per line (a header line ``id...`` is skipped);
    a title is joined as "title. text" and kept in the metadata."""
    ids, texts, metas = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise InvalidArgument(f"{path}:{lineno}: expected pid<TAB>passage[<TAB>title]")
            if lineno == 1 and parts[0].lower() in ("id", "pid", "_id", "docid"):
                continue
            title = parts[2] if len(parts) > 2 else ""
            text = join_title(title, parts[1])
            if not text:
                continue
            ids.append(parts[0].strip()), texts.append(text), metas.append({"title": title} if title else {})
            if limit and len(ids) >= limit:
                break
    if not ids:
        raise InvalidArgument(f"{path} holds no passages")
    return ids, texts, metas


def load_documents(path: Path, limit: Optional[int] = None, format: str = "auto"
                   ) -> tuple[list[str], list[str], list[dict], str]:
    """Documents from a BEIR folder, a .jsonl[.gz] file, a colbert-ai or LoTTE folder (collection.tsv) or a
    collection .tsv file, or a folder of text files. Returns ids, texts, metadatas and the layout."""
    path = Path(path)
    if format not in FORMATS:
        raise InvalidArgument(f"format must be one of {FORMATS}, got {format!r}")
    found = detect_format(path)
    layout = found if format == "auto" else format
    if layout in ("colbert", "lotte"):
        tsv = path / "collection.tsv" if path.is_dir() else path
        if not tsv.exists():
            raise InvalidArgument(f"{path}: the {layout} layout needs collection.tsv")
        return (*read_collection_tsv(tsv, limit), layout)
    if found == "tsv":
        return (*read_collection_tsv(path, limit), "colbert")
    if layout == "text":
        if not path.is_dir():
            raise InvalidArgument(f"{path}: the text layout is a folder of text files")
        return (*load_text_folder(path, limit), "text")
    return (*load_corpus(path, limit), "jsonl" if path.is_file() else "beir")


def load_judged(path: Path, format: str = "auto", split: str = "search"
                ) -> tuple[dict[str, str], dict[str, dict[str, int]], str]:
    """Queries and relevance judgments of a judged folder: BEIR (queries.jsonl, qrels/test.tsv), colbert-ai
    (queries.tsv ``qid<TAB>query``; qrels in TREC form ``qid 0 pid rel`` or as ``qid<TAB>pid`` pairs, from
    qrels.tsv, qrels.trec, qrels.test.tsv or qrels.dev.tsv) or LoTTE (questions.<split>.tsv + qas.<split>.jsonl
    with ``answer_pids``; split "search" or "forum"). Returns queries, qrels, layout."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidArgument(f"evaluation needs a folder (BEIR, colbert-ai TSV or LoTTE); {path} is "
                              f"{'a file' if path.exists() else 'missing'}")
    layout = detect_format(path) if format == "auto" else format
    if layout == "beir":
        return load_queries(path), load_qrels(path), layout
    if layout == "lotte":
        if split not in ("search", "forum"):
            raise InvalidArgument(f"LoTTE split must be 'search' or 'forum', got {split!r}")
        queries = _read_pairs(path / f"questions.{split}.tsv")
        qrels = {}
        for lineno, row in enumerate(read_jsonl(path / f"qas.{split}.jsonl"), 1):
            if "qid" not in row or "answer_pids" not in row:
                raise InvalidArgument(f"{path / f'qas.{split}.jsonl'}:{lineno}: needs 'qid' and 'answer_pids'")
            qrels[str(row["qid"])] = {str(p): 1 for p in row["answer_pids"]}
        return queries, qrels, layout
    if layout == "colbert":
        queries = _read_pairs(next((path / n for n in ("queries.tsv", "queries.test.tsv", "queries.dev.tsv")
                                    if (path / n).exists()), path / "queries.tsv"))
        cands = [path / n for n in ("qrels.tsv", "qrels.trec", "qrels.test.tsv", "qrels.dev.tsv", "qrels.txt")]
        qrels_path = next((c for c in cands if c.exists()), None)
        if qrels_path is None:
            raise FileNotFoundError(f"no qrels in {path} (looked for {', '.join(c.name for c in cands)})")
        return queries, _read_trec_qrels(qrels_path), layout
    raise InvalidArgument(f"{path}: no judged queries in the {layout} layout")


def _read_pairs(path: Path) -> dict[str, str]:
    if not path.exists():
        raise FileNotFoundError(f"no queries at {path}")
    out = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2:
                raise InvalidArgument(f"{path}:{lineno}: expected qid<TAB>query")
            out[parts[0].strip()] = parts[1]
    return out


def _read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] in ("query-id", "qid"):
                continue
            if len(parts) == 4:  # TREC: qid iteration pid relevance (colbert-ai: qid 0 pid 1)
                qid, pid, rel = parts[0], parts[2], parts[3]
            elif len(parts) == 3:  # BEIR-like: qid pid relevance
                qid, pid, rel = parts
            elif len(parts) == 2:  # qid pid: relevant
                (qid, pid), rel = parts, "1"
            else:
                raise InvalidArgument(f"{path}:{lineno}: expected 'qid 0 pid rel', 'qid pid rel' or 'qid pid'")
            try:
                qrels.setdefault(qid, {})[pid] = int(float(rel))
            except ValueError:
                raise InvalidArgument(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
    return qrels


def load_queries(folder: Path) -> dict[str, str]:
    return {str(r["_id"]): r["text"] for r in read_jsonl(Path(folder) / "queries.jsonl")}


def load_qrels(folder: Path, split: str = "test") -> dict[str, dict[str, int]]:
    path = Path(folder) / "qrels" / f"{split}.tsv"
    if not path.exists():
        raise FileNotFoundError(f"no qrels at {path}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return qrels


DROP_QUERY_ID_SETS = frozenset({"arguana", "quora"})
"""Collections whose queries are themselves corpus documents: a hit with the query's own id is dropped there (BEIR's
rule). Elsewhere query and document ids are unrelated (cisi, cranfield share numeric ranges by chance) and dropping
would hide real relevant documents."""


def metrics(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], drop_query_id: bool = False
            ) -> dict[str, float]:
    """run: query id -> ranked doc ids. Averages over the queries in qrels that have a relevant document.
    drop_query_id: remove a retrieved id equal to the query id first (BEIR's rule for ArguAna and Quora).
    success@5 (LoTTE's measure): the share of queries with a relevant document in the top 5."""
    out = {"ndcg@10": [], "mrr@10": [], "recall@10": [], "recall@100": [], "success@5": []}
    for qid, rels in qrels.items():
        relevant = {d for d, r in rels.items() if r > 0}
        if not relevant:
            continue
        ranked = [d for d in run.get(qid, []) if not (drop_query_id and d == qid)]
        gains = [rels.get(d, 0) if rels.get(d, 0) > 0 else 0 for d in ranked[:10]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out["ndcg@10"].append(dcg / idcg if idcg else 0.0)
        rr = next((1.0 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0)
        out["mrr@10"].append(rr)
        out["recall@10"].append(len(relevant & set(ranked[:10])) / len(relevant))
        out["recall@100"].append(len(relevant & set(ranked[:100])) / len(relevant))
        out["success@5"].append(1.0 if relevant & set(ranked[:5]) else 0.0)
    return {k: float(np.mean(v)) if v else 0.0 for k, v in out.items()}


def evaluate(index, folder: Path, k: int = 100, *, format: str = "auto", split: str = "search",
             drop_query_id: Optional[bool] = None, **search_kwargs) -> dict:
    """Search every judged query one at a time (latency includes encoding) and compute metrics.
    drop_query_id: None = only for the collections in ``DROP_QUERY_ID_SETS`` (by folder name)."""
    queries, qrels, layout = load_judged(Path(folder), format, split)
    if drop_query_id is None:
        drop_query_id = Path(folder).name.lower() in DROP_QUERY_ID_SETS
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise InvalidArgument(f"{folder}: no query has a relevance judgment")
    run, lat = {}, []
    index.search(queries[qids[0]], k=k, **search_kwargs)  # warm-up
    for qid in qids:
        t0 = time.perf_counter()
        hits = index.search(queries[qid], k=k, **search_kwargs)
        lat.append((time.perf_counter() - t0) * 1000)
        run[qid] = [h.id for h in hits]
    m = metrics(run, qrels, drop_query_id)
    m.update({"latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
              "num_queries": len(qids), "k": k, "layout": layout, "drop_query_id": drop_query_id})
    return m
