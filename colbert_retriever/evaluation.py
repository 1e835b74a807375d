"""BEIR-layout loading and retrieval metrics (nDCG@k with linear gains, MRR@k, Recall@k), checked against ranx
in the tests."""

from __future__ import annotations

import csv
import gzip
import json
import math
import time
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
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidArgument(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InvalidArgument(f"{path}:{lineno}: expected a JSON object")
            yield row


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


def load_documents(path: Path, limit: Optional[int] = None) -> tuple[list[str], list[str], list[dict], str]:
    """Documents from a BEIR folder, a .jsonl[.gz] file or a folder of text files. Returns ids, texts,
    metadatas and the layout found ("beir", "jsonl" or "text")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if (path / "corpus.jsonl").exists() or (path / "corpus.jsonl.gz").exists():
            return (*load_corpus(path, limit), "beir")
        return (*load_text_folder(path, limit), "text")
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise InvalidArgument(f"{path}: expected a BEIR folder, a .jsonl[.gz] file or a folder of text files")
    return (*load_corpus(path, limit), "jsonl")


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


def metrics(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """run: query id -> ranked doc ids. Averages over the queries in qrels that have a relevant document."""
    out = {"ndcg@10": [], "mrr@10": [], "recall@10": [], "recall@100": []}
    for qid, rels in qrels.items():
        relevant = {d for d, r in rels.items() if r > 0}
        if not relevant:
            continue
        ranked = [d for d in run.get(qid, []) if d != qid]
        gains = [rels.get(d, 0) if rels.get(d, 0) > 0 else 0 for d in ranked[:10]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out["ndcg@10"].append(dcg / idcg if idcg else 0.0)
        rr = next((1.0 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0)
        out["mrr@10"].append(rr)
        out["recall@10"].append(len(relevant & set(ranked[:10])) / len(relevant))
        out["recall@100"].append(len(relevant & set(ranked[:100])) / len(relevant))
    return {k: float(np.mean(v)) if v else 0.0 for k, v in out.items()}


def evaluate(index, folder: Path, k: int = 100, **search_kwargs) -> dict:
    """Search every judged query one at a time (latency includes encoding) and compute metrics."""
    queries = load_queries(folder)
    qrels = load_qrels(folder)
    qids = [q for q in queries if q in qrels]
    run, lat = {}, []
    index.search(queries[qids[0]], k=k, **search_kwargs)  # warm-up
    for qid in qids:
        t0 = time.perf_counter()
        hits = index.search(queries[qid], k=k, **search_kwargs)
        lat.append((time.perf_counter() - t0) * 1000)
        run[qid] = [h.id for h in hits]
    m = metrics(run, qrels)
    m.update({"latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
              "num_queries": len(qids), "k": k})
    return m
