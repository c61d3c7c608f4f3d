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
        other => panic!("expected {code:?} ({needle}), got {other:?}"),
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
    let bad_uuid = Point { id: PointId { kind: Some(point_id::Kind::Uuid("not-a-uuid".into())) }, vector: vector(1, 4), payload: None };
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
    let p = PointStruct { id: Some(1u64.into()), vector: vector(1, 4), payload: Some(Struct { fields: [("blob".to_string(), Value { kind: Some(value::Kind::StringValue(huge)) })].into() }) };
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
