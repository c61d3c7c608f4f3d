//! Every class of bad input gets a precise gRPC status and message, and the
//! server keeps serving afterwards (no panic, no hang).
use shoal_client::shoal_proto::v1::points_client::PointsClient;
use shoal_client::shoal_proto::v1::*;
use shoal_client::{Client, ClientError, CollectionBuilder, Point, SearchBuilder};
use shoal_tests::{vector, ShoalProcess};
use tonic::Code;

fn expect(r: Result<impl std::fmt::Debug, ClientError>, code: Code, needle: &str) {
    match r {
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), code, "wrong code for {needle:?}: {s:?}");
            assert!(s.message().contains(needle), "message {:?} lacks {needle:?}", s.message());
        }
        Err(other) => panic!("expected {code:?} ({needle}), got {other:?}"),
        Ok(_) => panic!("expected {code:?} ({needle}), got a success"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_precise_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("docs", 4, Metric::Cosine).shards(2).build()).await.unwrap();
    c.upsert("docs", (0..10).map(|i| Point::new(i, vector(i, 4))).collect()).await.unwrap();

    // Collections.
    expect(c.create_collection(CollectionBuilder::new("docs", 4, Metric::Cosine).build()).await, Code::AlreadyExists, "already exists");
    let mut unknown_metric = CollectionBuilder::new("m", 4, Metric::Cosine).build();
    unknown_metric.metric = 42;
    expect(c.create_collection(unknown_metric).await, Code::InvalidArgument, "unknown metric 42");
    expect(c.create_collection(CollectionBuilder::new("m", 4, Metric::Unspecified).build()).await, Code::InvalidArgument, "metric is required");
    expect(c.create_collection(CollectionBuilder::new("m", 0, Metric::Dot).build()).await, Code::InvalidArgument, "dimension 0");
    expect(c.create_collection(CollectionBuilder::new("m", 5000, Metric::Dot).build()).await, Code::InvalidArgument, "dimension 5000");
    expect(c.create_collection(CollectionBuilder::new("bad/name", 4, Metric::Dot).build()).await, Code::InvalidArgument, "contains '/'");
    expect(c.create_collection(CollectionBuilder::new("m", 4, Metric::Dot).replication_factor(3).build()).await, Code::InvalidArgument, "exceeds the 1 nodes");
    expect(c.get_collection("nope").await, Code::NotFound, "collection \"nope\" not found");
    expect(c.delete_collection("nope").await, Code::NotFound, "not found");

    // Upserts.
    expect(c.upsert("nope", vec![Point::new(1u64, vector(1, 4))]).await, Code::NotFound, "collection \"nope\" not found");
    expect(c.upsert("docs", vec![Point::new(1u64, vec![1.0, 2.0])]).await, Code::InvalidArgument, "points[0].vector: vector has 2 dimensions, the collection has 4");
    expect(c.upsert("docs", vec![Point::new(1u64, vector(1, 4)), Point::new(2u64, vec![1.0, f32::NAN, 0.0, 0.0])]).await, Code::InvalidArgument, "points[1].vector: component 1 is NaN");
    expect(c.upsert("docs", vec![Point::new(1u64, vec![f32::INFINITY, 0.0, 0.0, 0.0])]).await, Code::InvalidArgument, "component 0 is inf");
    expect(c.upsert("docs", vec![]).await, Code::InvalidArgument, "upsert batch is empty");
    let big: Vec<Point> = (0..10_001u64).map(|i| Point::new(i, vector(i, 4))).collect();
    expect(c.upsert("docs", big).await, Code::InvalidArgument, "10001 points exceed the batch limit of 10000");
    let bad_uuid = Point { id: PointId { kind: Some(point_id::Kind::Uuid("not-a-uuid".into())) }, vector: vector(1, 4), payload: None, sparse: Default::default(), vectors: Default::default() };
    expect(c.upsert("docs", vec![bad_uuid]).await, Code::InvalidArgument, "not a valid UUID");
    assert_eq!(c.count("docs", None).await.unwrap(), 10, "rejected batches wrote nothing");

    // Searches.
    expect(c.search(SearchBuilder::new("docs", vector(1, 4), 0)).await, Code::InvalidArgument, "top_k 0 is outside 1..=10000");
    expect(c.search(SearchBuilder::new("docs", vector(1, 4), 10_001)).await, Code::InvalidArgument, "top_k 10001");
    expect(c.search(SearchBuilder::new("docs", vector(1, 4), 5).ef(0)).await, Code::InvalidArgument, "ef 0");
    expect(c.search(SearchBuilder::new("docs", vec![1.0; 3], 5)).await, Code::InvalidArgument, "vector has 3 dimensions");
    expect(c.search(SearchBuilder::new("docs", vec![f32::NAN; 4], 5)).await, Code::InvalidArgument, "NaN");
    expect(c.search(SearchBuilder::new("nope", vector(1, 4), 5)).await, Code::NotFound, "not found");
    let malformed = Filter { must: vec![Condition { kind: Some(condition::Kind::Range(RangeCondition { key: "x".into(), ..Default::default() })) }], ..Default::default() };
    expect(c.search(SearchBuilder::new("docs", vector(1, 4), 5).filter(malformed.clone())).await, Code::InvalidArgument, "filter.must[0].range: range has no bound");
    let empty_cond = Filter { should: vec![Condition { kind: None }], ..Default::default() };
    expect(c.search(SearchBuilder::new("docs", vector(1, 4), 5).filter(empty_cond)).await, Code::InvalidArgument, "condition is empty");
    expect(c.count("docs", Some(malformed.clone())).await, Code::InvalidArgument, "range has no bound");
    expect(c.delete_filter("docs", malformed).await, Code::InvalidArgument, "range has no bound");
    expect(c.search_batch("docs", vec![]).await, Code::InvalidArgument, "0 searches");

    // Over the message size limit: the server refuses to decode it.
    let mut raw = PointsClient::connect(format!("http://{}", server.addr)).await.unwrap().max_encoding_message_size(usize::MAX);
    let huge = "x".repeat(65 * 1024 * 1024);
    let p = PointStruct { id: Some(1u64.into()), vector: vector(1, 4), payload: Some(Struct { fields: [("blob".to_string(), Value { kind: Some(value::Kind::StringValue(huge)) })].into() }), sparse: Default::default(), vectors: Default::default() };
    let r = raw.upsert(UpsertPointsRequest { collection: "docs".into(), points: vec![p] }).await;
    let s = r.expect_err("oversized request must be refused");
    assert!(matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange), "{s:?}");
    assert!(s.message().contains("message length too large") || s.message().contains("too large"), "{s:?}");

    // Still serving.
    assert_eq!(c.search(SearchBuilder::new("docs", vector(3, 4), 1)).await.unwrap().len(), 1);
}

