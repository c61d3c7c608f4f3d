//! Multi-node clusters of real `shoal node` processes behind a `shoal
//! coordinator`, on loopback with OS-chosen ports: leader kill -9 under
//! write load, a paused (SIGSTOP) leader, a whole-cluster restart, and a
//! node added to a running cluster. Each ends with every acknowledged
//! write readable with `strong` reads and identical replica digests.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::collections_client::CollectionsClient;
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::*;
use shoal_tests::procs::ProcCluster;
use shoal_tests::vector;
use tonic::transport::Channel;

const DIM: usize = 8;
const SHARDS: u32 = 2;

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().timeout(Duration::from_secs(40)).connect().await.unwrap()
}

async fn create(addr: &str, name: &str, shards: u32, rf: u32) {
    let config = CollectionConfig { name: name.into(), dimension: DIM as u32, metric: Metric::L2 as i32, shard_count: shards, replication_factor: rf, ..Default::default() };
    CollectionsClient::new(channel(addr).await).create(CreateCollectionRequest { config: Some(config) }).await.unwrap();
}

/// The id of the node leading `shard` of `collection`, per cluster status.
async fn leader_of(addr: &str, collection: &str, shard: u32) -> u64 {
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
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    acked_at: Arc<Mutex<Vec<(Instant, Instant)>>>,
    attempted: Arc<Mutex<BTreeSet<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(addr: &str, collection: &str, writers: u64, base: u64) -> Load {
        let load = Load { stop: Arc::default(), acked: Arc::default(), acked_at: Arc::default(), attempted: Arc::default(), tasks: vec![] };
        let mut tasks = vec![];
        for w in 0..writers {
            let ch = channel(addr).await;
            let (stop, acked, acked_at, attempted, collection) = (load.stop.clone(), load.acked.clone(), load.acked_at.clone(), load.attempted.clone(), collection.to_string());
            tasks.push(tokio::spawn(async move {
                let mut c = PointsClient::new(ch);
                let mut b = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = base + (b * writers + w) * 20;
                    b += 1;
                    let ids: Vec<u64> = (start..start + 20).collect();
                    attempted.lock().unwrap().extend(&ids);
                    let points = ids.iter().map(|&i| PointStruct { id: Some(i.into()), vector: vector(i, DIM), payload: None }).collect();
                    let sent = Instant::now();
                    match c.upsert(UpsertPointsRequest { collection: collection.clone(), points }).await {
                        Ok(_) => {
                            acked.lock().unwrap().extend(&ids);
                            acked_at.lock().unwrap().push((sent, Instant::now()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn acked_len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Acknowledged batches sent after `t`, and the earliest of their
    /// acknowledgements.
    fn acks_after(&self, t: Instant) -> (usize, Option<Instant>) {
        let a = self.acked_at.lock().unwrap();
        let after: Vec<Instant> = a.iter().filter(|(sent, _)| *sent > t).map(|(_, at)| *at).collect();
        (after.len(), after.iter().min().copied())
    }

    async fn stop(self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let attempted = self.attempted.lock().unwrap().clone();
        (acked, attempted)
    }
}

async fn wait_acks(load: &Load, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.acked_len() < n {
        assert!(Instant::now() < deadline, "load made no progress: {} acked", load.acked_len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until at least `n` batches sent after `t` are acknowledged;
/// returns the time from `t` to the first acknowledgement.
async fn acks_resume(load: &Load, t: Instant, n: usize) -> Duration {
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
async fn check(cluster: &ProcCluster, collection: &str, shards: u32, acked: &BTreeSet<u64>, attempted: &BTreeSet<u64>) {
    let digests = cluster.converged(collection, shards, Duration::from_secs(180)).await.unwrap();
    let mut c = PointsClient::new(channel(&cluster.coordinator.addr).await);
    let ids: Vec<u64> = acked.iter().copied().collect();
    for chunk in ids.chunks(1000) {
        let got = c
            .get(GetPointsRequest { collection: collection.into(), ids: chunk.iter().map(|&i| i.into()).collect(), with_vector: true, consistency: Consistency::Strong as i32, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.points.len(), chunk.len(), "acknowledged points missing");
        for p in got.points {
            let Some(point_id::Kind::Num(i)) = p.id.and_then(|i| i.kind) else { panic!("bad id") };
            assert_eq!(p.vector, vector(i, DIM), "point {i} has another vector");
        }
    }
    let count = c.count(CountPointsRequest { collection: collection.into(), consistency: Consistency::Strong as i32, ..Default::default() }).await.unwrap().into_inner().count;
    assert!(count as usize >= acked.len() && count as usize <= attempted.len(), "count {count} outside [{}, {}]", acked.len(), attempted.len());
    let total: u64 = digests.iter().map(|d| d.values().next().unwrap().0).sum();
    assert_eq!(total, count, "replica point counts agree with the count");
}

async fn strong_search_works(addr: &str, collection: &str) {
    let mut c = PointsClient::new(channel(addr).await);
    let r = c
        .search(SearchPointsRequest { collection: collection.into(), vector: vector(7, DIM), top_k: 5, consistency: Consistency::Strong as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 5, "strong search answers after the failover");
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill9_under_write_load_then_restart() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "k", SHARDS, 3).await;
    let load = Load::start(&addr, "k", 3, 0).await;
    wait_acks(&load, 1500).await;
    let victim = leader_of(&addr, "k", 0).await;
    let t = Instant::now();
    cluster.node(victim).kill9();
    let resumed = acks_resume(&load, t, 20).await;
    println!("leader node {victim} killed; first acknowledged write {resumed:?} later");
    strong_search_works(&addr, "k").await;
    cluster.node(victim).restart().unwrap();
    wait_acks(&load, load.acked_len() + 1000).await;
    let (acked, attempted) = load.stop().await;
    check(&cluster, "k", SHARDS, &acked, &attempted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_leader_is_replaced_and_catches_up() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "p", SHARDS, 3).await;
    let load = Load::start(&addr, "p", 3, 0).await;
    wait_acks(&load, 1000).await;
    let victim = leader_of(&addr, "p", 1).await;
    let t = Instant::now();
    cluster.node(victim).pause();
    let resumed = acks_resume(&load, t, 20).await;
    println!("leader node {victim} paused; first acknowledged write {resumed:?} later");
    strong_search_works(&addr, "p").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.node(victim).resume();
    wait_acks(&load, load.acked_len() + 1000).await;
    let (acked, attempted) = load.stop().await;
    check(&cluster, "p", SHARDS, &acked, &attempted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restart_and_node_added() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "r", SHARDS, 3).await;
    let load = Load::start(&addr, "r", 2, 0).await;
    wait_acks(&load, 2000).await;
    let (acked, attempted) = load.stop().await;

    // Every node down (graceful), then up again on the same data.
    for n in cluster.nodes.iter_mut() {
        n.terminate().unwrap();
    }
    for id in 1..=3 {
        cluster.node(id).restart().unwrap();
    }
    check(&cluster, "r", SHARDS, &acked, &attempted).await;

    // A fourth node joins the running cluster and hosts replicas of a new
    // collection; writes and reads work across all four.
    let added = cluster.add_node().await.unwrap();
    assert_eq!(added, 4);
    create(&addr, "r2", 4, 3).await;
    let map = cluster.map_at(4).await.unwrap();
    let r2 = map.collections.iter().find(|c| c.config.as_ref().unwrap().name == "r2").unwrap();
    assert!(r2.shards.iter().any(|s| s.replicas.contains(&4)), "the new node hosts replicas: {r2:?}");
    let load = Load::start(&addr, "r2", 2, 0).await;
    wait_acks(&load, 1000).await;
    let (acked2, attempted2) = load.stop().await;
    check(&cluster, "r2", 4, &acked2, &attempted2).await;
    // The first collection is untouched by the join.
    check(&cluster, "r", SHARDS, &acked, &attempted).await;
}

/// Failover benchmark over processes (not a pass/fail test): 20 times,
/// kill -9 the leader of a one-shard RF=3 collection while a client writes
/// to it, and time from the kill to the first acknowledged write; then
/// restart the node and let it catch up. Prints the median and max.
/// `cargo test --release -p shoal-tests --test cluster_procs bench_failover_procs -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_failover_procs() {
    let kills: usize = std::env::var("SHOAL_FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "f", 1, 3).await;
    let load = Load::start(&addr, "f", 1, 0).await;
    let mut times = vec![];
    for i in 0..kills {
        wait_acks(&load, load.acked_len() + 200).await;
        let victim = leader_of(&addr, "f", 0).await;
        let t = Instant::now();
        cluster.node(victim).kill9();
        let took = acks_resume(&load, t, 1).await;
        println!("kill {i}: node {victim}, first write after {took:?}");
        times.push(took);
        cluster.node(victim).restart().unwrap();
        cluster.caught_up("f", 0, 3, 50, Duration::from_secs(60)).await.unwrap();
    }
    let (acked, attempted) = load.stop().await;
    check(&cluster, "f", 1, &acked, &attempted).await;
    times.sort();
    println!("failover over {kills} kills: median {:?}, max {:?}", times[times.len() / 2], times.last().unwrap());
}
