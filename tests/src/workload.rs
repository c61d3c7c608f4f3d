//! Client workloads and end checks shared by the cluster fault tests
//! (process clusters in `cluster_procs.rs`, containers in `containers.rs`):
//! writers that record every acknowledged id, `any`-consistency searchers
//! that record every answer and failure, and the final check that nothing
//! acknowledged is lost and that replicas agree.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::collections_client::CollectionsClient;
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::*;

use crate::procs::Nodes;
use crate::vector;

pub const DIM: usize = 8;

/// The payload of point `i`: several keys, nested values and a list, so
/// replica digests are checked on payloads whose key order could vary
/// (they once did, with payload maps encoded in hash order).
pub fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({
        "i": i,
        "tag": format!("t{}", i % 7),
        "even": i.is_multiple_of(2),
        "score": i as f64 / 4.0,
        "nested": {"a": i, "b": [i, i + 1], "c": {"d": "deep"}},
        "text": format!("point {i}"),
    })
}

fn payload_struct(i: u64) -> Struct {
    Struct::try_from(&payload(i)).expect("an object")
}

/// A channel to `addr` (TLS with the harness's operator certificate when
/// the cluster runs with TLS, [`crate::tls`]).
pub async fn channel(addr: &str) -> shoal_client::AuthChannel {
    crate::tls::channel_with(addr, Duration::from_secs(40)).await.unwrap()
}

pub async fn create(addr: &str, name: &str, shards: u32, rf: u32) {
    let config = CollectionConfig { name: name.into(), dimension: DIM as u32, metric: Metric::L2 as i32, shard_count: shards, replication_factor: rf, ..Default::default() };
    CollectionsClient::new(channel(addr).await).create(CreateCollectionRequest { config: Some(config) }).await.unwrap();
}

