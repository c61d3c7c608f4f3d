//! Durability: `kill -9` during ingest loses no acknowledged point, and a
//! restarted node serves the same results as before.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_client::shoal_proto::v1::{point_id, Metric};
use shoal_client::{Client, CollectionBuilder, Point, SearchBuilder};
use shoal_tests::{vector, ShoalProcess};

const DIM: usize = 16;

fn ids(hits: &[shoal_client::ScoredPoint]) -> Vec<u64> {
    hits.iter()
        .map(|h| match h.id.as_ref().and_then(|i| i.kind.clone()) {
            Some(point_id::Kind::Num(n)) => n,
            other => panic!("unexpected id {other:?}"),
        })
        .collect()
}

/// Writers upsert batches concurrently and record every acknowledged id;
/// the server is SIGKILLed while writes are in flight. After a restart on
/// the same data directory every acknowledged id is readable with its
/// vector, and no id outside the attempted range appears.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_ingest_loses_no_acknowledged_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("dur", DIM as u32, Metric::L2).shards(3).build()).await.unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = vec![];
    for w in 0..4u64 {
        let (c, acked) = (c.clone().with_retry(shoal_client::RetryPolicy { attempts: 1, ..Default::default() }), acked.clone());
        writers.push(tokio::spawn(async move {
            for b in 0.. {
                let start = (b * 4 + w) * 50;
                let pts: Vec<Point> = (start..start + 50).map(|i| Point::new(i, vector(i, DIM)).payload(serde_json::json!({"i": i}))).collect();
                match c.upsert("dur", pts).await {
                    Ok(_) => acked.lock().unwrap().extend(start..start + 50),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a few thousand points land, then kill without warning.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().unwrap().len() >= 3000 {
            break;
        }
    }
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() >= 3000);

    server.restart().unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    for chunk in acked.chunks(1000) {
        let got = c.get("dur", chunk.iter().map(|i| (*i).into()).collect(), true, true).await.unwrap();
        assert_eq!(got.len(), chunk.len(), "acknowledged points missing after kill -9");
        for p in got {
            let Some(point_id::Kind::Num(i)) = p.id.and_then(|x| x.kind) else { panic!("id") };
            assert_eq!(p.vector, vector(i, DIM), "point {i} has the wrong vector");
        }
    }
    let count = c.count("dur", None).await.unwrap();
    assert!(count >= acked.len() as u64, "count {count} < acknowledged {}", acked.len());
    // Every acknowledged point is also searchable (index rebuilt or reconciled).
    for i in acked.iter().step_by(97) {
        let hit = c.search(SearchBuilder::new("dur", vector(*i, DIM), 1).exact(true)).await.unwrap();
        assert_eq!(ids(&hit), vec![*i]);
    }
}

/// After a clean restart (SIGTERM saves the index) approximate results are
/// identical; after kill -9 and a restart exact results are identical and
/// approximate ones agree to recall >= 0.95.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_node_serves_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("r", DIM as u32, Metric::Cosine).shards(2).build()).await.unwrap();
    for b in 0..5u64 {
        c.upsert("r", (b * 1000..(b + 1) * 1000).map(|i| Point::new(i, vector(i, DIM))).collect()).await.unwrap();
    }
    c.delete_ids("r", (0..100u64).map(Into::into).collect()).await.unwrap();
    let queries: Vec<Vec<f32>> = (0..40).map(|i| vector(1_000_000 + i, DIM)).collect();
    async fn answers(c: &Client, qs: &[Vec<f32>], exact: bool) -> Vec<Vec<u64>> {
        let mut out = vec![];
        for q in qs {
            out.push(ids(&c.search(SearchBuilder::new("r", q.clone(), 10).exact(exact)).await.unwrap()));
        }
        out
    }
    let approx = answers(&c, &queries, false).await;
    let exact = answers(&c, &queries, true).await;

    server.terminate().unwrap();
    server = ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    assert_eq!(c.count("r", None).await.unwrap(), 4900);
    assert_eq!(answers(&c, &queries, false).await, approx, "clean restart changed approximate results");
    assert_eq!(answers(&c, &queries, true).await, exact);

    server.kill9();
    server.restart().unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    assert_eq!(answers(&c, &queries, true).await, exact, "kill -9 restart changed exact results");
    let after = answers(&c, &queries, false).await;
    let same: usize = after.iter().zip(&approx).map(|(a, b)| a.iter().filter(|x| b.contains(x)).count()).sum();
    assert!(same as f64 / 400.0 >= 0.95, "approximate overlap {same}/400 after kill -9");
}
