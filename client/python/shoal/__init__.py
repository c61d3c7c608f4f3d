"""Python client for Shoal, a distributed vector database.

- :class:`Client` and :class:`AsyncClient`: collections and points over
  Shoal's public gRPC API, with payloads as plain dicts, vectors as lists
  or numpy arrays, filters in the JSON form of docs/filters.md.
- :mod:`shoal.errors`: one exception class per gRPC status.
- :mod:`shoal.types`: the typed results (dataclasses).
- ``shoal.v1``: the protobuf and gRPC stubs, generated from proto/ when the
  package is built (never edited by hand).
"""
from .client import AsyncClient, Client
from .errors import ShoalError
from .types import CollectionInfo, PointId, Record, ScoredPoint

__all__ = ["Client", "AsyncClient", "ShoalError", "CollectionInfo", "PointId", "Record", "ScoredPoint"]