/// A `SearchStream` message without a search answers INVALID_ARGUMENT under
/// its tag and the stream goes on; an undecodable message ends the stream
/// with an error status after the searches already sent are answered.
#[tokio::test(flavor = "multi_thread")]
async fn search_stream_bad_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("docs", 4, Metric::Dot).build()).await.unwrap();
    c.upsert("docs", (0..10).map(|i| Point::new(i, vector(i, 4))).collect()).await.unwrap();
    let mut raw = PointsClient::connect(format!("http://{}", server.addr)).await.unwrap().max_encoding_message_size(usize::MAX);
    let search = SearchPointsRequest { collection: "docs".into(), vector: vector(1, 4), top_k: 3, ..Default::default() };
    let msgs = vec![
        SearchStreamRequest { tag: 1, search: None },
        SearchStreamRequest { tag: 2, search: Some(search.clone()) },
        SearchStreamRequest { tag: 3, search: Some(SearchPointsRequest { collection: "nope".into(), ..search.clone() }) },
    ];
    let mut out = raw.search_stream(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let mut got = std::collections::BTreeMap::new();
    while let Some(m) = out.message().await.unwrap() {
        got.insert(m.tag, m);
    }
    assert_eq!(got.len(), 3);
    let e = got[&1].error.as_ref().expect("missing search is an error");
    assert_eq!((e.code, e.message.contains("search: missing")), (Code::InvalidArgument as i32, true), "{e:?}");
    assert!(got[&2].error.is_none());
    assert_eq!(got[&2].results.len(), 3);
    let e = got[&3].error.as_ref().expect("unknown collection is an error");
    assert_eq!(e.code, Code::NotFound as i32, "{e:?}");

    // Over the message size limit: the stream breaks with that status.
    let huge = SearchStreamRequest { tag: 9, search: Some(SearchPointsRequest { collection: "x".repeat(65 * 1024 * 1024), ..search.clone() }) };
    let r = raw.search_stream(tokio_stream::iter(vec![SearchStreamRequest { tag: 8, search: Some(search.clone()) }, huge])).await;
    let status = match r {
        Err(s) => s,
        Ok(resp) => {
            let mut out = resp.into_inner();
            loop {
                match out.message().await {
                    Ok(Some(m)) => assert_eq!(m.tag, 8, "only the search before the bad message is answered"),
                    Ok(None) => panic!("the stream ended without an error"),
                    Err(s) => break s,
                }
            }
        }
    };
    assert!(matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange | Code::Internal), "{status:?}");

    // Still serving.
    assert_eq!(c.search(SearchBuilder::new("docs", vector(3, 4), 1)).await.unwrap().len(), 1);
}

