"""Argument checks shared by the public entry points. Each error names the offending value."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import InvalidArgument, InvalidType


def texts_list(texts: Any, what: str = "texts", allow_empty_list: bool = False) -> list[str]:
    """A str becomes [str]; a list/tuple of non-empty strings passes; anything else is refused by name."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        try:
            texts = list(texts)
        except TypeError:
            raise InvalidType(f"{what} must be a string or a list of strings, got {type(texts).__name__}") from None
    if not texts and not allow_empty_list:
        raise InvalidArgument(f"{what} is empty: give at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidType(f"{what}[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise InvalidArgument(f"{what}[{i}] is empty or whitespace only")
    return list(texts)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {value}")
    return value


def ids_list(ids: Any, n: int, what: str = "ids") -> list[str]:
    if ids is None:
        raise InvalidArgument(f"{what} is None")
    if isinstance(ids, str):
        ids = [ids]
    ids = list(ids)
    if len(ids) != n:
        raise InvalidArgument(f"{what} has {len(ids)} entries but there are {n} texts")
    out = []
    for i, x in enumerate(ids):
        if isinstance(x, bool) or not isinstance(x, (str, int)):
            raise InvalidType(f"{what}[{i}] is {type(x).__name__}; ids are strings (ints are converted)")
        s = str(x)
        if not s:
            raise InvalidArgument(f"{what}[{i}] is an empty string")
        out.append(s)
    seen = set()
    dups = sorted({x for x in out if x in seen or seen.add(x)})
    if dups:
        raise InvalidArgument(f"duplicate ids in {what}: {dups[:10]}")
    return out


def metadata_list(metadatas: Any, n: int) -> list[dict]:
    import json

    if metadatas is None:
        return [{} for _ in range(n)]
    metadatas = list(metadatas)
    if len(metadatas) != n:
        raise InvalidArgument(f"metadatas has {len(metadatas)} entries but there are {n} texts")
    for i, m in enumerate(metadatas):
        if m is None:
            metadatas[i] = {}
            continue
        if not isinstance(m, dict):
            raise InvalidType(f"metadatas[{i}] is {type(m).__name__}, expected dict")
        for key, value in m.items():
            if not isinstance(key, str):
                raise InvalidType(f"metadatas[{i}] has a non-string key {key!r}")
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise InvalidType(
                    f"metadatas[{i}][{key!r}] is {type(value).__name__}, which is not JSON-serialisable"
                ) from None
    return metadatas


