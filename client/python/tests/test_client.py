"""The SDK against a real `shoal dev`: every call, sync and async, payload
types, filters, errors, retries, large numpy batches, and the same answers
as the Rust SDK (`shoalctl`)."""
import asyncio
import json
import os
import pathlib
import subprocess
import uuid

import numpy as np
import pytest

import shoal
from shoal import errors
from conftest import shoal_bin

DIM = 16
N = 3_000


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def payload(i):
    return {"group": f"g{i % 5}", "i": i, "even": i % 2 == 0, "x": i / 7.0, "tags": ["a", i % 3], "nested": {"flag": True, "n": None}}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def loaded(server, data):
    name = f"py_{uuid.uuid4().hex[:8]}"
    with shoal.Client(server) as c:
        info = c.create_collection(name, dimension=DIM, metric="cosine", payload_indexes={"group": "keyword", "i": "numeric", "even": "bool"})
        assert (info.name, info.dimension, info.metric) == (name, DIM, "cosine")
        assert info.payload_indexes == {"group": "keyword", "i": "numeric", "even": "bool"}
        assert c.upsert(name, ids=list(range(N)), vectors=data, payloads=[payload(i) for i in range(N)]) == N
    return name


def truth(data, q, k, allowed=None):
    sims = unit(data) @ unit(q)
    order = [i for i in np.argsort(-sims, kind="stable") if allowed is None or allowed(i)]
    return order[:k], sims


def test_collections_round_trip(server):
    name = f"py_{uuid.uuid4().hex[:8]}"
    with shoal.Client(server) as c:
        c.create_collection(name, dimension=4, metric="l2", storage="int8")
        assert name in [x.name for x in c.list_collections()]
        info = c.get_collection(name)
        assert (info.metric, info.storage, info.points_count) == ("l2", "int8", 0)
        with pytest.raises(errors.AlreadyExists):
            c.create_collection(name, dimension=4)
        c.delete_collection(name)
        with pytest.raises(errors.NotFound):
            c.get_collection(name)
        with pytest.raises(ValueError):
            c.create_collection(name, dimension=4, metric="hamming")


def test_exact_search_matches_numpy_and_payloads_keep_their_types(server, loaded, data):
    q = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    with shoal.Client(server) as c:
        hits = c.search(loaded, q, k=10, exact=True)
        want, sims = truth(data, q, 10)
        assert [h.id for h in hits] == want
        for h in hits:
            assert abs(h.score - sims[h.id]) < 1e-4
            assert h.payload == payload(h.id)
            assert type(h.payload["even"]) is bool and type(h.payload["i"]) is int and type(h.payload["x"]) is float
        # As a list too, and approximate search finds most of them.
        approx = c.search(loaded, q.tolist(), k=10, ef=128)
        assert len(set(h.id for h in approx) & set(want)) >= 8


def test_filters_count_and_batch(server, loaded, data):
    q = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    f = {"must": [{"key": "group", "match": "g3"}, {"key": "i", "range": {"gte": 500}}], "must_not": [{"key": "even", "match": True}]}
    allowed = lambda i: i % 5 == 3 and i >= 500 and i % 2 == 1  # noqa: E731
    with shoal.Client(server) as c:
        hits = c.search(loaded, q, k=10, filter=f, exact=True)
        assert [h.id for h in hits] == truth(data, q, 10, allowed)[0]
        assert c.count(loaded, filter=f) == sum(1 for i in range(N) if allowed(i))
        assert c.count(loaded) == N
        assert [h.id for h in c.search(loaded, q, k=3, filter={"must": [{"has_id": [5, 17, 2999]}]}, exact=True)] == truth(data, q, 3, lambda i: i in (5, 17, 2999))[0]
        qs = np.random.default_rng(3).standard_normal((6, DIM)).astype(np.float32)
        batch = c.search_batch(loaded, qs, k=5, exact=True)
        assert [[h.id for h in r] for r in batch] == [truth(data, x, 5)[0] for x in qs]
        with pytest.raises(ValueError):
            c.search(loaded, q, filter={"must": [{"key": "group", "equals": "g1"}]})


