//! Robustness against damaged local data (issue 14): a replica whose
//! records cannot be decoded is quarantined instead of stopping its node;
//! the other replicas serve the shard, status and metrics report it, and
//! moving the replica off the node and back rebuilds it from the group.
use std::sync::Arc;
use std::time::Duration;

use shoal_node::storage::rocks::RocksEngine;
use shoal_node::storage::{IndexEntry, IndexValue, KvEngine, ShardStore, StoreBatch};
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::{ClusterStatusRequest, Consistency, ReplicaState, SearchPointsRequest};
use shoal_tests::procs::ProcCluster;
use shoal_tests::workload::{self, channel, create, wait_acks, Load, DIM};
use shoal_tests::{ctl, vector};

/// The record a payload index key with a NUL left in storage before keys
/// were validated: the field name's NUL ends it early, so the next byte is
/// read as the value's tag and the key cannot be decoded.
fn plant_undecodable_index_key(data_dir: &std::path::Path, collection: &str, shard: u32) {
    let kv: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&data_dir.join("db")).unwrap());
    let entry = IndexEntry { field: "a\u{0}b".into(), value: IndexValue::Keyword("x".into()), offset: 1 };
    ShardStore::new(kv, collection, shard).write(StoreBatch { put_index: vec![entry], ..Default::default() }, true).unwrap();
}

/// Node 3's replica of a 3-replica shard is damaged while the node is
/// down. Before the fix the node could not start at all (every replica
/// opens in `Engine::open`, and one error stopped it): a crash loop. Now it
/// starts, reports the replica quarantined (cluster status, with the
/// reason), the shard keeps answering reads and writes from the other two,
/// and a move off node 3 and back restores three identical replicas with
/// every acknowledged write, also when node 3 is down while the replica
/// is moved away.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_replica_is_quarantined_and_repaired_by_a_move() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "q", 1, 3).await;
    let load = Load::start(&addr, "q", 2, 0).await;
    wait_acks(&load, 400).await;

    cluster.node(3).terminate().unwrap();
    plant_undecodable_index_key(&cluster.node(3).data_dir.clone(), "q", 0);
    cluster.node(3).restart().expect("a node with one damaged replica starts");

    // Reported, with the reason.
    let mut status = ClusterClient::new(channel(&addr).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let st = status.status(ClusterStatusRequest {}).await.unwrap().into_inner();
        let r = st.shards.iter().flat_map(|s| &s.replicas).find(|r| r.node_id == 3).cloned();
        if let Some(r) = r.filter(|r| r.state == ReplicaState::Quarantined as i32) {
            break r.reason;
        }
        assert!(std::time::Instant::now() < deadline, "node 3's replica not reported quarantined: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(reason.contains("payload index key"), "{reason}");

    // Served by the other replicas meanwhile: writes and reads go on.
    wait_acks(&load, load.acked_len() + 200).await;
    let mut points = PointsClient::new(channel(&addr).await);
    for consistency in [Consistency::Any, Consistency::Strong] {
        let req = SearchPointsRequest { collection: "q".into(), vector: vector(3, DIM), top_k: 5, consistency: consistency as i32, ..Default::default() };
        assert_eq!(points.search(req).await.unwrap().into_inner().results.len(), 5);
    }

    // Repair: move the replica to a new node, then back (node 3 rebuilds
    // it from the leader). Node 3 is down during the first move, so its
    // damaged copy goes at its next start (the quarantine itself is not
    // kept across restarts): it must not come back with the replica.
    let id4 = cluster.add_node().await.unwrap();
    let via = cluster.node(1).addr.clone();
    cluster.node(3).terminate().unwrap();
    let out = ctl(&via, &["cluster", "move", "--collection", "q", "--shard", "0", "--from", "3", "--to", &id4.to_string()]);
    assert_eq!(out["operations"][0]["state"], "done", "{out}");
    cluster.node(3).restart().unwrap();
    let out = ctl(&via, &["cluster", "move", "--collection", "q", "--shard", "0", "--from", &id4.to_string(), "--to", "3"]);
    assert_eq!(out["operations"][0]["state"], "done", "{out}");
    wait_acks(&load, load.acked_len() + 200).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "q", 1, &acked, &attempted).await;
    let st = status.status(ClusterStatusRequest {}).await.unwrap().into_inner();
    let states: Vec<(u64, i32)> = st.shards[0].replicas.iter().map(|r| (r.node_id, r.state)).collect();
    assert!(states.iter().all(|(_, s)| *s == ReplicaState::Active as i32) && states.iter().any(|(n, _)| *n == 3), "{states:?}");
}

