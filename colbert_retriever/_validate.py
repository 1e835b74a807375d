"""Argument checks shared by the public entry points. Each error names the offending value."""

from __future__ import annotations

from typing import Any

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
        _utf8(t, f"{what}[{i}]")
    return list(texts)


def _utf8(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"{where} holds a lone surrogate at character {e.start} (not valid Unicode text; "
                              f"decode your input with errors='replace' or fix its encoding)") from None


def path_arg(path: Any, name: str = "path"):
    """An index folder path: str or os.PathLike."""
    import os
    from pathlib import Path

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InvalidType(f"{name} must be a str or os.PathLike folder path, got {type(path).__name__}")
    if isinstance(path, str) and not path.strip():
        raise InvalidArgument(f"{name} is an empty string")
    return Path(path)


def number(value: Any, name: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidType(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be finite, got {value}")
    return float(value)


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidType(f"{name} must be True or False, got {type(value).__name__} ({value!r})")
    return value


def id_selection(ids: Any, what: str = "ids") -> list[str]:
    """Ids naming existing documents (search restriction, delete): a str or a list/tuple/set of str (ints are
    converted). None, bools and other types are refused (never str()-ed into a surprising id)."""
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, (list, tuple, set, frozenset)):
        raise InvalidType(f"{what} must be a string or a list of strings, got {type(ids).__name__}")
    return [_one_id(x, f"{what}[{i}]") for i, x in enumerate(ids)]


def _one_id(x: Any, where: str, allow_empty: bool = True) -> str:
    """One id as stored: a str, or an int converted; never None, a bool or anything else."""
    if isinstance(x, bool) or not isinstance(x, (str, int)):
        raise InvalidType(f"{where} is {type(x).__name__} ({x!r}); ids are strings (ints are converted)")
    s = str(x)
    if not s and not allow_empty:
        raise InvalidArgument(f"{where} is an empty string")
    _utf8(s, where)
    return s


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
    out = [_one_id(x, f"{what}[{i}]", allow_empty=False) for i, x in enumerate(ids)]
    seen = set()
    dups = sorted({x for x in out if x in seen or seen.add(x)})
    if dups:
        raise InvalidArgument(f"duplicate ids in {what}: {dups[:10]}")
    return out


MAX_METADATA_DEPTH = 32
_INT64 = (-(1 << 63), (1 << 63) - 1)


def metadata_list(metadatas: Any, n: int) -> list[dict]:
    """Metadata dicts stored so that every filter can read them back: string keys at every level, finite numbers,
    integers within 64 bits, valid Unicode, JSON values only (dict, list, str, int, float, bool, None). Anything else
    is refused naming the document and the key; the index is never written with it."""
    if metadatas is None:
        return [{} for _ in range(n)]
    if isinstance(metadatas, (dict, str, bytes)):
        raise InvalidType(f"metadatas must be a list of dicts (one per text), got {type(metadatas).__name__}")
    try:
        metadatas = list(metadatas)
    except TypeError:
        raise InvalidType(f"metadatas must be a list of dicts, got {type(metadatas).__name__}") from None
    if len(metadatas) != n:
        raise InvalidArgument(f"metadatas has {len(metadatas)} entries but there are {n} texts")
    for i, m in enumerate(metadatas):
        if m is None:
            metadatas[i] = {}
            continue
        if not isinstance(m, dict):
            raise InvalidType(f"metadatas[{i}] is {type(m).__name__}, expected dict")
        _check_value(m, f"metadatas[{i}]", 0)
    return metadatas


def _check_value(v: Any, where: str, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidArgument(f"{where} is nested deeper than {MAX_METADATA_DEPTH} levels")
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, int):
        if not _INT64[0] <= v <= _INT64[1]:
            raise InvalidArgument(f"{where} is {v}, outside the 64-bit integer range filters can compare; store it "
                                  f"as a string")
    elif isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise InvalidArgument(f"{where} is {v}; NaN and infinity are not JSON and would break filters (use None)")
    elif isinstance(v, str):
        _utf8(v, where)
    elif isinstance(v, dict):
        for key, value in v.items():
            if not isinstance(key, str):
                raise InvalidType(f"{where} has a non-string key {key!r}; metadata keys must be strings")
            _utf8(key, f"{where} key {key!r}")
            _check_value(value, f"{where}[{key!r}]", depth + 1)
    elif isinstance(v, (list, tuple)):
        for j, value in enumerate(v):
            _check_value(value, f"{where}[{j}]", depth + 1)
    else:
        raise InvalidType(f"{where} is {type(v).__name__}, which is not JSON-serialisable")


def lock_timeout(value: Any) -> float:
    """Seconds a writer waits for another (>= 0; 0: do not wait)."""
    value = number(value, "lock_timeout")
    if value < 0:
        raise InvalidArgument(f"lock_timeout must be >= 0 seconds (0: do not wait), got {value}")
    return value
