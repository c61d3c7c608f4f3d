"""Sync and asyncio clients over Shoal's public gRPC API.

Both take the same arguments and return the same typed results. Every call
retries ``UNAVAILABLE`` (no leader yet, a node restarting, a connection
refused) with exponential backoff, up to ``retries`` more attempts; every
other error raises at once as a :mod:`shoal.errors` class.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import grpc


from . import _convert as cv
from .errors import AlreadyExists, NotFound, from_rpc_error
from .types import CollectionInfo, PointId, Record, ScoredPoint
from .v1 import collections_pb2 as col
from .v1 import collections_pb2_grpc as col_grpc
from .v1 import points_pb2 as pts
from .v1 import points_pb2_grpc as pts_grpc

_METRICS = {"cosine": col.METRIC_COSINE, "dot": col.METRIC_DOT, "l2": col.METRIC_L2}
_STORAGE = {"f32": col.VECTOR_STORAGE_F32, "f16": col.VECTOR_STORAGE_F16, "int8": col.VECTOR_STORAGE_INT8, "binary": col.VECTOR_STORAGE_BINARY}
_INDEX = {"keyword": col.PAYLOAD_INDEX_TYPE_KEYWORD, "numeric": col.PAYLOAD_INDEX_TYPE_NUMERIC, "bool": col.PAYLOAD_INDEX_TYPE_BOOL, "text": col.PAYLOAD_INDEX_TYPE_TEXT, "datetime": col.PAYLOAD_INDEX_TYPE_DATETIME, "geo": col.PAYLOAD_INDEX_TYPE_GEO}
# The server's limits (docs/limits.md): larger upserts are split into
# several requests.
_MAX_REQUEST_BYTES = 48 << 20
_MAX_UPSERT_BATCH = 10_000
_MAX_IDS = 10_000
_MAX_SEARCH_BATCH = 1_024


def _chunks(items: Any, size: int) -> List[Any]:
    """`items` (a sequence or an array) in slices of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _name(table: Mapping[str, int], value: int) -> str:
    return next((k for k, v in table.items() if v == value), str(value))


def _collection_info(c: col.CollectionInfo) -> CollectionInfo:
    cfg = c.config
    return CollectionInfo(
        name=cfg.name,
        dimension=cfg.dimension,
        metric=_name(_METRICS, cfg.metric),
        shard_count=c.shard_count or cfg.shard_count,
        replication_factor=cfg.replication_factor,
        points_count=c.points_count,
        storage=_name(_STORAGE, cfg.storage) if cfg.storage else "f32",
        payload_indexes={i.key: _name(_INDEX, i.type) for i in cfg.payload_indexes},
    )


def _scored(r: pts.ScoredPoint) -> ScoredPoint:
    return ScoredPoint(id=cv.from_point_id(r.id), score=r.score, payload=cv.from_struct(r.payload) if r.HasField("payload") else None, vector=list(r.vector) or None)


def _record(r: pts.RetrievedPoint) -> Record:
    return Record(id=cv.from_point_id(r.id), payload=cv.from_struct(r.payload) if r.HasField("payload") else None, vector=list(r.vector) or None)