/// Counts the kinds of bad input checked and checks each: a precise code
/// and a message naming the problem.
struct Kinds(usize);

impl Kinds {
    fn check<T: std::fmt::Debug>(&mut self, r: Result<T, tonic::Status>, code: Code, needle: &str) {
        self.0 += 1;
        match r {
            Err(s) => {
                assert_eq!(s.code(), code, "wrong code for {needle:?}: {s:?}");
                assert!(s.message().contains(needle), "message {:?} lacks {needle:?}", s.message());
            }
            Ok(_) => panic!("expected {code:?} ({needle}), got a success"),
        }
    }

    fn client<T: std::fmt::Debug>(&mut self, r: Result<T, ClientError>, code: Code, needle: &str) {
        self.0 += 1;
        expect(r, code, needle);
    }
}

fn st(j: serde_json::Value) -> Struct {
    Struct::try_from(&j).unwrap()
}

/// The bad-input suite over the public API and the node's internal API
/// (at least 40 kinds, each with a precise status), then the process is
/// still serving. Internal requests are what a buggy or hostile peer could
/// send: every one is refused before it reaches the Raft log.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_public_and_internal() {
    use shoal_client::shoal_proto::internal::v1::meta_client::MetaClient;
    use shoal_client::shoal_proto::internal::v1::raft_client::RaftClient;
    use shoal_client::shoal_proto::internal::v1::shard_client::ShardClient;
    use shoal_client::shoal_proto::internal::v1::*;
    use shoal_client::shoal_proto::limits::*;
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    let mut cfg = CollectionBuilder::new("docs", 4, Metric::Dot).build();
    cfg.payload_indexes = vec![PayloadIndexSpec { key: "tags".into(), r#type: PayloadIndexType::Keyword as i32, text: None }];
    c.create_collection(cfg.clone()).await.unwrap();
    c.upsert("docs", (0..10).map(|i| Point::new(i, vector(i, 4))).collect()).await.unwrap();
    let mut k = Kinds(0);

    // Public: collection configs.
    let mut nul = cfg.clone();
    nul.name = "nul".into();
    nul.payload_indexes[0].key = "a\u{0}b".into();
    k.client(c.create_collection(nul.clone()).await, Code::InvalidArgument, "control character");
    nul.payload_indexes[0].key = "x".repeat(MAX_KEY_LEN + 1);
    k.client(c.create_collection(nul.clone()).await, Code::InvalidArgument, "the limit is 256");
    nul.payload_indexes[0].key = "a..b".into();
    k.client(c.create_collection(nul.clone()).await, Code::InvalidArgument, "not a payload path");
    nul.payload_indexes[0].r#type = 99;
    nul.payload_indexes[0].key = "ok".into();
    k.client(c.create_collection(nul.clone()).await, Code::InvalidArgument, "unknown payload index type 99");
    nul.payload_indexes = vec![PayloadIndexSpec { key: "t".into(), r#type: 1, text: None }, PayloadIndexSpec { key: "t".into(), r#type: 1, text: None }];
    k.client(c.create_collection(nul).await, Code::InvalidArgument, "indexed twice");
    let mut hnsw = CollectionBuilder::new("h", 4, Metric::Dot).build();
    hnsw.hnsw = Some(HnswConfig { m: 1000, ..Default::default() });
    k.client(c.create_collection(hnsw).await, Code::InvalidArgument, "hnsw.m");
    let mut shards = CollectionBuilder::new("s", 4, Metric::Dot).build();
    shards.shard_count = MAX_SHARDS + 1;
    k.client(c.create_collection(shards).await, Code::InvalidArgument, "shard_count");

    // Public: payloads.
    let big = Point::new(1u64, vector(1, 4)).payload(serde_json::json!({"text": "x".repeat(MAX_PAYLOAD_BYTES)}));
    k.client(c.upsert("docs", vec![big]).await, Code::InvalidArgument, "points[0].payload: payload is");
    let mut deep = serde_json::json!(1);
    for _ in 0..MAX_PAYLOAD_DEPTH + 2 {
        deep = serde_json::json!({ "d": deep });
    }
    k.client(c.upsert("docs", vec![Point::new(1u64, vector(1, 4)).payload(deep)]).await, Code::InvalidArgument, "levels deep");
    let tags: Vec<String> = (0..=MAX_INDEXED_VALUES).map(|i| format!("t{i}")).collect();
    k.client(c.upsert("docs", vec![Point::new(1u64, vector(1, 4)).payload(serde_json::json!({ "tags": tags }))]).await, Code::InvalidArgument, "indexed field \"tags\" holds 1025 values");
    let no_id = PointStruct { id: None, vector: vector(1, 4), payload: None, sparse: Default::default(), vectors: Default::default() };
    let mut raw = PointsClient::connect(format!("http://{}", server.addr)).await.unwrap();
    k.check(raw.upsert(UpsertPointsRequest { collection: "docs".into(), points: vec![no_id] }).await, Code::InvalidArgument, "point id is missing");

    // Public: filters and deletes.
    let f = |c: condition::Kind| Filter { must: vec![Condition { kind: Some(c) }], ..Default::default() };
    let ctrl = f(condition::Kind::Exists(ExistsCondition { key: "a\tb".into() }));
    k.client(c.search(SearchBuilder::new("docs", vector(1, 4), 5).filter(ctrl.clone())).await, Code::InvalidArgument, "control character");
    k.client(c.count("docs", Some(f(condition::Kind::MatchAny(MatchAnyCondition { key: "k".into(), ..Default::default() })))).await, Code::InvalidArgument, "match_any lists no keywords");
    k.client(c.count("docs", Some(f(condition::Kind::Range(RangeCondition { key: "k".into(), lt: Some(1.0), lte: Some(2.0), ..Default::default() })))).await, Code::InvalidArgument, "both lt and lte");
    k.client(c.count("docs", Some(f(condition::Kind::HasId(HasIdCondition { ids: vec![PointId { kind: None }] })))).await, Code::InvalidArgument, "has_id.ids[0]");
    k.client(c.delete_filter("docs", Filter::default()).await, Code::InvalidArgument, "without conditions would delete every point");
    k.check(raw.delete(DeletePointsRequest { collection: "docs".into(), selector: Some(delete_points_request::Selector::All(false)) }).await, Code::InvalidArgument, "must be true");
    k.check(raw.delete(DeletePointsRequest { collection: "docs".into(), selector: None }).await, Code::InvalidArgument, "delete needs ids or a filter");
    let too_many: Vec<PointId> = (0..MAX_IDS_PER_REQUEST as u64 + 1).map(Into::into).collect();
    k.client(c.get("docs", too_many, false, false).await, Code::InvalidArgument, "10001");
    k.check(raw.scroll(ScrollPointsRequest { collection: "docs".into(), limit: MAX_SCROLL_LIMIT + 1, ..Default::default() }).await, Code::InvalidArgument, "limit");
    let searches: Vec<SearchBuilder> = (0..MAX_SEARCH_BATCH + 1).map(|_| SearchBuilder::new("docs", vector(1, 4), 1)).collect();
    k.client(c.search_batch("docs", searches).await, Code::InvalidArgument, "1025 searches");
    assert_eq!(c.count("docs", None).await.unwrap(), 10, "nothing refused was written or deleted");

    // Internal: Shard.
    let ich = tonic::transport::Endpoint::from_shared(format!("http://{}", server.internal)).unwrap().connect().await.unwrap();
    let mut shard = ShardClient::new(ich.clone()).max_encoding_message_size(usize::MAX);
    let sref = Some(ShardRef { collection: "docs".into(), shard_id: 0, epoch: 0 });
    let pt = |i: u64| PointStruct { id: Some(i.into()), vector: vector(i, 4), payload: None, sparse: Default::default(), vectors: Default::default() };
    k.check(shard.write(ShardWriteRequest { shard: None, upserts: vec![pt(1)], ..Default::default() }).await, Code::InvalidArgument, "shard reference is missing");
    k.check(shard.write(ShardWriteRequest { shard: Some(ShardRef { collection: "nope".into(), shard_id: 0, epoch: 0 }), upserts: vec![pt(1)], ..Default::default() }).await, Code::NotFound, "nope");
    k.check(shard.write(ShardWriteRequest { shard: Some(ShardRef { collection: "docs".into(), shard_id: 77, epoch: 0 }), upserts: vec![pt(1)], ..Default::default() }).await, Code::NotFound, "77");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), upserts: vec![pt(1)], delete_ids: vec![2u64.into()], ..Default::default() }).await, Code::InvalidArgument, "upserts or deletes, not both");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), batch: vec![ShardWriteRequest::default()], ..Default::default() }).await, Code::InvalidArgument, "formed by the node");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), control: Some(Default::default()), ..Default::default() }).await, Code::InvalidArgument, "formed by the node");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), delete_filter: Some(Filter::default()), ..Default::default() }).await, Code::InvalidArgument, "set delete_all");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), upserts: vec![pt(1)], request_id: vec![1; 5], ..Default::default() }).await, Code::InvalidArgument, "not 5");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), upserts: vec![PointStruct { payload: Some(st(serde_json::json!({"b": "x".repeat(MAX_PAYLOAD_BYTES)}))), ..pt(1) }], ..Default::default() }).await, Code::InvalidArgument, "payload is");
    let heavy: Vec<PointStruct> = (0..3000u64).map(|i| PointStruct { payload: Some(st(serde_json::json!({"b": "y".repeat(4000)}))), ..pt(i) }).collect();
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), upserts: heavy, ..Default::default() }).await, Code::InvalidArgument, "the limit is 8388608");
    k.check(shard.write(ShardWriteRequest { shard: sref.clone(), upserts: vec![PointStruct { vector: vec![1.0; 3], ..pt(1) }], ..Default::default() }).await, Code::InvalidArgument, "3 dimensions");
    let search = SearchPointsRequest { vector: vector(1, 4), top_k: 3, ..Default::default() };
    k.check(shard.search(ShardSearchRequest { shard: sref.clone(), searches: vec![] }).await, Code::InvalidArgument, "0 searches");
    k.check(shard.search(ShardSearchRequest { shard: sref.clone(), searches: vec![SearchPointsRequest { top_k: 0, ..search.clone() }] }).await, Code::InvalidArgument, "searches[0].top_k");
    k.check(shard.search(ShardSearchRequest { shard: sref.clone(), searches: vec![SearchPointsRequest { filter: Some(ctrl), ..search.clone() }] }).await, Code::InvalidArgument, "control character");
    k.check(shard.scroll(ShardScrollRequest { shard: sref.clone(), limit: MAX_SCROLL_LIMIT + 1, ..Default::default() }).await, Code::InvalidArgument, "exceeds");
    k.check(shard.get(ShardGetRequest { shard: None, ..Default::default() }).await, Code::InvalidArgument, "shard reference is missing");
    // A peer's Get with far more ids than any coordinator sends.
    let many: Vec<PointId> = (0..200_000u64).map(PointId::from).collect();
    k.check(shard.get(ShardGetRequest { shard: sref.clone(), ids: many, ..Default::default() }).await, Code::InvalidArgument, "200000 ids is more than 10000");

    // Internal: Raft.
    let mut raft = RaftClient::new(ich.clone());
    k.check(raft.append_entries(RaftRequest { group: "nope/0".into(), payload: vec![] }).await, Code::NotFound, "nope/0");
    k.check(raft.append_entries(RaftRequest { group: "docs/0".into(), payload: vec![0xff; 7] }).await, Code::InvalidArgument, "raft message could not be decoded");
    k.check(raft.vote(RaftRequest { group: "docs/0".into(), payload: vec![1, 2, 3] }).await, Code::InvalidArgument, "raft message could not be decoded");
    k.check(raft.install_snapshot(RaftRequest { group: "docs/0".into(), payload: vec![] }).await, Code::InvalidArgument, "raft message could not be decoded");
    k.check(raft.pre_vote(RaftRequest { group: "docs/0".into(), payload: vec![] }).await, Code::InvalidArgument, "raft message could not be decoded");
    k.check(raft.pre_vote(RaftRequest { group: "nope/0".into(), payload: vec![] }).await, Code::NotFound, "nope/0");
    // A snapshot chunk far past what was received: openraft would seek
    // there and grow the metadata group's in-memory snapshot to a TiB.
    let chunk = |offset: u64, len: usize| {
        let req = openraft::raft::InstallSnapshotRequest::<shoal_node::raft::TypeConfig> {
            vote: openraft::Vote::new_committed(1 << 40, 99),
            meta: openraft::SnapshotMeta { snapshot_id: "evil".into(), ..Default::default() },
            offset,
            data: vec![7; len],
            done: false,
        };
        postcard::to_stdvec(&req).unwrap()
    };
    k.check(raft.install_snapshot(RaftRequest { group: "meta".into(), payload: chunk(1 << 40, 1) }).await, Code::InvalidArgument, "past the 0 bytes received");
    k.check(raft.install_snapshot(RaftRequest { group: "docs/0".into(), payload: chunk(u64::MAX, 2) }).await, Code::InvalidArgument, "past the 0 bytes received");

    // Internal: Meta.
    let mut meta = MetaClient::new(ich);
    k.check(meta.register_node(RegisterNodeRequest { node_id: 9, address: String::new(), incarnation: 0 }).await, Code::InvalidArgument, "address is empty");
    k.check(meta.shard_digest(ShardDigestRequest { collection: "nope".into(), shard_id: 0 }).await, Code::NotFound, "nope");
    k.check(meta.create_collection(CreateCollectionRequest { config: Some(CollectionConfig { name: "bad name".into(), dimension: 4, metric: 1, ..Default::default() }) }).await, Code::InvalidArgument, "contains ' '");
    k.check(meta.create_collection(CreateCollectionRequest { config: None }).await, Code::InvalidArgument, "config");

    assert!(k.0 >= 40, "{} kinds of bad input checked", k.0);
    println!("{} kinds of bad input (public and internal) answered precisely", k.0);
    // Still serving, and nothing refused reached storage.
    assert_eq!(c.count("docs", None).await.unwrap(), 10);
    assert_eq!(c.search(SearchBuilder::new("docs", vector(3, 4), 1)).await.unwrap().len(), 1);
    assert_eq!(c.delete_all("docs").await.unwrap(), 10, "the explicit selector deletes everything");
    assert_eq!(c.count("docs", None).await.unwrap(), 0);
}

