"""What ``build_sharded`` reads, as a Ray Dataset of documents: ``id``, ``text`` (may be empty with precomputed
embeddings), ``metadata`` (JSON) and ``shard``, plus the embeddings column when there is one. Nothing is collected
on the driver: files are read by Ray Data's tasks and every batch is checked and routed where it is read.

Inputs: a Ray Dataset; a BEIR folder (``corpus.jsonl[.gz]``); ``.jsonl[.gz]`` files; ``.parquet`` files or a
folder of them; or, for small collections, texts in memory (``ids``/``metadatas`` beside them). Rows follow the
rule of ``colbert-retriever index``: the id is ``_id`` or ``id``, the text is ``text`` with ``title`` before it
(``evaluation.join_title``), every other field is metadata (a Dataset's or Parquet file's nulls are fields the row
lacks); rows with no text are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import _validate
from ..errors import InvalidArgument, InvalidType
from ..evaluation import join_title
from . import chunks
from .routing import shard_of

ID_FIELDS = ("_id", "id")
LIGHT_CPUS = 0.25
"""Ray CPUs a reading or routing task asks for: light work, which must find room beside the encoders even when
they reserve nearly every CPU of a small cluster."""


def _paths(data: Any) -> Optional[list[Path]]:
    if isinstance(data, (str, Path)):
        return [Path(data)]
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, Path) for p in data):
        return list(data)
    return None


def _files(paths: list[Path]) -> tuple[str, list[str]]:
    """("jsonl" | "parquet", the files) for paths given by the caller."""
    files = []
    for p in paths:
        if p.is_dir():
            corpus = [c for c in (p / "corpus.jsonl", p / "corpus.jsonl.gz") if c.exists()]
            jsonl = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.jsonl.gz"))
            found = corpus[:1] or sorted(p.glob("*.parquet")) or jsonl
            if not found:
                raise InvalidArgument(f"{p} has no corpus.jsonl[.gz] (BEIR), .parquet or .jsonl files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"data file {p} does not exist")
    kinds = {"parquet" if f.suffix == ".parquet" else "jsonl" if f.name.endswith((".jsonl", ".jsonl.gz", ".json"))
             else "?" for f in files}
    if len(kinds) != 1 or "?" in kinds:
        raise InvalidArgument(f"give .jsonl[.gz] or .parquet files (or a BEIR folder), of one kind; got "
                              f"{sorted(f.name for f in files)[:5]}")
    return kinds.pop(), [str(f.resolve()) for f in files]


def dataset(ray, data: Any, ids: Optional[Sequence[str]], metadatas: Optional[Sequence[dict]],
            embeddings_column: Optional[str]):
    """The caller's ``data`` as a Ray Dataset of raw rows, and what each row is ("json": a line of JSONL text,
    "row": a record of fields)."""
    import ray.data

    if isinstance(data, ray.data.Dataset):
        if ids is not None or metadatas is not None:
            raise InvalidArgument("with a Ray Dataset, ids and metadata are its columns (id, text, other fields)")
        return data, "row"
    paths = _paths(data)
    if paths is not None:
        if ids is not None or metadatas is not None:
            raise InvalidArgument("with files, ids and metadata are their fields (_id or id, text, other fields)")
        kind, files = _files(paths)
        if kind == "parquet":
            return ray.data.read_parquet(files, num_cpus=LIGHT_CPUS), "row"
        gz = {"compression": "gzip"} if all(f.endswith(".gz") for f in files) else None
        return ray.data.read_text(files, arrow_open_stream_args=gz, num_cpus=LIGHT_CPUS), "json"
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):  # texts in memory
        texts = _validate.texts_list(list(data), "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        metadatas = _validate.metadata_list(metadatas, len(texts))
        items = [{"id": i, "text": t, "metadata": json.dumps(m, ensure_ascii=False)}
                 for i, t, m in zip(ids, texts, metadatas)]
        return ray.data.from_items(items), "memory"
    raise InvalidType(f"data must be a Ray Dataset, a path (BEIR folder, .jsonl[.gz], .parquet) or a list of texts, "
                      f"got {type(data).__name__}")


class Normalize:
    """Ray Data batch function: raw rows -> ``id``, ``text``, ``metadata`` (JSON), ``shard``, each row checked (a
    missing id or text, metadata JSON cannot hold: an error naming the row). With an embeddings column, the rows
    come out encoded (``chunks.pack_embeddings``: the columns the shards take)."""

    def __init__(self, kind: str, num_shards: int, embeddings_column: Optional[str] = None,
                 dim: Optional[int] = None):
        self.kind, self.num_shards, self.emb, self.dim = kind, num_shards, embeddings_column, dim

    def _records(self, batch) -> list[dict]:
        """The batch (a pyarrow Table: nulls stay None, numbers stay exact) as Python rows."""
        rows = batch.to_pylist()
        if self.kind != "json":
            return rows
        out = []
        for row in rows:
            line = row["text"]
            try:
                parsed = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise InvalidArgument(f"a line of the data is not valid JSON ({e}): {line[:80]!r}") from None
            if not isinstance(parsed, dict):
                raise InvalidArgument(f"each line of the data must be a JSON object: {line[:80]!r}")
            out.append(parsed)
        return out

    def __call__(self, batch) -> dict:
        ids, texts, metas, embs = [], [], [], []
        for row in self._records(batch):
            if self.kind == "memory":
                id_, text, meta = row["id"], row["text"], json.loads(row["metadata"])
            else:
                id_ = row.get("_id", row.get("id"))
                if id_ is None or (self.emb is None and "text" not in row):
                    raise InvalidArgument(f"each document needs '_id' (or 'id') and 'text'; got fields "
                                          f"{sorted(row)[:8]}")
                text = join_title(row.get("title", "") or "", row.get("text", "") or "")
                meta = {k: v for k, v in row.items() if k not in ("_id", "id", "text", self.emb)
                        and not (v is None and self.kind == "row")}  # a column's nulls: fields the row lacks
            if self.emb is not None:
                if self.emb not in row:
                    raise InvalidArgument(f"document {id_!r} has no {self.emb!r} column (its embeddings)")
                embs.append(row[self.emb])
            elif not text:
                continue  # as `colbert-retriever index` does
            ids.append(str(id_))
            texts.append(text)
            metas.append(meta)
        metas = [json.dumps(m, ensure_ascii=False) for m in _validate.metadata_list(metas, len(metas))]
        if self.emb is not None:
            return chunks.pack_embeddings(ids, embs, texts, metas, self.num_shards, self.dim)
        return {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object),
                "metadata": np.array(metas, dtype=object),
                "shard": np.array([shard_of(i, self.num_shards) for i in ids], dtype=np.int64)}