def _channel_args() -> List[Tuple[str, Any]]:
    return [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


_LOOPBACK = ("127.", "localhost", "[::1]", "::1")
# Backoff between retries doubles up to this many seconds.
_MAX_BACKOFF = 2.0


def _target(address: str, tls: bool, ca: Optional[bytes], api_key: Optional[str], insecure: bool) -> Tuple[str, Optional[grpc.ChannelCredentials], List[Tuple[str, str]]]:
    """The channel target, its credentials and the call metadata.

    ``https://host:port`` turns TLS on, ``http://host:port`` is plain; an
    API key is never sent in plain text off loopback unless ``insecure``.
    """
    if address.startswith("https://"):
        address, tls = address[len("https://"):], True
    elif address.startswith("http://"):
        address = address[len("http://"):]
    address = address.rstrip("/")
    tls = tls or ca is not None
    metadata = []
    if api_key:
        if not tls and not insecure and not address.startswith(_LOOPBACK):
            raise ValueError(f"refusing to send an API key in plain text to {address}: use tls=True (or an https:// address), or insecure=True")
        metadata.append(("authorization", f"Bearer {api_key.strip()}"))
    return address, (grpc.ssl_channel_credentials(root_certificates=ca) if tls else None), metadata


def _delay(backoff: float, attempt: int) -> float:
    return min(backoff * (2**attempt), _MAX_BACKOFF) * (0.5 + random.random())


class _Requests:
    """Request building shared by both clients."""

    @staticmethod
    def create(name: str, dimension: int, metric: str, shards: int, replication: int, storage: Optional[str], payload_indexes: Optional[Mapping[str, str]]) -> col.CreateCollectionRequest:
        if metric not in _METRICS:
            raise ValueError(f"metric {metric!r}: expected one of {sorted(_METRICS)}")
        if storage is not None and storage not in _STORAGE:
            raise ValueError(f"storage {storage!r}: expected one of {sorted(_STORAGE)}")
        indexes = []
        for key, kind in (payload_indexes or {}).items():
            if kind not in _INDEX:
                raise ValueError(f"payload index {key!r}: type {kind!r} is not one of {sorted(_INDEX)}")
            indexes.append(col.PayloadIndexSpec(key=key, type=_INDEX[kind]))
        cfg = col.CollectionConfig(name=name, dimension=dimension, metric=_METRICS[metric], shard_count=shards, replication_factor=replication, payload_indexes=indexes)
        if storage is not None:
            cfg.storage = _STORAGE[storage]
        return col.CreateCollectionRequest(config=cfg)

    @staticmethod
    def upserts(collection: str, ids: Sequence[PointId], vectors: Any, payloads: Optional[Sequence[Optional[Mapping[str, Any]]]]) -> List[pts.UpsertPointsRequest]:
        m = cv.matrix(vectors)
        batch = cv.points_from_arrays(ids, m, payloads)
        # Split so no request passes the server's message limit.
        out: List[pts.UpsertPointsRequest] = []
        cur: List[pts.PointStruct] = []
        size = 0
        for p in batch:
            n = p.ByteSize() + 8
            if cur and (size + n > _MAX_REQUEST_BYTES or len(cur) == _MAX_UPSERT_BATCH):
                out.append(pts.UpsertPointsRequest(collection=collection, points=cur))
                cur, size = [], 0
            cur.append(p)
            size += n
        if cur:
            out.append(pts.UpsertPointsRequest(collection=collection, points=cur))
        return out

    @staticmethod
    def search(collection: str, vector: Any, k: int, filter: Any, exact: bool, ef: Optional[int], with_payload: bool, with_vector: bool, score_threshold: Optional[float]) -> pts.SearchPointsRequest:
        v = cv.matrix(vector, "vector")
        if v.shape[0] != 1:
            raise ValueError(f"search takes one vector, not {v.shape[0]} (use search_batch)")
        req = pts.SearchPointsRequest(collection=collection, vector=v[0].tolist(), top_k=k, exact=exact, with_payload=with_payload, with_vector=with_vector)
        f = cv.filter_(filter)
        if f is not None:
            req.filter.CopyFrom(f)
        if ef is not None:
            req.ef = ef
        if score_threshold is not None:
            req.score_threshold = score_threshold
        return req

    @staticmethod
    def delete(collection: str, ids: Optional[Sequence[PointId]], filter: Optional[Mapping[str, Any]]) -> pts.DeletePointsRequest:
        if (ids is None) == (filter is None):
            raise ValueError("delete takes ids or a filter (exactly one)")
        if ids is not None:
            return pts.DeletePointsRequest(collection=collection, ids=pts.PointIdList(ids=[cv.point_id(i) for i in ids]))
        return pts.DeletePointsRequest(collection=collection, filter=cv.filter_(filter))


class Client:
    """A blocking client.

    >>> c = Client("127.0.0.1:6333")
    >>> c.create_collection("docs", dimension=384, metric="cosine", payload_indexes={"lang": "keyword"})
    >>> c.upsert("docs", ids=[1, 2], vectors=np.random.rand(2, 384), payloads=[{"lang": "en"}, {"lang": "de"}])
    >>> c.search("docs", np.random.rand(384), k=5, filter={"must": [{"key": "lang", "match": "en"}]})
    """

    def __init__(self, address: str = "127.0.0.1:6333", *, api_key: Optional[str] = None, tls: bool = False, ca_cert: Optional[bytes] = None, insecure: bool = False, timeout: float = 30.0, retries: int = 5, backoff: float = 0.1):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        address, creds, self._metadata = _target(address, tls, ca_cert, api_key, insecure)
        self._channel = grpc.secure_channel(address, creds, options=_channel_args()) if creds else grpc.insecure_channel(address, options=_channel_args())
        self._points = pts_grpc.PointsStub(self._channel)
        self._collections = col_grpc.CollectionsStub(self._channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    err = from_rpc_error(e)
                    err.retried = attempt > 0
                    raise err from None
                time.sleep(_delay(self.backoff, attempt))
        raise AssertionError("unreachable")

    # Collections
    def create_collection(self, name: str, dimension: int, metric: str = "cosine", *, shards: int = 1, replication: int = 1, storage: Optional[str] = None, payload_indexes: Optional[Mapping[str, str]] = None) -> CollectionInfo:
        """Creates a collection. After a retried attempt (an UNAVAILABLE
        whose change may have committed), an existing collection of the
        same dimension and metric counts as created."""
        req = _Requests.create(name, dimension, metric, shards, replication, storage, payload_indexes)
        try:
            return _collection_info(self._call(self._collections.Create, req).collection)
        except AlreadyExists as e:
            if e.retried:
                info = self.get_collection(name)
                if (info.dimension, info.metric) == (dimension, metric):
                    return info
            raise

    def get_collection(self, name: str) -> CollectionInfo:
        return _collection_info(self._call(self._collections.Get, col.GetCollectionRequest(name=name)).collection)

    def list_collections(self) -> List[CollectionInfo]:
        return [_collection_info(c) for c in self._call(self._collections.List, col.ListCollectionsRequest()).collections]

    def delete_collection(self, name: str) -> None:
        """Deletes a collection (after a retried attempt, one already gone counts as deleted)."""
        try:
            self._call(self._collections.Delete, col.DeleteCollectionRequest(name=name))
        except NotFound as e:
            if not e.retried:
                raise

    # Points
    def upsert(self, collection: str, ids: Sequence[PointId], vectors: Any, payloads: Optional[Sequence[Optional[Mapping[str, Any]]]] = None) -> int:
        """Writes points (replacing any with the same id); returns how many. Acknowledged writes are durable and searchable at once (docs/decisions.md)."""
        return sum(self._call(self._points.Upsert, r).affected for r in _Requests.upserts(collection, ids, vectors, payloads))

    def search(self, collection: str, vector: Any, k: int = 10, *, filter: Optional[Mapping[str, Any]] = None, exact: bool = False, ef: Optional[int] = None, with_payload: bool = True, with_vector: bool = False, score_threshold: Optional[float] = None) -> List[ScoredPoint]:
        req = _Requests.search(collection, vector, k, filter, exact, ef, with_payload, with_vector, score_threshold)
        return [_scored(r) for r in self._call(self._points.Search, req).results]

    def search_batch(self, collection: str, vectors: Any, k: int = 10, *, filter: Optional[Mapping[str, Any]] = None, exact: bool = False, ef: Optional[int] = None, with_payload: bool = True, with_vector: bool = False, score_threshold: Optional[float] = None) -> List[List[ScoredPoint]]:
        """One search per row of ``vectors`` (an (n, dim) array), in requests of up to 1,024 searches."""
        m = cv.matrix(vectors)
        # The filter is converted once for every search of the batch.
        f = cv.filter_(filter)
        out: List[List[ScoredPoint]] = []
        for part in _chunks(m, _MAX_SEARCH_BATCH):
            req = pts.SearchBatchRequest(collection=collection, searches=[_Requests.search(collection, row, k, f, exact, ef, with_payload, with_vector, score_threshold) for row in part])
            out.extend([_scored(r) for r in res.results] for res in self._call(self._points.SearchBatch, req).results)
        return out

    def get(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = True, with_vector: bool = False) -> List[Record]:
        """The points among ``ids`` that exist (in requests of up to 10,000 ids)."""
        out: List[Record] = []
        for part in _chunks(list(ids), _MAX_IDS):
            req = pts.GetPointsRequest(collection=collection, ids=[cv.point_id(i) for i in part], with_payload=with_payload, with_vector=with_vector)
            out.extend(_record(r) for r in self._call(self._points.Get, req).points)
        return out

    def delete(self, collection: str, ids: Optional[Sequence[PointId]] = None, *, filter: Optional[Mapping[str, Any]] = None) -> int:
        """Deletes by ids (in requests of up to 10,000) or by filter; returns how many were deleted."""
        if ids is None:
            return self._call(self._points.Delete, _Requests.delete(collection, None, filter)).affected
        return sum(self._call(self._points.Delete, _Requests.delete(collection, part, filter)).affected for part in _chunks(list(ids), _MAX_IDS))

    def count(self, collection: str, filter: Optional[Mapping[str, Any]] = None) -> int:
        req = pts.CountPointsRequest(collection=collection)
        f = cv.filter_(filter)
        if f is not None:
            req.filter.CopyFrom(f)
        return self._call(self._points.Count, req).count


class AsyncClient:
    """The asyncio twin of :class:`Client` (``grpc.aio``): the same methods, awaited."""

    def __init__(self, address: str = "127.0.0.1:6333", *, api_key: Optional[str] = None, tls: bool = False, ca_cert: Optional[bytes] = None, insecure: bool = False, timeout: float = 30.0, retries: int = 5, backoff: float = 0.1):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        address, creds, self._metadata = _target(address, tls, ca_cert, api_key, insecure)
        self._channel = grpc.aio.secure_channel(address, creds, options=_channel_args()) if creds else grpc.aio.insecure_channel(address, options=_channel_args())
        self._points = pts_grpc.PointsStub(self._channel)
        self._collections = col_grpc.CollectionsStub(self._channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Any], request: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    err = from_rpc_error(e)
                    err.retried = attempt > 0
                    raise err from None
                await asyncio.sleep(_delay(self.backoff, attempt))
        raise AssertionError("unreachable")

    async def create_collection(self, name: str, dimension: int, metric: str = "cosine", *, shards: int = 1, replication: int = 1, storage: Optional[str] = None, payload_indexes: Optional[Mapping[str, str]] = None) -> CollectionInfo:
        req = _Requests.create(name, dimension, metric, shards, replication, storage, payload_indexes)
        try:
            return _collection_info((await self._call(self._collections.Create, req)).collection)
        except AlreadyExists as e:
            if e.retried:
                info = await self.get_collection(name)
                if (info.dimension, info.metric) == (dimension, metric):
                    return info
            raise

    async def get_collection(self, name: str) -> CollectionInfo:
        return _collection_info((await self._call(self._collections.Get, col.GetCollectionRequest(name=name))).collection)

    async def list_collections(self) -> List[CollectionInfo]:
        return [_collection_info(c) for c in (await self._call(self._collections.List, col.ListCollectionsRequest())).collections]

    async def delete_collection(self, name: str) -> None:
        try:
            await self._call(self._collections.Delete, col.DeleteCollectionRequest(name=name))
        except NotFound as e:
            if not e.retried:
                raise

    async def upsert(self, collection: str, ids: Sequence[PointId], vectors: Any, payloads: Optional[Sequence[Optional[Mapping[str, Any]]]] = None) -> int:
        total = 0
        for r in _Requests.upserts(collection, ids, vectors, payloads):
            total += (await self._call(self._points.Upsert, r)).affected
        return total

    async def search(self, collection: str, vector: Any, k: int = 10, *, filter: Optional[Mapping[str, Any]] = None, exact: bool = False, ef: Optional[int] = None, with_payload: bool = True, with_vector: bool = False, score_threshold: Optional[float] = None) -> List[ScoredPoint]:
        req = _Requests.search(collection, vector, k, filter, exact, ef, with_payload, with_vector, score_threshold)
        return [_scored(r) for r in (await self._call(self._points.Search, req)).results]

    async def search_batch(self, collection: str, vectors: Any, k: int = 10, *, filter: Optional[Mapping[str, Any]] = None, exact: bool = False, ef: Optional[int] = None, with_payload: bool = True, with_vector: bool = False, score_threshold: Optional[float] = None) -> List[List[ScoredPoint]]:
        m = cv.matrix(vectors)
        # The filter is converted once for every search of the batch.
        f = cv.filter_(filter)
        out: List[List[ScoredPoint]] = []
        for part in _chunks(m, _MAX_SEARCH_BATCH):
            req = pts.SearchBatchRequest(collection=collection, searches=[_Requests.search(collection, row, k, f, exact, ef, with_payload, with_vector, score_threshold) for row in part])
            out.extend([_scored(r) for r in res.results] for res in (await self._call(self._points.SearchBatch, req)).results)
        return out

    async def get(self, collection: str, ids: Sequence[PointId], *, with_payload: bool = True, with_vector: bool = False) -> List[Record]:
        out: List[Record] = []
        for part in _chunks(list(ids), _MAX_IDS):
            req = pts.GetPointsRequest(collection=collection, ids=[cv.point_id(i) for i in part], with_payload=with_payload, with_vector=with_vector)
            out.extend(_record(r) for r in (await self._call(self._points.Get, req)).points)
        return out

    async def delete(self, collection: str, ids: Optional[Sequence[PointId]] = None, *, filter: Optional[Mapping[str, Any]] = None) -> int:
        if ids is None:
            return (await self._call(self._points.Delete, _Requests.delete(collection, None, filter))).affected
        total = 0
        for part in _chunks(list(ids), _MAX_IDS):
            total += (await self._call(self._points.Delete, _Requests.delete(collection, part, filter))).affected
        return total

    async def count(self, collection: str, filter: Optional[Mapping[str, Any]] = None) -> int:
        req = pts.CountPointsRequest(collection=collection)
        f = cv.filter_(filter)
        if f is not None:
            req.filter.CopyFrom(f)
        return (await self._call(self._points.Count, req)).count


__all__ = ["Client", "AsyncClient"]

