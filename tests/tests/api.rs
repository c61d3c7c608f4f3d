//! The public API end to end through the SDK on a real `shoal dev`
//! process, plus the standard health service and server reflection.
use std::collections::BTreeSet;

use serde_json::json;
use shoal_client::shoal_proto::v1::*;
use shoal_client::{filter, Client, CollectionBuilder, Point, SearchBuilder};
use shoal_tests::{vector, ShoalProcess};

fn num(id: &Option<PointId>) -> u64 {
    match id.as_ref().and_then(|i| i.kind.clone()) {
        Some(point_id::Kind::Num(n)) => n,
        other => panic!("expected a numeric id, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_and_point_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    let info = c
        .create_collection(CollectionBuilder::new("items", 8, Metric::Dot).shards(3).index("color", PayloadIndexType::Keyword).index("price", PayloadIndexType::Numeric).build())
        .await
        .unwrap();
    assert_eq!(info.config.as_ref().unwrap().hnsw.as_ref().unwrap().m, 16, "defaults filled in");
    let colors = ["red", "green", "blue"];
    let pts: Vec<Point> = (0..300u64).map(|i| Point::new(i, vector(i, 8)).payload(json!({"color": colors[i as usize % 3], "price": i, "tags": ["t", format!("g{}", i % 7)]}))).collect();
    assert_eq!(c.upsert("items", pts).await.unwrap(), 300);
    let u = uuid::Uuid::from_u128(0xabcdef);
    c.upsert("items", vec![Point::new(u, vector(999, 8)).payload(json!({"color": "red", "price": 5000}))]).await.unwrap();
    assert_eq!(c.count("items", None).await.unwrap(), 301);

    // List and describe.
    let list = c.list_collections().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].points_count, 301);
    assert_eq!(list[0].shard_count, 3);

    // Get, in request order, skipping absent ids, with payloads.
    let got = c.get("items", vec![5u64.into(), 100_000u64.into(), u.into(), 2u64.into()], true, false).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(num(&got[0].id), 5);
    assert_eq!(serde_json::Value::from(got[0].payload.as_ref().unwrap())["color"], json!("blue"));
    assert_eq!(got[1].id.as_ref().unwrap().kind, Some(point_id::Kind::Uuid(u.hyphenated().to_string())));

    // Filtered search across shards.
    let f = filter::from_json(&json!({"must": [{"key": "color", "match": "red"}, {"key": "price", "range": {"lt": 150}}]})).unwrap();
    let hits = c.search(SearchBuilder::new("items", vector(7, 8), 10).filter(f.clone()).with_payload()).await.unwrap();
    assert_eq!(hits.len(), 10);
    for h in &hits {
        let p = serde_json::Value::from(h.payload.as_ref().unwrap());
        assert_eq!(p["color"], json!("red"));
        assert!(p["price"].as_i64().unwrap() < 150);
    }
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    assert_eq!(c.count("items", Some(f.clone())).await.unwrap(), 50);
    let exact = c.search(SearchBuilder::new("items", vector(7, 8), 10).filter(f.clone()).exact(true)).await.unwrap();
    assert_eq!(exact.len(), 10);

    // Search batch answers in request order.
    let batch = c.search_batch("items", vec![SearchBuilder::new("items", vector(1, 8), 3), SearchBuilder::new("", vector(2, 8), 2).exact(true)]).await.unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].len(), 3);
    assert_eq!(batch[1].len(), 2);
    // A long batch's exact searches are scored together (one matrix
    // product per block of rows): the same points, in request order, as
    // the searches one by one, with scores equal up to rounding (the
    // product sums in another order; docs/limits.md states the bound).
    let one = |i: u64| SearchBuilder::new("items", vector(100 + i, 8), 1 + (i % 5) as u32).exact(true);
    let batch = c.search_batch("items", (0..40u64).map(one).collect()).await.unwrap();
    assert_eq!(batch.len(), 40);
    for i in 0..40u64 {
        let single = c.search(one(i)).await.unwrap();
        let got = &batch[i as usize];
        assert_eq!(got.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), single.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), "search {i} of the batch");
        for (a, b) in got.iter().zip(&single) {
            assert!((a.score - b.score).abs() <= 1e-5 * (1.0 + b.score.abs()), "search {i}: score {} in the batch, {} alone", a.score, b.score);
        }
    }

    // Scroll over 3 shards: every point exactly once, in id order.
    let mut seen = vec![];
    let mut offset = None;
    loop {
        let page = c.scroll(ScrollPointsRequest { collection: "items".into(), offset: offset.clone(), limit: 37, ..Default::default() }).await.unwrap();
        assert!(page.points.len() <= 37);
        seen.extend(page.points.iter().map(|p| p.id.clone().unwrap()));
        match page.next_offset {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 301);
    let nums: Vec<u64> = seen[..300].iter().map(|i| num(&Some(i.clone()))).collect();
    assert_eq!(nums, (0..300).collect::<Vec<_>>());
    assert!(matches!(seen[300].kind, Some(point_id::Kind::Uuid(_))), "UUIDs after numbers");

    // Deletes by id and by filter leave search at once.
    assert_eq!(c.delete_ids("items", vec![7u64.into(), 123_456u64.into()]).await.unwrap(), 1);
    let top = c.search(SearchBuilder::new("items", vector(7, 8), 5).exact(true)).await.unwrap();
    assert!(top.iter().all(|h| h.id != Some(7u64.into())));
    let blue = filter::from_json(&json!({"must": [{"key": "color", "match": "blue"}]})).unwrap();
    assert_eq!(c.delete_filter("items", blue.clone()).await.unwrap(), 100);
    assert_eq!(c.count("items", Some(blue)).await.unwrap(), 0);
    assert_eq!(c.count("items", None).await.unwrap(), 200);
    let remaining: BTreeSet<u64> = (0..300).filter(|i| i % 3 != 2 && *i != 7).collect();
    assert_eq!(remaining.len(), 199);

    // Cluster status shows the node and every shard.
    let st = c.cluster_status().await.unwrap();
    assert_eq!(st.nodes.len(), 1);
    assert_eq!(st.nodes[0].state, NodeState::Up as i32);
    assert_eq!(st.shards.len(), 3);
    assert_eq!(st.shards.iter().map(|s| s.replicas[0].points).sum::<u64>(), 200);

    c.delete_collection("items").await.unwrap();
    assert!(c.list_collections().await.unwrap().is_empty());
}