/// A node registered at an address nobody answers (issue 15, internal
/// plane): the registration ends with `UNAVAILABLE` (it held the metadata
/// lock forever, and with it every metadata change), the node is not made
/// a voter, and metadata changes go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_at_a_dead_address_does_not_hold_up_metadata_changes() {
    use shoal_client::shoal_proto::internal::v1::meta_client::MetaClient;
    use shoal_client::shoal_proto::internal::v1::*;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let ich = tonic::transport::Endpoint::from_shared(format!("http://{}", server.internal)).unwrap().connect().await.unwrap();
    let mut meta = MetaClient::new(ich);
    let started = Instant::now();
    let mut req = tonic::Request::new(RegisterNodeRequest { node_id: 77, address: "127.0.0.1:1".into(), incarnation: 0 });
    req.set_timeout(Duration::from_secs(30));
    Kinds(0).check(meta.register_node(req).await, Code::Unavailable, "caught up");
    assert!(started.elapsed() < Duration::from_secs(20), "registration took {:?}", started.elapsed());
    let mut req = tonic::Request::new(CreateCollectionRequest { config: Some(CollectionConfig { name: "after".into(), dimension: 4, metric: 1, shard_count: 1, replication_factor: 1, ..Default::default() }) });
    req.set_timeout(Duration::from_secs(10));
    meta.create_collection(req).await.expect("a metadata change after the stuck registration");
}

