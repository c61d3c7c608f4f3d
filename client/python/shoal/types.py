"""Typed results."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

PointId = Union[int, str]
"""A point id: an unsigned 64-bit integer or a UUID string."""


@dataclass(frozen=True)
class ScoredPoint:
    """A search hit. Cosine and dot: a similarity (higher is closer); L2: the Euclidean distance (lower is closer)."""

    id: PointId
    score: float
    payload: Optional[Dict[str, Any]] = None
    vector: Optional[List[float]] = None


@dataclass(frozen=True)
class Record:
    """A stored point."""

    id: PointId
    payload: Optional[Dict[str, Any]] = None
    vector: Optional[List[float]] = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    metric: str
    shard_count: int
    replication_factor: int
    points_count: int
    storage: str
    payload_indexes: Dict[str, str] = field(default_factory=dict)
