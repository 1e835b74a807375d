"""What enters an index: the long-text policy that turns (ids, texts, metadatas) into document-store rows.

A text longer than the model keeps (``doc_maxlen``) is never cut silently: it is indexed as overlapping passages
under its own id ("chunk"), refused before anything is written ("error"), or indexed from its start with a
warning that counts the tokens dropped ("warn").
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

from ..errors import InvalidArgument

TRUNCATE_MODES = ("warn", "error", "chunk")
ON_CONFLICT = ("error", "replace")
IF_EXISTS = ("upsert", "overwrite", "error")
"""What building into a folder that already holds an index means (``Index.build``): the one rule of every entry
point (the CLI, both adapters' ``from_documents``)."""


@dataclasses.dataclass
class Rows:
    """What goes into the document store: one row per document, or per passage of a chunked document."""

    ids: list
    texts: list
    metadatas: list
    spans: Optional[list] = None  # (passage, start, end) per row; None: no passages


def check_mode(name: str, value: str, choices: tuple) -> str:
    if value not in choices:
        raise InvalidArgument(f"{name} must be one of {choices}, got {value!r}")
    return value


def if_exists_mode(if_exists: str, overwrite: Optional[bool] = None) -> str:
    """``if_exists`` checked; ``overwrite=True/False`` is its older spelling ("overwrite" / "error"), deprecated."""
    if overwrite is not None:
        if not isinstance(overwrite, bool):
            raise InvalidArgument(f"overwrite must be True or False, got {overwrite!r}")
        warnings.warn("overwrite= is deprecated: pass if_exists='overwrite' (or 'error')", DeprecationWarning,
                      stacklevel=3)
        return "overwrite" if overwrite else "error"
    return check_mode("if_exists", if_exists, IF_EXISTS)


def prepare_rows(model, ids: list, texts: list, metadatas: list, truncate: str) -> Rows:
    """Apply ``truncate`` to texts longer than the model keeps: "warn" (index the start; the encoder warns with
    the number of tokens dropped), "error" (refuse before anything is written) or "chunk" (passages that fit,
    overlapping, stored under the document's id)."""
    check_mode("truncate", truncate, TRUNCATE_MODES)
    if truncate == "warn":
        return Rows(ids, texts, metadatas)
    room = model.tokenizer.doc_room()
    counts = model.tokenizer.count_tokens(texts)
    long = [i for i, c in enumerate(counts) if c > room]
    if not long:
        return Rows(ids, texts, metadatas)
    if truncate == "error":
        i = long[0]
        raise InvalidArgument(f"{len(long)} text(s) exceed the model's {room} document tokens (doc_maxlen="
                              f"{model.config.doc_maxlen}); texts[{i}] has {counts[i]}. Pass truncate='chunk' to "
                              f"index them as passages, or truncate='warn' to index only their start")
    rows = Rows([], [], [], [])
    for id_, text, meta, n in zip(ids, texts, metadatas, counts):
        spans = model.passage_spans(text) if n > room else [None]
        for j, sp in enumerate(spans):
            rows.ids.append(id_)
            rows.metadatas.append(meta)
            rows.texts.append(text if sp is None else text[sp[0] : sp[1]])
            rows.spans.append(None if sp is None else (j, sp[0], sp[1]))
    return rows