/// Requests whose cost is far beyond their size are bounded (issue 14,
/// request amplification): a batch of 1,024 searches × top_k 10,000, a
/// filter of 100,000 conditions or a 100,000-value `match_any` are refused
/// up front; answers with large payloads end at the message limit
/// (`RESOURCE_EXHAUSTED` for search and get, shorter pages for scroll)
/// instead of being built in full.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("h", 4, Metric::Dot).shards(2).build()).await.unwrap();
    // 300 points with 200 KB payloads: 60 MB, more than one message.
    let blob = "z".repeat(200_000);
    for b in 0..10u64 {
        c.upsert("h", (b * 30..b * 30 + 30).map(|i| Point::new(i, vector(i, 4)).payload(serde_json::json!({"i": i, "blob": blob}))).collect()).await.unwrap();
    }
    assert_eq!(c.count("h", None).await.unwrap(), 300);

    let batch: Vec<SearchBuilder> = (0..1024).map(|i| SearchBuilder::new("h", vector(i, 4), 10_000)).collect();
    expect(c.search_batch("h", batch).await, Code::InvalidArgument, "the limit is 4194304");
    let wide = Filter { should: (0..100_000).map(|i| Condition { kind: Some(condition::Kind::Exists(ExistsCondition { key: format!("k{i}") })) }).collect(), ..Default::default() };
    expect(c.count("h", Some(wide)).await, Code::InvalidArgument, "more than 1024 conditions");
    let any = Filter { must: vec![Condition { kind: Some(condition::Kind::MatchAny(MatchAnyCondition { key: "i".into(), integers: (0..100_000).collect(), ..Default::default() })) }], ..Default::default() };
    expect(c.search(SearchBuilder::new("h", vector(1, 4), 5).filter(any)).await, Code::InvalidArgument, "more than 65536 values");

    expect(c.search(SearchBuilder::new("h", vector(1, 4), 300).with_payload()).await, Code::ResourceExhausted, "lower top_k or leave payloads or vectors out");
    expect(c.get("h", (0..300u64).map(Into::into).collect(), true, false).await, Code::ResourceExhausted, "ask for fewer ids");
    // Scroll pages end early and go on from where they stopped.
    let mut seen = 0;
    let mut offset = None;
    let mut pages = 0;
    loop {
        let r = c.scroll(ScrollPointsRequest { collection: "h".into(), limit: 300, offset, with_payload: true, ..Default::default() }).await.unwrap();
        assert!(r.points.len() < 300, "a page of 60 MB was built");
        seen += r.points.len();
        pages += 1;
        match r.next_offset {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, 300, "every point once over {pages} pages");
    // Without payloads the same requests are fine.
    assert_eq!(c.search(SearchBuilder::new("h", vector(1, 4), 300)).await.unwrap().len(), 300);
    assert_eq!(c.get("h", (0..300u64).map(Into::into).collect(), false, false).await.unwrap().len(), 300);
}