/// `grpcurl` works without .proto files once reflection is enabled
/// (`--reflection`; off by default, where it answers UNIMPLEMENTED):
/// reflection lists the services and the standard health service answers
/// SERVING.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest};

    let list = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let dir = tempfile::tempdir().unwrap();
    {
        let off = ShoalProcess::start(dir.path().join("off").as_path()).unwrap();
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", off.addr)).unwrap().connect().await.unwrap();
        let r = ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter(vec![list.clone()])).await;
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unimplemented), "reflection is off by default");
    }
    let server = ShoalProcess::start_with(dir.path(), &["--reflection"]).unwrap();
    let url = format!("http://{}", server.addr);
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut h = HealthClient::new(channel.clone());
    for svc in ["", "shoal.v1.Points", "shoal.v1.Collections"] {
        let r = h.check(HealthCheckRequest { service: svc.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{svc}");
    }
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("no service list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["shoal.v1.Points", "shoal.v1.Collections", "shoal.v1.Cluster", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

/// `SearchStream` answers every message with its tag and the results a
/// unary `Search` gives; a bad search answers with its error and the
/// stream goes on; the stream ends once the sender is dropped and every
/// search is answered. More searches than the in-flight limit are queued
/// at once, so the server's back-pressure (MAX_STREAM_IN_FLIGHT) is in play.
#[tokio::test(flavor = "multi_thread")]
async fn search_stream_answers_every_search_like_search() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("s", 8, Metric::Cosine).shards(3).index("k", PayloadIndexType::Numeric).build()).await.unwrap();
    c.upsert("s", (0..500u64).map(|i| Point::new(i, vector(i, 8)).payload(json!({"k": i % 5}))).collect()).await.unwrap();
    let f = filter::from_json(&json!({"must": [{"key": "k", "match": 3}]})).unwrap();
    let search = move |i: u64| match i % 3 {
        0 => SearchBuilder::new("s", vector(i + 1000, 8), 7),
        1 => SearchBuilder::new("s", vector(i + 1000, 8), 5).exact(true),
        _ => SearchBuilder::new("s", vector(i + 1000, 8), 4).filter(f.clone()).with_payload(),
    };
    let n = 200u64;
    let bad_dim = 1_000;
    let bad_top_k = 1_001;
    let (tx, mut rx) = c.search_stream().await.unwrap();
    let send_search = search.clone();
    let sender = tokio::spawn(async move {
        let search = send_search;
        for i in 0..n {
            tx.send(i, search(i)).await.unwrap();
            if i == 50 {
                tx.send(bad_dim, SearchBuilder::new("s", vec![1.0; 3], 5)).await.unwrap();
                tx.send(bad_top_k, SearchBuilder::new("s", vector(1, 8), 0)).await.unwrap();
            }
        }
        // Dropping the sender ends the stream once everything is answered.
    });
    let mut answers = HashMap::new();
    while let Some((tag, r)) = rx.next().await.unwrap() {
        assert!(answers.insert(tag, r).is_none(), "tag {tag} answered twice");
    }
    sender.await.unwrap();
    assert_eq!(answers.len() as u64, n + 2, "every search answered once");
    match answers.remove(&bad_dim).unwrap() {
        Err(shoal_client::ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().contains("vector has 3 dimensions"), "{s:?}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    match answers.remove(&bad_top_k).unwrap() {
        Err(shoal_client::ClientError::Status(s)) => assert!(s.code() == tonic::Code::InvalidArgument && s.message().contains("top_k 0"), "{s:?}"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    for i in 0..n {
        let got = answers.remove(&i).unwrap().unwrap_or_else(|e| panic!("search {i}: {e}"));
        let want = c.search(search(i)).await.unwrap();
        assert!(!want.is_empty());
        // Concurrent exact searches may be scored together by a matrix
        // product: the same points and payloads, scores equal up to the
        // rounding docs/limits.md states.
        let ids = |v: &[ScoredPoint]| v.iter().map(|p| (num(&p.id), p.payload.clone())).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "search {i}");
        for (a, b) in got.iter().zip(&want) {
            assert!((a.score - b.score).abs() <= 1e-5 * (1.0 + b.score.abs()), "search {i}: score {} streamed, {} alone", a.score, b.score);
        }
    }
}