/// 10,100 idle streams over ten connections: the process keeps answering
/// new clients, and one connection holds at most
/// `MAX_CONCURRENT_STREAMS` streams at once (its later requests wait for a
/// stream to end). tonic's default was no limit at all.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_streams() {
    use shoal_client::{Client, CollectionBuilder, Point, SearchBuilder};
    use shoal_proto::transport::MAX_CONCURRENT_STREAMS;
    use shoal_proto::v1::{Metric, SearchStreamRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = shoal_tests::ShoalProcess::start(dir.path()).unwrap();
    let c = Client::connect(&server.addr).await.unwrap();
    c.create_collection(CollectionBuilder::new("s", 4, Metric::Dot).build()).await.unwrap();
    c.upsert("s", (0..10).map(|i| Point::new(i, vector(i, 4))).collect()).await.unwrap();
    let connect = || async { tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap() };
    let mut held = vec![];
    let mut tasks = vec![];
    let mut first = None;
    for conn in 0..10 {
        let ch = connect().await;
        let n = if conn == 0 { MAX_CONCURRENT_STREAMS as usize + 76 } else { 1000 };
        for _ in 0..n {
            let (tx, rx) = tokio::sync::mpsc::channel::<SearchStreamRequest>(1);
            held.push(tx);
            let mut p = PointsClient::new(ch.clone());
            tasks.push(tokio::spawn(async move {
                let _ = p.search_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            }));
        }
        first.get_or_insert(ch);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let req = SearchPointsRequest { collection: "s".into(), vector: vector(1, 4), top_k: 1, ..Default::default() };
    // A new client is served.
    let fresh = tokio::time::timeout(Duration::from_secs(10), c.search(SearchBuilder::new("s", vector(1, 4), 1))).await;
    assert_eq!(fresh.expect("a new client is answered").unwrap().len(), 1);
    // The full connection: its next request waits for a free stream.
    let mut full = PointsClient::new(first.unwrap());
    let waiting = tokio::spawn(async move { full.search(req).await.map(|r| r.into_inner().results.len()) });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "a connection with {} open streams took one more", MAX_CONCURRENT_STREAMS + 76);
    // Streams end: it goes through.
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("answered once streams closed").unwrap();
    assert_eq!(got.unwrap(), 1);
    for t in tasks {
        let _ = t.await;
    }
}

/// A heavy request is not a dead node: a `SearchBatch` that keeps its node
/// busy well past the coordinator's 3 s attempt timeout (300 searches, each
/// scanning 20,000 stored payloads for an unindexed filter) completes. It
/// failed with UNAVAILABLE ("no answer within 2.97s") and the node was then
/// passed over as if dead; now a node that answers a health check is
/// waited for, up to the call's deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_node_is_waited_for_not_passed_over() {
    use shoal_client::{Client, Point, SearchBuilder};
    use shoal_proto::v1::{condition, Condition, Filter, MatchCondition, match_condition};
    let cluster = ProcCluster::start(1).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "busy", 1, 1).await;
    let c = Client::connect(&addr).await.unwrap();
    for b in 0..20u64 {
        c.upsert("busy", (b * 1000..(b + 1) * 1000).map(|i| Point::new(i, vector(i, DIM)).payload(workload::payload(i))).collect()).await.unwrap();
    }
    let f = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "tag".into(), value: Some(match_condition::Value::Keyword("t3".into())) })) }], ..Default::default() };
    let searches: Vec<SearchBuilder> = (0..300u64).map(|i| SearchBuilder::new("busy", vector(i, DIM), 5).filter(f.clone())).collect();
    let t = std::time::Instant::now();
    let got = c.search_batch("busy", searches).await.expect("a long batch completes");
    println!("300 filtered searches took {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(got.len(), 300);
    assert!(got.iter().all(|r| r.len() == 5));
}

/// Node `id`'s view of `collection/0`: whether it leads it and whether
/// its replica is catching up after a lost disk (None: not open there).
async fn replica_view(cluster: &ProcCluster, id: u64, collection: &str) -> Option<(bool, bool)> {
    let st = cluster.node_status(id).await?;
    st.shards.iter().find(|s| s.collection == collection && s.shard_id == 0).map(|s| (s.leader, s.catching_up))
}

