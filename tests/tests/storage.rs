//! Storage kinds through the public API of a 3-node cluster: a collection
//! created INT8 answers like an F32 one (exact scores after re-scoring);
//! a live collection switched F32 -> INT8 -> BINARY (cold memory) -> F32
//! while a writer and a searcher run, with no failed request, every
//! acknowledged write readable and the replicas in agreement; bad input
//! refused; shoalctl.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_client::{Client, CollectionBuilder, Point, SearchBuilder};
use shoal_proto::v1::*;
use shoal_tests::procs::ProcCluster;
use shoal_tests::vector;

const DIM: usize = 16;
/// Points of the live collection before the load starts (enough that each
/// rebuild overlaps many writes and searches).
const BASE: u64 = 6000;

fn point(i: u64) -> Point {
    let cat = ["a", "b", "c"][(i % 3) as usize];
    Point::new(i, vector(i, DIM)).payload(serde_json::json!({"i": i, "cat": cat, "tag": format!("t{}", i % 7)}))
}

fn id_of(p: &ScoredPoint) -> u64 {
    match p.id.as_ref().and_then(|i| i.kind.as_ref()) {
        Some(point_id::Kind::Num(n)) => *n,
        _ => panic!("numeric ids only"),
    }
}

/// Waits until every replica of `name` reports `kind`.
async fn wait_kind(c: &Client, name: &str, kind: VectorStorage) {
    let start = Instant::now();
    loop {
        let st = c.cluster_status().await.unwrap();
        let reps: Vec<&ReplicaStatus> = st.shards.iter().filter(|s| s.collection == name).flat_map(|s| &s.replicas).collect();
        if !reps.is_empty() && reps.iter().all(|r| r.storage == kind as i32) {
            if kind == VectorStorage::Int8 || kind == VectorStorage::Binary {
                assert!(reps.iter().all(|r| r.vectors_mapped_bytes > 0), "a quantized replica maps its vector file: {reps:?}");
            } else {
                assert!(reps.iter().all(|r| r.vectors_mapped_bytes == 0), "an f32 replica has no vector file: {reps:?}");
            }
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "replicas did not reach {kind:?}: {reps:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_kinds_change_under_load_without_a_failed_request() {
    let cluster = ProcCluster::start(3).await.unwrap();
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;

    // Created INT8: exact answers after re-scoring.
    let cfg = CollectionBuilder::new("q8", DIM as u32, Metric::Cosine).shards(2).replication_factor(2).storage(VectorStorage::Int8).build();
    c.create_collection(cfg).await.unwrap();
    let pts: Vec<Point> = (0..600).map(point).collect();
    for chunk in pts.chunks(200) {
        c.upsert("q8", chunk.to_vec()).await.unwrap();
    }
    let info = c.get_collection("q8").await.unwrap();
    assert_eq!(info.config.unwrap().storage, VectorStorage::Int8 as i32);
    for i in [3u64, 77, 301] {
        let hits = c.search(SearchBuilder::new("q8", vector(i, DIM), 3).ef(64)).await.unwrap();
        assert_eq!(id_of(&hits[0]), i);
        assert!((hits[0].score - 1.0).abs() < 1e-5, "re-scored with the f32 vector: {}", hits[0].score);
        let exact = c.search(SearchBuilder::new("q8", vector(i, DIM), 3).exact(true)).await.unwrap();
        assert_eq!(exact.iter().map(id_of).collect::<Vec<_>>(), hits.iter().map(id_of).collect::<Vec<_>>());
        let codes = c.search(SearchBuilder::new("q8", vector(i, DIM), 3).ef(64).rescore(false)).await.unwrap();
        assert_eq!(id_of(&codes[0]), i);
        assert!((codes[0].score - 1.0).abs() < 0.05, "the int8 estimate of a cosine of 1: {}", codes[0].score);
        // A limit past MAX_EF candidates is served.
        let many = c.search(SearchBuilder::new("q8", vector(i, DIM), 10_000)).await.unwrap();
        assert_eq!(many.len(), 600);
    }
    wait_kind(&c, "q8", VectorStorage::Int8).await;

    // Bad input.
    let bad = |e: shoal_client::ClientError| match e {
        shoal_client::ClientError::Status(s) => Some(s.code()),
        _ => None,
    };
    let e = c.search(SearchBuilder::new("q8", vector(1, DIM), 3).oversampling(0.5)).await.unwrap_err();
    assert_eq!(bad(e), Some(tonic::Code::InvalidArgument));
    let e = c.search(SearchBuilder::new("q8", vector(1, DIM), 3).oversampling(f32::NAN)).await.unwrap_err();
    assert_eq!(bad(e), Some(tonic::Code::InvalidArgument));
    let mut named = CollectionBuilder::new("bad", 4, Metric::Cosine).vector("v", 4, Metric::Dot, false).build();
    named.vectors[0].storage = VectorStorage::Int8 as i32;
    assert_eq!(bad(c.create_collection(named).await.unwrap_err()), Some(tonic::Code::InvalidArgument), "named vectors store f32 or f16");
    let mut unknown = CollectionBuilder::new("bad", 4, Metric::Cosine).build();
    unknown.storage = 99;
    assert_eq!(bad(c.create_collection(unknown).await.unwrap_err()), Some(tonic::Code::InvalidArgument));
    let e = c.update_storage("no-such", Some(VectorStorage::Int8), None).await.unwrap_err();
    assert_eq!(bad(e), Some(tonic::Code::NotFound));

    // A live F32 collection under load.
    c.create_collection(CollectionBuilder::new("live", DIM as u32, Metric::Cosine).shards(2).replication_factor(2).build()).await.unwrap();
    let first: Vec<Point> = (0..BASE).map(point).collect();
    for chunk in first.chunks(250) {
        c.upsert("live", chunk.to_vec()).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(BASE));
    let writer = {
        let (c, stop, failures, next) = (c.clone(), stop.clone(), failures.clone(), next.clone());
        tokio::spawn(async move {
            let mut acked = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let from = next.fetch_add(20, Ordering::Relaxed);
                match c.upsert("live", (from..from + 20).map(point).collect()).await {
                    Ok(_) => acked.extend(from..from + 20),
                    Err(e) => {
                        eprintln!("upsert failed: {e:#}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            acked
        })
    };
    let searcher = {
        let (c, stop, failures) = (c.clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            let (mut n, mut top1) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let i = n % BASE;
                let exact = n % 5 == 0;
                match c.search(SearchBuilder::new("live", vector(i, DIM), 5).ef(64).exact(exact)).await {
                    Ok(hits) => top1 += u64::from(hits.first().map(id_of) == Some(i)),
                    Err(e) => {
                        eprintln!("search failed: {e:#}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            (n, top1)
        })
    };

    c.update_storage("live", Some(VectorStorage::Int8), None).await.unwrap();
    wait_kind(&c, "live", VectorStorage::Int8).await;
    // shoalctl: binary with cold memory, then the memory alone.
    let (ok, out, err) = shoal_tests::shoalctl(&["--addr", &cluster.coordinator.addr, "collection", "storage", "live", "--storage", "binary", "--memory", "cold"]);
    assert!(ok && out.contains("storage binary, memory cold"), "{out} {err}");
    wait_kind(&c, "live", VectorStorage::Binary).await;
    let info = c.update_storage("live", None, Some(VectorMemory::Ram)).await.unwrap();
    let cfg = info.config.unwrap();
    assert_eq!((cfg.storage, cfg.memory), (VectorStorage::Binary as i32, VectorMemory::Ram as i32));
    c.update_storage("live", Some(VectorStorage::F32), None).await.unwrap();
    wait_kind(&c, "live", VectorStorage::F32).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let (searches, top1) = searcher.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed during the storage changes");
    assert!(acked.len() >= 100, "the writer made progress: {}", acked.len());
    assert!(searches >= 50 && top1 * 10 >= searches * 9, "searches found their point: {top1} of {searches}");

    // Every acknowledged point is there with its vector and payload.
    let all: Vec<u64> = (0..BASE).chain(acked.iter().copied()).collect();
    for chunk in all.chunks(500) {
        let ids: Vec<PointId> = chunk.iter().map(|i| (*i).into()).collect();
        let got = c.get("live", ids, true, true).await.unwrap();
        assert_eq!(got.len(), chunk.len());
        for p in got {
            let i = match p.id.as_ref().and_then(|x| x.kind.as_ref()) {
                Some(point_id::Kind::Num(n)) => *n,
                _ => unreachable!(),
            };
            let want: Vec<f32> = {
                let v = vector(i, DIM);
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / n).collect()
            };
            assert!(p.vector.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "point {i} keeps its vector");
            assert_eq!(p.payload.unwrap().fields.len(), 3, "point {i} keeps its payload");
        }
    }
    assert_eq!(c.count("live", None).await.unwrap(), all.len() as u64);
    for i in [5u64, BASE - 1, *acked.iter().last().unwrap()] {
        let hits = c.search(SearchBuilder::new("live", vector(i, DIM), 1).ef(64)).await.unwrap();
        assert_eq!(id_of(&hits[0]), i);
    }
    cluster.converged("live", 2, Duration::from_secs(60)).await.unwrap();
}