def test_get_and_delete(server, data):
    name = f"py_{uuid.uuid4().hex[:8]}"
    with shoal.Client(server) as c:
        c.create_collection(name, dimension=DIM, metric="dot", payload_indexes={"group": "keyword"})
        c.upsert(name, ids=list(range(100)), vectors=data[:100], payloads=[payload(i) for i in range(100)])
        got = c.get(name, [3, 4, 1000], with_vector=True)
        assert sorted(r.id for r in got) == [3, 4]
        r3 = next(r for r in got if r.id == 3)
        assert np.allclose(r3.vector, data[3]) and r3.payload == payload(3)
        assert c.delete(name, ids=[3, 4]) == 2
        assert c.delete(name, filter={"must": [{"key": "group", "match": "g1"}]}) == 20  # 1, 6, ..., 96
        assert c.count(name) == 100 - 2 - 20
        with pytest.raises(ValueError):
            c.delete(name)
        uid = str(uuid.uuid4())
        c.upsert(name, ids=[uid], vectors=data[:1])
        assert [r.id for r in c.get(name, [uid])] == [uid]


def test_errors_map_to_classes(server, loaded):
    with shoal.Client(server) as c:
        with pytest.raises(errors.InvalidArgument) as e:
            c.search(loaded, np.zeros(DIM + 1), k=3)
        assert "dimension" in e.value.message.lower()
        with pytest.raises(errors.NotFound):
            c.search("no_such_collection", np.ones(DIM), k=3)
        with pytest.raises(ValueError):
            c.upsert(loaded, ids=[1], vectors=[[float("nan")] * DIM])
        with pytest.raises(TypeError):
            c.upsert(loaded, ids=[1], vectors=np.ones((1, DIM)), payloads=[{"bad": object()}])


def test_unavailable_is_retried_with_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr(shoal.client.time, "sleep", lambda s: sleeps.append(s))
    with shoal.Client("127.0.0.1:1", retries=3, backoff=0.01, timeout=2) as c:
        with pytest.raises(errors.Unavailable):
            c.list_collections()
    assert len(sleeps) == 3, "three retries after the first attempt"
    assert sleeps[2] > sleeps[0], "backing off"


def test_large_numpy_batch_is_split_to_the_server_limits(server):
    name = f"py_{uuid.uuid4().hex[:8]}"
    n = 25_000
    vecs = np.random.default_rng(4).standard_normal((n, 32)).astype(np.float32)
    with shoal.Client(server) as c:
        c.create_collection(name, dimension=32)
        assert c.upsert(name, ids=np.arange(n), vectors=vecs) == n
        assert c.count(name) == n
        hits = c.search(name, vecs[12_345], k=1, exact=True)
        assert hits[0].id == 12_345
        c.delete_collection(name)


def test_async_client(server, loaded, data):
    async def run():
        async with shoal.AsyncClient(server) as c:
            q = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
            hits = await c.search(loaded, q, k=10, exact=True)
            assert [h.id for h in hits] == truth(data, q, 10)[0]
            assert await c.count(loaded, filter={"must": [{"key": "group", "match": "g0"}]}) == N // 5
            name = f"py_{uuid.uuid4().hex[:8]}"
            await c.create_collection(name, dimension=DIM)
            assert await c.upsert(name, ids=[1, 2], vectors=data[:2], payloads=[{"a": True}, None]) == 2
            got = await c.get(name, [1, 2])
            assert {r.id: r.payload for r in got} == {1: {"a": True}, 2: {}}
            batch = await c.search_batch(name, data[:2], k=1, exact=True)
            assert [r[0].id for r in batch] == [1, 2]
            assert await c.delete(name, ids=[1]) == 1
            assert [x.name for x in await c.list_collections()].count(name) == 1
            await c.delete_collection(name)
            with pytest.raises(errors.NotFound):
                await c.get_collection(name)

    asyncio.run(run())


