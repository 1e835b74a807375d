"""Typed result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Hit:
    """One search result. ``id`` is the user's string id; ``rank`` is 1-based. ``score`` is the mode's own score:
    MaxSim (ColBERT and BM25-then-MaxSim modes: the sum over query tokens of each one's best cosine, 0 to the
    number of query tokens), BM25 (FTS5, unbounded) or the fused score (hybrid: see ``Index.search``).
    ``relevance`` is the same ranking on a 0..1 scale in every mode: MaxSim / query tokens (the mean best cosine,
    clipped to 0..1; comparable across queries), BM25 / the query's best BM25 (1 for the top hit), or the fused
    score / its maximum. For a document indexed as passages (``truncate="chunk"``), ``text`` is its best-scoring
    passage and ``passage`` that passage's number (0-based); otherwise ``text`` is the document and ``passage``
    None."""

    id: str
    score: float
    rank: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    passage: Optional[int] = None
    relevance: Optional[float] = None


@dataclass(frozen=True)
class Record:
    """A stored document as ``Index.get`` returns it: the user's id, text and metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