/// Issue 14 point 4, the double fault. Writes are acknowledged by the
/// shard leader L and node A alone (the third replica, B, is paused).
/// Then A loses its disk and L dies. Before the fix, A came back with an
/// empty log and voted like any replica, so B, which misses those writes,
/// won the election, and its entries overwrote them on L when L returned:
/// acknowledged writes lost. Now A (a new incarnation under its old id)
/// does not vote until it holds every committed entry: the shard waits for
/// L, and nothing acknowledged is lost. A is counted as a rejoin in the
/// map and votes again once caught up.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_lost_its_disk_does_not_vote_until_caught_up() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "ld", 1, 3).await;
    let load = Load::start(&addr, "ld", 2, 0).await;
    wait_acks(&load, 200).await;
    cluster.caught_up("ld", 0, 3, 50, Duration::from_secs(60)).await.unwrap();
    // A is never node 1 (it starts with --bootstrap and no seeds).
    let l = workload::leader_of(&addr, "ld", 0).await;
    let a = if l == 2 { 3 } else { 2 };
    let b = 6 - l - a;

    cluster.node(b).pause();
    wait_acks(&load, load.acked_len() + 300).await;
    cluster.node(a).kill9();
    cluster.node(l).kill9();
    std::fs::remove_dir_all(&cluster.node(a).data_dir).unwrap();
    cluster.node(b).resume();
    cluster.start_empty(a).unwrap();

    // Many election rounds with only A and B up: nobody may lead, also
    // once A has the shard open again (5 s after that, or 15 s in all:
    // with the fix A's metadata replica does not vote either, so A may
    // not learn the map until L is back).
    let started = std::time::Instant::now();
    let mut opened: Option<std::time::Instant> = None;
    while started.elapsed() < Duration::from_secs(15) && opened.is_none_or(|t| t.elapsed() < Duration::from_secs(5)) {
        for id in [a, b] {
            let v = replica_view(&cluster, id, "ld").await;
            assert!(!v.is_some_and(|v| v.0), "node {id} leads ld/0 without the writes only L and A held ({v:?})");
            if id == a && v.is_some() {
                opened.get_or_insert_with(std::time::Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.node(l).restart().unwrap();
    wait_acks(&load, load.acked_len() + 200).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "ld", 1, &acked, &attempted).await;
    // A registered its new incarnation (counted once) and votes again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let map = cluster.map_at(l).await.unwrap();
        let entry = map.nodes.iter().find(|n| n.id == a).cloned().unwrap();
        let view = replica_view(&cluster, a, "ld").await;
        if entry.rejoins == 1 && view.is_some_and(|v| !v.1) {
            break;
        }
        assert!(entry.rejoins <= 1 && std::time::Instant::now() < deadline, "node {a}: {entry:?}, replica (leads, catching up): {view:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Node `id`'s status (internal `Meta/NodeStatus`).
async fn node_status(cluster: &ProcCluster, id: u64) -> shoal_proto::internal::v1::NodeStatusResponse {
    cluster.node_status(id).await.unwrap_or_else(|| panic!("node {id} does not answer its status"))
}

/// Point 9, the free-space watermark on a leader: upserts answer
/// RESOURCE_EXHAUSTED with the reason, deletes still work (they are how
/// space is won back), and the node stays alive and serving reads.
/// Before, a node wrote until RocksDB failed, and the group stopped.
#[tokio::test(flavor = "multi_thread")]
async fn below_the_watermark_a_leader_refuses_upserts_not_deletes() {
    use shoal_client::{Client, Point};
    // A watermark no volume meets.
    let cluster = ProcCluster::start_with(1, &["--min-free-disk-mb", "1000000000000"]).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "full", 1, 1).await;
    let c = Client::connect(&addr).await.unwrap();
    match c.upsert("full", vec![Point::new(1, vector(1, DIM))]).await {
        Err(shoal_client::ClientError::Status(s)) => assert!(s.code() == tonic::Code::ResourceExhausted && s.message().contains("watermark"), "{s:?}"),
        other => panic!("an upsert on a full node must be refused: {other:?}"),
    }
    c.delete_ids("full", vec![1u64.into()]).await.expect("deletes go on below the watermark");
    assert_eq!(c.count("full", None).await.unwrap(), 0, "reads go on");
    let st = node_status(&cluster, 1).await;
    assert!(st.disk_low && st.stopped_groups.is_empty(), "{st:?}");
}

/// Unmounts a test's tmpfs.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Point 9 and the disk-full scenario: node 3's data volume (a 160 MiB
/// tmpfs) drops below its watermark under write load. Its replica stops
/// taking entries (the leader retries them) but keeps its leader, the
/// group stays up on the other two, nothing stops for good, and once space
/// returns node 3 catches up by itself: every acknowledged write is
/// readable and the three replicas agree. Before, RocksDB failed the
/// write, openraft stopped the group until a restart, and liveness (a TCP
/// check) still said alive. Needs root for the mount (CI runs as root);
/// elsewhere it says SKIPPED.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_pauses_a_replica_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"]).arg(&vol).status().is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let _unmount = Unmount(vol.clone());
    let mut cluster = ProcCluster::start(2).await.unwrap();
    let n3 = cluster.add_node_with(Some(&vol.join("n3")), &["--min-free-disk-mb".into(), "64".into()]).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "df", 1, 3).await;
    if workload::leader_of(&addr, "df", 0).await == n3 {
        let out = ctl(&cluster.node(1).addr.clone(), &["cluster", "transfer-leader", "--collection", "df", "--shard", "0", "--to", "1"]);
        assert_eq!(out["operations"][0]["state"], "done", "{out}");
    }
    let load = Load::start(&addr, "df", 2, 0).await;
    wait_acks(&load, 200).await;
    cluster.caught_up("df", 0, 3, 50, Duration::from_secs(60)).await.unwrap();

    // Leave 16 MiB: below the 64 MiB watermark, above zero.
    let free = shoal_node::disk::free_bytes(&vol).unwrap();
    let filler = vol.join("filler");
    std::fs::write(&filler, vec![0u8; (free - (16 << 20)) as usize]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node_status(&cluster, n3).await.disk_low {
        assert!(std::time::Instant::now() < deadline, "node {n3} does not report its low disk");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = cluster.applied("df", 0).await.unwrap()[&n3];
    let term = node_status(&cluster, n3).await.shards.iter().find(|s| s.collection == "df").map(|s| s.term).unwrap();
    wait_acks(&load, load.acked_len() + 400).await;
    let st = node_status(&cluster, n3).await;
    let now_term = st.shards.iter().find(|s| s.collection == "df").map(|s| s.term).unwrap();
    assert_eq!(now_term, term, "node {n3} stood for election while its entries were refused");
    let now = st.shards.iter().find(|s| s.collection == "df").map(|s| s.applied_index).unwrap();
    assert!(now <= applied + 2, "node {n3} took entries below its watermark ({applied} -> {now})");
    assert!(st.stopped_groups.is_empty(), "{st:?}");
    assert!(st.shards.iter().all(|s| s.leader_id != 0 && s.leader_id != n3), "node {n3} keeps its leader: {st:?}");

    std::fs::remove_file(&filler).unwrap();
    wait_acks(&load, load.acked_len() + 200).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "df", 1, &acked, &attempted).await;
    let st = node_status(&cluster, n3).await;
    assert!(!st.disk_low && st.stopped_groups.is_empty(), "{st:?}");
}

/// Corruption of a minority replica's files (issue 14): bytes in the
/// middle of node 3's RocksDB write-ahead log are damaged while it is
/// down. Before, RocksDB (its default recovery mode) replayed the log up
/// to the damage and opened without the rest, so the node came back
/// without Raft entries it had acknowledged. Now it refuses to start with
/// the corruption named; once its data directory is emptied it rejoins as
/// a new incarnation, is rebuilt from its peers without voting before it
/// has caught up, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_write_ahead_log_stops_the_node_and_an_emptied_directory_repairs_it() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "wal", 1, 3).await;
    let load = Load::start(&addr, "wal", 2, 0).await;
    wait_acks(&load, 400).await;
    cluster.caught_up("wal", 0, 3, 50, Duration::from_secs(60)).await.unwrap();
    let dir = cluster.node(3).data_dir.clone();
    cluster.node(3).kill9();
    let wal = std::fs::read_dir(dir.join("db")).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).expect("a write-ahead log");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 4096, "{} is {} bytes", wal.display(), bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&wal, &bytes).unwrap();
    let Err(err) = cluster.node(3).restart() else {
        panic!("a node whose log lost acknowledged records must not start on the rest");
    };
    println!("node 3 refused to start: {err:#}");

    cluster.start_empty(3).unwrap();
    wait_acks(&load, load.acked_len() + 300).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "wal", 1, &acked, &attempted).await;
}