def test_same_answers_as_the_rust_sdk(server, loaded):
    ctl = pathlib.Path(os.environ.get("SHOALCTL_BIN", shoal_bin().with_name("shoalctl")))
    q = np.random.default_rng(6).standard_normal(DIM).astype(np.float32)
    f = {"must": [{"key": "group", "match_any": ["g1", "g2"]}]}
    out = subprocess.run([str(ctl), "--addr", server, "-o", "json", "search", "-c", loaded, "--vector=" + ",".join(repr(float(x)) for x in q), "-k", "7", "--exact", "--with-payload", "--filter", json.dumps(f)], capture_output=True, text=True, check=True).stdout
    rust = json.loads(out.strip().splitlines()[-1])
    rust = rust["results"] if isinstance(rust, dict) else rust
    with shoal.Client(server) as c:
        py = c.search(loaded, q, k=7, exact=True, filter=f)
    assert [h.id for h in py] == [r["id"] for r in rust]
    assert all(abs(h.score - r["score"]) < 1e-6 for h, r in zip(py, rust))
    assert [h.payload for h in py] == [r["payload"] for r in rust]


def test_payloads_absent_unless_asked_and_uuid_ids(server, loaded, data):
    with shoal.Client(server) as c:
        hits = c.search(loaded, data[0], k=2, exact=True, with_payload=False)
        assert hits[0].id == 0 and all(h.payload is None and h.vector is None for h in hits)
        name = f"py_{uuid.uuid4().hex[:8]}"
        c.create_collection(name, dimension=DIM)
        u = uuid.uuid4()
        c.upsert(name, ids=[u, str(u).upper().replace("-", "")], vectors=data[:2])
        assert c.count(name) == 1, "the same UUID written two ways is one point"
        assert [r.id for r in c.get(name, [u])] == [str(u)]
        c.delete_collection(name)


def test_filters_refuse_what_the_rust_parser_refuses():
    from shoal import _convert as cv
    for bad in [
        {"must": [{"key": "s", "match_any": "net"}]},
        {"must": {"key": "s", "match": "x"}},
        {"must": [{"key": "s", "prefix": None}]},
        {"must": [{"key": "s", "text": 3}]},
        {"must": [{"key": "n", "values_count": {"lt": 2.5}}]},
        {"must": [{"key": "n", "range": {"gte": True}}]},
        {"must": [{"key": "n", "range": {"gte": "10"}}]},
        {"must": [{"key": "g", "geo_radius": {"lat": "1", "lon": 2, "radius_m": 5}}]},
        {"must": [{"filter": None}]},
        {"must": [{"has_id": 5}]},
        {"must": [{"key": "s"}]},
        {"any": []},
    ]:
        with pytest.raises(ValueError):
            cv.filter_(bad)
    f = cv.filter_({"must": [{"key": "n", "match": 2**63}], "should": [{"key": "t", "datetime_range": {"gte": "2026-01-01T00:00:00Z"}}]})
    assert f.must[0].match.float == float(2**63), "past 64 bits, a float match (as in Rust)"


def test_large_requests_are_split_under_the_message_limit():
    from shoal.client import _Requests
    reqs = _Requests.upserts("c", list(range(5_000)), np.ones((5_000, 4096), dtype=np.float32), None)
    assert len(reqs) > 1 and sum(len(r.points) for r in reqs) == 5_000
    assert all(r.ByteSize() < 64 << 20 for r in reqs)


def test_api_keys_are_not_sent_in_plain_text_off_loopback():
    with pytest.raises(ValueError):
        shoal.Client("db.example.com:6333", api_key="secret")
    shoal.Client("127.0.0.1:6333", api_key="secret\n").close()
    shoal.Client("db.example.com:6333", api_key="secret", insecure=True).close()
    shoal.Client("https://db.example.com:6333", api_key="secret").close()


def test_ids_and_batches_past_the_server_limits_are_split(server):
    name = f"py_{uuid.uuid4().hex[:8]}"
    n = 10_500
    vecs = np.random.default_rng(8).standard_normal((n, 8)).astype(np.float32)
    with shoal.Client(server) as c:
        c.create_collection(name, dimension=8, metric="l2")
        c.upsert(name, ids=range(n), vectors=vecs)
        assert len(c.get(name, range(n + 10))) == n, "10,510 ids in two requests"
        hits = c.search_batch(name, vecs[:1_100], k=1, exact=True)
        assert [h[0].id for h in hits] == list(range(1_100)), "1,100 searches in two requests, answers in order"
        assert c.delete(name, ids=range(n)) == n
        assert c.count(name) == 0
        c.delete_collection(name)
