"""Typed result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Hit:
    """One search result. ``id`` is the user's string id; ``rank`` is 1-based; ``score`` is MaxSim (float).
    For a document indexed as passages (``truncate="chunk"``), ``text`` is its best-scoring passage and
    ``passage`` that passage's number (0-based); otherwise ``text`` is the document and ``passage`` None."""

    id: str
    score: float
    rank: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    passage: Optional[int] = None


@dataclass(frozen=True)
class Record:
    """A stored document as ``Index.get`` returns it: the user's id, text and metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
