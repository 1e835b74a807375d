"""Metadata filters: a small dialect (close to LangChain/Chroma) compiled to SQL with bound parameters over the JSON
metadata column of the document store. Pure functions, no database: unit-testable alone.

List-valued fields (``{"tags": ["a", "b"]}``) match element-wise, as in MongoDB and Qdrant: ``{"tags": "a"}`` and
every comparison hold when some element satisfies them, ``$in`` when some element is among the values, ``$ne`` and
``$nin`` when no element is; ``$contains`` requires the field to be a list holding the value (LlamaIndex's
``CONTAINS``; its ``ANY`` is ``$in`` and ``ALL`` an ``$and`` of ``$contains``)."""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import InvalidArgument, InvalidType

_FIELD = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FILTER_OPERATORS = sorted(list(_OPS) + ["$in", "$nin", "$contains", "$and", "$or", "$not", "$exists"])
MAX_FILTER_DEPTH = 32
"""Nesting limit of ``$and``/``$or``/``$not`` and nested keys in a filter."""
MAX_FILTER_CONDITIONS = 256
"""Limit on the number of conditions in one filter (SQLite's expression-tree limit is near 1,000); use ``$in``
(up to ``MAX_FILTER_VALUES`` values) to match many values of one field."""
MAX_FILTER_VALUES = 10000
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _field_path(field: Any) -> str:
    """The JSON path of a metadata field (validated: it is written into the SQL text)."""
    if not isinstance(field, str):
        raise InvalidType(f"filter keys are metadata field names (str), got {type(field).__name__} {field!r}")
    if not _FIELD.fullmatch(field):
        raise InvalidArgument(f"filter field {field!r} is not a valid metadata key (letters, digits, _ - and . only)")
    return "$" + "".join(f'."{p}"' for p in field.split("."))


def _some(path: str, test: str) -> str:
    """True when the field's value (a scalar), or some element of it (a list), satisfies ``test`` on ``value``;
    false when the field is missing. One ``json_each`` (a scalar gives one row with no key; a list one row per
    element, integer keys; an object's members are not elements)."""
    return (f"EXISTS (SELECT 1 FROM json_each(metadata, '{path}') WHERE (key IS NULL OR typeof(key) = 'integer') "
            f"AND {test})")


def _scalar(value: Any, field: str, op: str):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidArgument(f"filter value for {field!r} {op} is {value}, outside the 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"filter value for {field!r} {op} is {value}; NaN and infinity match nothing")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"filter value for {field!r} {op} holds a lone surrogate (not valid Unicode)"
                                  ) from None
        return value
    if value is None:
        return value
    raise InvalidType(f"filter value for {field!r} {op} is {type(value).__name__}; use str, int, float, bool or None")


def compile_filter(flt: Any) -> tuple[str, list]:
    """Translate a metadata filter into SQL with bound parameters.

    Dialect (close to LangChain/Chroma): ``{"field": value}`` (equality), ``{"field": {"$eq"|"$ne"|"$gt"|"$gte"|
    "$lt"|"$lte": value}}``, ``{"field": {"$in"|"$nin": [values]}}``, ``{"field": {"$contains": value}}``,
    ``{"field": {"$exists": bool}}``, ``{"$and": [filters]}``, ``{"$or": [filters]}``, ``{"$not": filter}``.
    Several keys in one dict are ANDed. Nested keys use dots (``"a.b"``). A list-valued field matches element-wise
    (see the module docstring: ``{"tags": "a"}`` matches ``tags=["a", "b"]``). A field that a document lacks
    matches nothing (except ``$exists: False``, ``$ne`` and ``$nin``, which it satisfies). Limits:
    ``MAX_FILTER_DEPTH`` levels, ``MAX_FILTER_CONDITIONS`` conditions, ``MAX_FILTER_VALUES`` values in one
    ``$in``/``$nin``.
    """
    budget = [MAX_FILTER_CONDITIONS]
    return _compile(flt, 0, budget)


def _compile(flt: Any, depth: int, budget: list) -> tuple[str, list]:
    if not isinstance(flt, dict):
        raise InvalidType(f"filter must be a dict, got {type(flt).__name__}")
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument(f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")
    if not flt:
        return "1", []

    def spend(n: int = 1):
        budget[0] -= n
        if budget[0] < 0:
            raise InvalidArgument(f"filter has more than {MAX_FILTER_CONDITIONS} conditions; use $in for many values "
                                  f"of one field")

    parts, params = [], []
    for key, cond in flt.items():
        if not isinstance(key, str):
            raise InvalidType(f"filter keys are metadata field names or operators (str), got "
                              f"{type(key).__name__} {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise InvalidArgument(f"{key} takes a non-empty list of filters, got {cond!r}")
            spend(len(cond))
            subs = [_compile(c, depth + 1, budget) for c in cond]
            parts.append("(" + f" {key[1:].upper()} ".join(f"({w})" for w, _ in subs) + ")")
            params += [p for _, ps in subs for p in ps]
        elif key == "$not":
            w, ps = _compile(cond, depth + 1, budget)
            parts.append(f"NOT ({w})")
            params += ps
        elif key.startswith("$"):
            raise InvalidArgument(f"unknown filter operator {key!r}; known operators: {FILTER_OPERATORS}")
        else:
            path = _field_path(key)
            col = f"json_extract(metadata, '{path}')"
            conds = cond if isinstance(cond, dict) and any(str(k).startswith("$") for k in cond) else {"$eq": cond}
            for op, value in conds.items():
                spend()
                if op in _OPS or op == "$contains":
                    if value is None and op != "$contains":
                        parts.append(f"{col} IS {'NOT ' if op == '$ne' else ''}NULL")
                        continue
                    if isinstance(value, (list, tuple, set, dict)):
                        raise InvalidType(f"filter {key!r} {op} takes a scalar, got {type(value).__name__}")
                    if value is None:
                        raise InvalidType(f"filter {key!r} $contains takes a str, int, float or bool, got None")
                    if op == "$ne":
                        parts.append(f"NOT {_some(path, 'value = ?')}")
                    elif op == "$contains":
                        parts.append(f"json_type(metadata, '{path}') = 'array' AND {_some(path, 'value = ?')}")
                    else:
                        parts.append(_some(path, f"value {_OPS[op]} ?"))
                    params.append(_scalar(value, key, op))
                elif op in ("$in", "$nin"):
                    if not isinstance(value, (list, tuple, set)):
                        raise InvalidArgument(f"filter {key!r} {op} takes a list, got {type(value).__name__}")
                    if len(value) > MAX_FILTER_VALUES:
                        raise InvalidArgument(f"filter {key!r} {op} has {len(value)} values; at most "
                                              f"{MAX_FILTER_VALUES}")
                    vals = [_scalar(v, key, op) for v in value]
                    if not vals:
                        parts.append("0" if op == "$in" else "1")
                        continue
                    ph = ",".join("?" * len(vals))
                    some = _some(path, f"value IN ({ph})")
                    parts.append(some if op == "$in" else f"NOT {some}")
                    params += vals
                elif op == "$exists":
                    if not isinstance(value, bool):
                        raise InvalidType(f"filter {key!r} $exists takes True or False, got {value!r}")
                    parts.append(f"{col} IS {'NOT ' if value else ''}NULL")
                else:
                    raise InvalidArgument(f"unknown filter operator {op!r} on {key!r}; known operators: "
                                          f"{FILTER_OPERATORS}")
    return " AND ".join(f"({p})" for p in parts), params