/// The id of the node leading `shard` of `collection`, per cluster status.
pub async fn leader_of(addr: &str, collection: &str, shard: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = ClusterClient::new(channel(addr).await).status(ClusterStatusRequest {}).await.unwrap().into_inner();
        // Settled: every replica answers in one term and one of them leads.
        if let Some(s) = st.shards.iter().find(|s| s.collection == collection && s.shard_id == shard) {
            let terms: BTreeSet<u64> = s.replicas.iter().map(|r| r.term).collect();
            let leaders: Vec<u64> = s.replicas.iter().filter(|r| r.leader).map(|r| r.node_id).collect();
            if terms.len() == 1 && !terms.contains(&0) && leaders.len() == 1 {
                return leaders[0];
            }
        }
        assert!(Instant::now() < deadline, "no leader for {collection}/{shard}: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Background writers: each upserts batches of fresh ids through the
/// coordinator and records the ids of every acknowledged batch, and when
/// each acknowledged batch was sent and acknowledged.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    acked_at: Arc<Mutex<Vec<(Instant, Instant)>>>,
    attempted: Arc<Mutex<BTreeSet<u64>>>,
    /// The latest refusal or failure of a write, with when it came (what
    /// a test reports when the load stops making progress).
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub async fn start(addr: &str, collection: &str, writers: u64, base: u64) -> Load {
        let load = Load { stop: Arc::default(), acked: Arc::default(), acked_at: Arc::default(), attempted: Arc::default(), last_error: Arc::default(), tasks: vec![] };
        let mut tasks = vec![];
        for w in 0..writers {
            let ch = channel(addr).await;
            let (stop, acked, acked_at, attempted, collection) = (load.stop.clone(), load.acked.clone(), load.acked_at.clone(), load.attempted.clone(), collection.to_string());
            let last_error = load.last_error.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = PointsClient::new(ch);
                let mut b = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = base + (b * writers + w) * 20;
                    b += 1;
                    let ids: Vec<u64> = (start..start + 20).collect();
                    attempted.lock().unwrap().extend(&ids);
                    let points = ids.iter().map(|&i| PointStruct { id: Some(i.into()), vector: vector(i, DIM), payload: Some(payload_struct(i)), sparse: Default::default(), vectors: Default::default() }).collect();
                    let sent = Instant::now();
                    match c.upsert(UpsertPointsRequest { collection: collection.clone(), points }).await {
                        Ok(_) => {
                            acked.lock().unwrap().extend(&ids);
                            acked_at.lock().unwrap().push((sent, Instant::now()));
                        }
                        Err(e) => {
                            *last_error.lock().unwrap() = Some((Instant::now(), format!("{:?}: {} (after {:?})", e.code(), e.message(), sent.elapsed())));
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    /// The latest write failure and how long ago it came.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().as_ref().map(|(at, e)| format!("{e}, {:?} ago", at.elapsed()))
    }

    pub fn acked_len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The ids acknowledged so far.
    pub fn acked_ids(&self) -> BTreeSet<u64> {
        self.acked.lock().unwrap().clone()
    }

    /// Acknowledged batches sent after `t`, and the earliest of their
    /// acknowledgements.
    pub fn acks_after(&self, t: Instant) -> (usize, Option<Instant>) {
        let a = self.acked_at.lock().unwrap();
        let after: Vec<Instant> = a.iter().filter(|(sent, _)| *sent > t).map(|(_, at)| *at).collect();
        (after.len(), after.iter().min().copied())
    }

    /// The longest time without an acknowledged write between `from` and
    /// now (a stretch from `from` to the first ack counts).
    pub fn longest_ack_gap(&self, from: Instant) -> Duration {
        let log: Vec<(Instant, bool)> = self.acked_at.lock().unwrap().iter().map(|(_, at)| (*at, true)).collect();
        summarize(&log, from, Instant::now()).longest_gap
    }

    pub async fn stop(self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let attempted = self.attempted.lock().unwrap().clone();
        (acked, attempted)
    }
}

pub async fn wait_acks(load: &Load, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.acked_len() < n {
        assert!(Instant::now() < deadline, "load made no progress: {} acked; last write failure: {:?}", load.acked_len(), load.last_error());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until at least `n` batches sent after `t` are acknowledged;
/// returns the time from `t` to the first acknowledgement.
pub async fn acks_resume(load: &Load, t: Instant, n: usize) -> Duration {
    let deadline = t + Duration::from_secs(30);
    loop {
        let (after, first) = load.acks_after(t);
        if after >= n {
            return first.expect("acknowledged") - t;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {after} acks in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged id is readable with `strong` consistency, nothing
/// outside the attempted ids exists, and all replicas hold the same
/// contents.
pub async fn check(nodes: &Nodes, coordinator: &str, collection: &str, shards: u32, acked: &BTreeSet<u64>, attempted: &BTreeSet<u64>) {
    let digests = nodes.converged(collection, shards, Duration::from_secs(180)).await.unwrap();
    let mut c = PointsClient::new(channel(coordinator).await);
    let ids: Vec<u64> = acked.iter().copied().collect();
    for chunk in ids.chunks(1000) {
        let got = c
            .get(GetPointsRequest { collection: collection.into(), ids: chunk.iter().map(|&i| i.into()).collect(), with_vector: true, with_payload: true, consistency: Consistency::Strong as i32 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.points.len(), chunk.len(), "acknowledged points missing");
        for p in got.points {
            let Some(point_id::Kind::Num(i)) = p.id.and_then(|i| i.kind) else { panic!("bad id") };
            assert_eq!(p.vector, vector(i, DIM), "point {i} has another vector");
            let got = p.payload.as_ref().map(serde_json::Value::from);
            assert_eq!(got, Some(payload(i)), "point {i} has another payload");
        }
    }
    let count = c.count(CountPointsRequest { collection: collection.into(), consistency: Consistency::Strong as i32, ..Default::default() }).await.unwrap().into_inner().count;
    assert!(count as usize >= acked.len() && count as usize <= attempted.len(), "count {count} outside [{}, {}]", acked.len(), attempted.len());
    let total: u64 = digests.iter().map(|d| d.values().next().unwrap().0).sum();
    assert_eq!(total, count, "replica point counts agree with the count");
}

pub async fn strong_search_works(addr: &str, collection: &str) {
    let mut c = PointsClient::new(channel(addr).await);
    let r = c
        .search(SearchPointsRequest { collection: collection.into(), vector: vector(7, DIM), top_k: 5, consistency: Consistency::Strong as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 5, "strong search answers after the failover");
}


/// What `any`-consistency searchers saw over a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Availability {
    pub answered: usize,
    pub failed: usize,
    /// The longest time between two consecutive answers.
    pub longest_gap: Duration,
}

impl Availability {
    pub fn error_rate(&self) -> f64 {
        self.failed as f64 / (self.answered + self.failed).max(1) as f64
    }
}

/// Background searchers with `any` consistency through the coordinator:
/// each records when every search answered or failed (a search gets 5 s).
pub struct Searchers {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Searchers {
    pub async fn start(addr: &str, collection: &str, n: usize) -> Searchers {
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let mut tasks = vec![];
        for i in 0..n {
            let (stop, log, collection) = (stop.clone(), log.clone(), collection.to_string());
            let mut c = PointsClient::new(channel(addr).await);
            tasks.push(tokio::spawn(async move {
                let mut q = i as u64;
                while !stop.load(Ordering::Relaxed) {
                    q += 1;
                    let req = SearchPointsRequest { collection: collection.clone(), vector: vector(q % 1000, DIM), top_k: 5, consistency: Consistency::Any as i32, ..Default::default() };
                    let ok = matches!(tokio::time::timeout(Duration::from_secs(5), c.search(req)).await, Ok(Ok(r)) if !r.get_ref().results.is_empty());
                    log.lock().unwrap().push((Instant::now(), ok));
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        Searchers { stop, log, tasks }
    }

    /// Answers, failures and the longest gap between answers since `from`
    /// (a stretch from `from` to the first answer counts as a gap).
    pub fn since(&self, from: Instant) -> Availability {
        summarize(&self.log.lock().unwrap(), from, Instant::now())
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// [`Availability`] of a search log between `from` and `to`.
pub fn summarize(log: &[(Instant, bool)], from: Instant, to: Instant) -> Availability {
    let mut events: Vec<(Instant, bool)> = log.iter().copied().filter(|(t, _)| *t >= from && *t <= to).collect();
    events.sort_by_key(|e| e.0);
    let (mut answered, mut failed, mut last, mut gap) = (0, 0, from, Duration::ZERO);
    for (t, ok) in events {
        if ok {
            answered += 1;
            gap = gap.max(t - last);
            last = t;
        } else {
            failed += 1;
        }
    }
    Availability { answered, failed, longest_gap: gap.max(to - last) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_counts_failures_and_the_longest_gap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log = vec![(at(10), true), (at(20), true), (at(30), false), (at(900), false), (at(1500), true), (at(1600), true), (at(5), true)];
        let a = summarize(&log, at(8), at(1700));
        assert_eq!((a.answered, a.failed), (4, 2), "the answer before `from` is out");
        assert_eq!(a.longest_gap, Duration::from_millis(1480), "from the answer at 20 ms to the one at 1500 ms");
        assert!((a.error_rate() - 2.0 / 6.0).abs() < 1e-9);
        let quiet = summarize(&log, at(1600), at(4600));
        assert_eq!((quiet.answered, quiet.longest_gap), (1, Duration::from_millis(3000)), "silence up to `to` is a gap");
    }
}
