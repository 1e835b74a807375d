"""Which shard holds a document: a stable hash of its id (the same in every process, Python version and machine),
so every write (build, add, upsert, delete, get) knows the one shard an id can live in, and an id is never stored
in two shards."""

from __future__ import annotations

import hashlib
from typing import Sequence

ROUTING = "blake2b-64"
"""The manifest's name for ``shard_of``'s rule (a different rule would need another name)."""


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard of ``doc_id``: the first 8 bytes of its BLAKE2b digest (UTF-8), big-endian, modulo
    ``num_shards``."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def split(ids: Sequence[str], num_shards: int) -> dict[int, list[int]]:
    """Shard -> positions in ``ids`` of the documents it holds, in order (shards with none left out)."""
    out: dict[int, list[int]] = {}
    for pos, doc_id in enumerate(ids):
        out.setdefault(shard_of(doc_id, num_shards), []).append(pos)
    return dict(sorted(out.items()))
