"""Conversions between plain Python values and Shoal's protobuf messages.

Payloads are Shoal's own ``Struct``/``Value`` (not ``google.protobuf.Struct``):
``bool`` is checked before ``int`` (a ``bool`` is an ``int`` in Python),
integers stay integers (``sint64``), and floats are doubles. Filters take
the JSON form ``shoalctl --filter`` takes (docs/filters.md).
"""
from __future__ import annotations

import math
import numbers
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .types import PointId
from .v1 import common_pb2 as common
from .v1 import points_pb2 as points

_I64 = (-(2**63), 2**63 - 1)


def value(v: Any, path: str = "payload") -> common.Value:
    """A payload value as ``shoal.v1.Value``."""
    if v is None:
        return common.Value(null_value=common.NULL_VALUE)
    if isinstance(v, (bool, np.bool_)):
        return common.Value(bool_value=bool(v))
    if isinstance(v, (numbers.Integral, np.integer)):
        i = int(v)
        if not _I64[0] <= i <= _I64[1]:
            raise ValueError(f"{path}: integer {i} does not fit in 64 bits")
        return common.Value(integer_value=i)
    if isinstance(v, (numbers.Real, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{path}: {f} is not a finite number")
        return common.Value(double_value=f)
    if isinstance(v, str):
        return common.Value(string_value=v)
    if isinstance(v, Mapping):
        return common.Value(struct_value=struct(v, path))
    if isinstance(v, (list, tuple, np.ndarray)):
        return common.Value(list_value=common.ListValue(values=[value(x, f"{path}[{i}]") for i, x in enumerate(v)]))
    raise TypeError(f"{path}: {type(v).__name__} is not a payload type (None, bool, int, float, str, list, dict)")


def struct(d: Mapping[str, Any], path: str = "payload") -> common.Struct:
    """A payload dict as ``shoal.v1.Struct``."""
    s = common.Struct()
    for k, v in d.items():
        if not isinstance(k, str):
            raise TypeError(f"{path}: key {k!r} is not a string")
        s.fields[k].CopyFrom(value(v, f"{path}.{k}"))
    return s


def from_value(v: common.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "bool_value":
        return v.bool_value
    if kind == "integer_value":
        return v.integer_value
    if kind == "double_value":
        return v.double_value
    if kind == "string_value":
        return v.string_value
    if kind == "list_value":
        return [from_value(x) for x in v.list_value.values]
    return from_struct(v.struct_value)


def from_struct(s: common.Struct) -> Dict[str, Any]:
    return {k: from_value(v) for k, v in s.fields.items()}


def point_id(i: PointId) -> common.PointId:
    if isinstance(i, (bool, np.bool_)):
        raise TypeError(f"point id {i!r} is a bool, not an integer or UUID string")
    if isinstance(i, (numbers.Integral, np.integer)):
        n = int(i)
        if not 0 <= n < 2**64:
            raise ValueError(f"point id {n} is not an unsigned 64-bit integer")
        return common.PointId(num=n)
    if isinstance(i, uuid.UUID):
        return common.PointId(uuid=str(i))
    if isinstance(i, str):
        try:
            # The server answers in the canonical lower-case form.
            return common.PointId(uuid=str(uuid.UUID(i)))
        except ValueError:
            raise ValueError(f"point id {i!r} is not a UUID") from None
    raise TypeError(f"point id {i!r} is not an integer or a UUID string")


def from_point_id(p: common.PointId) -> PointId:
    return p.num if p.WhichOneof("kind") == "num" else p.uuid


def _is_number(x: Any) -> bool:
    return isinstance(x, (numbers.Real, np.floating, np.integer)) and not isinstance(x, (bool, np.bool_))


def _list(x: Any, what: str) -> Sequence[Any]:
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{what} must be an array")
    return x


def _str(x: Any, what: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{what} takes a string, not {x!r}")
    return x


def _bounds(b: Any, what: str, check: Any) -> Dict[str, Any]:
    if not isinstance(b, Mapping):
        raise ValueError(f"{what} must be an object")
    unknown = set(b) - {"gt", "gte", "lt", "lte"}
    if unknown:
        raise ValueError(f"{what} bounds are gt, gte, lt and lte, not {sorted(unknown)}")
    return {k: check(v, f"{what} bound {k}") for k, v in b.items()}


def _number(v: Any, what: str) -> float:
    if not _is_number(v):
        raise ValueError(f"{what} must be a number, not {v!r}")
    return float(v)


def _count(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)) or not 0 <= int(v) < 2**32:
        raise ValueError(f"{what} must be a count, not {v!r}")
    return int(v)


def _geo(g: Any) -> common.GeoPoint:
    if not isinstance(g, Mapping) or not _is_number(g.get("lat")) or not _is_number(g.get("lon")):
        raise ValueError(f"geo point {g!r} needs numeric lat and lon")
    return common.GeoPoint(lat=float(g["lat"]), lon=float(g["lon"]))


def condition(c: Mapping[str, Any]) -> common.Condition:
    """One condition of a filter's JSON form."""
    if not isinstance(c, Mapping):
        raise ValueError(f"a condition must be an object, not {c!r}")
    if "filter" in c:
        if not isinstance(c["filter"], Mapping):
            raise ValueError("a nested filter must be an object")
        return common.Condition(filter=filter_(c["filter"]))
    if "has_id" in c:
        return common.Condition(has_id=common.HasIdCondition(ids=[point_id(i) for i in _list(c["has_id"], "has_id")]))
    key = c.get("key")
    if not isinstance(key, str):
        raise ValueError(f"condition {dict(c)!r} has no string 'key'")
    if "match" in c:
        m = c["match"]
        if isinstance(m, (bool, np.bool_)):
            return common.Condition(match=common.MatchCondition(key=key, boolean=bool(m)))
        if isinstance(m, (numbers.Integral, np.integer)) and _I64[0] <= int(m) <= _I64[1]:
            return common.Condition(match=common.MatchCondition(key=key, integer=int(m)))
        if isinstance(m, (numbers.Real, np.floating)):
            return common.Condition(match=common.MatchCondition(key=key, float=float(m)))
        if isinstance(m, str):
            return common.Condition(match=common.MatchCondition(key=key, keyword=m))
        raise ValueError(f"match value {m!r} must be a string, integer, float or bool")
    if "match_any" in c:
        values = _list(c["match_any"], "match_any")
        kw = [x for x in values if isinstance(x, str)]
        ints = [int(x) for x in values if isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))]
        if len(kw) + len(ints) != len(values) or any(not _I64[0] <= i <= _I64[1] for i in ints):
            raise ValueError("match_any values must be strings or 64-bit integers")
        return common.Condition(match_any=common.MatchAnyCondition(key=key, keywords=kw, integers=ints))
    if "range" in c:
        return common.Condition(range=common.RangeCondition(key=key, **_bounds(c["range"], "range", _number)))
    if "prefix" in c:
        return common.Condition(match=common.MatchCondition(key=key, prefix=_str(c["prefix"], "prefix")))
    for name, mode in (("text", common.TEXT_MATCH_ALL), ("text_any", common.TEXT_MATCH_ANY), ("phrase", common.TEXT_MATCH_PHRASE)):
        if name in c:
            return common.Condition(text=common.TextCondition(key=key, text=_str(c[name], name), mode=mode))
    if "values_count" in c:
        return common.Condition(values_count=common.ValuesCountCondition(key=key, **_bounds(c["values_count"], "values_count", _count)))
    if "is_empty" in c:
        return common.Condition(is_empty=common.IsEmptyCondition(key=key))
    if "datetime_range" in c:
        # RFC 3339 strings (with a time zone), as the server parses them.
        return common.Condition(datetime_range=common.DatetimeRangeCondition(key=key, **_bounds(c["datetime_range"], "datetime_range", _str)))
    if "geo_radius" in c:
        g = c["geo_radius"]
        if not isinstance(g, Mapping):
            raise ValueError("geo_radius must be an object")
        return common.Condition(geo_radius=common.GeoRadiusCondition(key=key, center=_geo(g), radius_m=_number(g.get("radius_m"), "geo_radius radius_m")))
    if "geo_bounding_box" in c:
        g = c["geo_bounding_box"]
        if not isinstance(g, Mapping):
            raise ValueError("geo_bounding_box must be an object")
        return common.Condition(geo_bounding_box=common.GeoBoundingBoxCondition(key=key, top_left=_geo(g.get("top_left")), bottom_right=_geo(g.get("bottom_right"))))
    if "geo_polygon" in c:
        return common.Condition(geo_polygon=common.GeoPolygonCondition(key=key, exterior=[_geo(p) for p in _list(c["geo_polygon"], "geo_polygon")]))
    if "exists" in c:
        return common.Condition(exists=common.ExistsCondition(key=key))
    if "is_null" in c:
        return common.Condition(is_null=common.IsNullCondition(key=key))
    raise ValueError(f"condition {dict(c)!r} needs match, match_any, range, exists, is_null, prefix, text, text_any, phrase, values_count, is_empty, datetime_range or a geo condition")


def filter_(f: Optional[Mapping[str, Any]]) -> Optional[common.Filter]:
    """A filter from its JSON form: ``{"must": [...], "should": [...], "must_not": [...]}``."""
    if f is None:
        return None
    if isinstance(f, common.Filter):
        return f
    if not isinstance(f, Mapping):
        raise ValueError(f"a filter must be an object, not {f!r}")
    unknown = set(f) - {"must", "should", "must_not"}
    if unknown:
        raise ValueError(f"unknown filter clauses {sorted(unknown)}: expected must, should or must_not")
    return common.Filter(**{k: [condition(c) for c in _list(f.get(k, []), k)] for k in ("must", "should", "must_not")})


def matrix(vectors: Any, what: str = "vectors") -> np.ndarray:
    """Vectors as a C-contiguous float32 2-D array (one row per vector)."""
    a = np.ascontiguousarray(vectors, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (one row per vector), not {a.ndim}-D")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return a


def points_from_arrays(ids: Sequence[PointId], vectors: np.ndarray, payloads: Optional[Sequence[Optional[Mapping[str, Any]]]]) -> List[points.PointStruct]:
    """PointStructs for a batch: ids, an (n, dim) array and optional payloads."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if payloads is not None and len(payloads) != len(ids):
        raise ValueError(f"{len(payloads)} payloads for {len(ids)} ids")
    # One tolist() for the whole array: the per-row conversion to Python
    # floats happens in numpy, not in a Python loop.
    rows = vectors.tolist()
    out = []
    for i, (pid, row) in enumerate(zip(ids, rows)):
        p = points.PointStruct(id=point_id(pid), vector=row)
        pl = payloads[i] if payloads is not None else None
        if pl is not None:
            p.payload.CopyFrom(struct(pl, f"payloads[{i}]"))
        out.append(p)
    return out
