//! Cluster operations on a running cluster of `shoal node` processes under
//! continuous write load, driven through `shoalctl` as an operator would:
//! a node added, a leader replica moved onto it, leadership transferred,
//! a rebalance, a drain and removal of the bootstrap node, and a
//! replication factor change. Ends with every acknowledged write readable,
//! identical replica digests and the replica counts each step promised.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_proto::internal::v1::ClusterMap;
use shoal_tests::procs::ProcCluster;
use shoal_tests::workload::{self, create, leader_of, wait_acks, Load};
use shoal_tests::{ctl, ctl_fails, shoalctl};

const SHARDS: u32 = 2;

fn replicas(map: &ClusterMap, shard: u32) -> Vec<u64> {
    map.collections[0].shards.iter().find(|s| s.shard_id == shard).expect("shard").replicas.clone()
}

/// Replicas per node over the whole map.
fn per_node(map: &ClusterMap) -> BTreeMap<u64, usize> {
    let mut out: BTreeMap<u64, usize> = map.nodes.iter().map(|n| (n.id, 0)).collect();
    for s in map.collections.iter().flat_map(|c| &c.shards) {
        for r in &s.replicas {
            *out.entry(*r).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn moves_transfer_rebalance_drain_and_replication_under_write_load() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "o", SHARDS, 2).await;
    let load = Load::start(&addr, "o", 3, 0).await;
    wait_acks(&load, 500).await;
    let id4 = cluster.add_node().await.unwrap();
    let via = cluster.node(2).addr.clone();

    // Refusals: a target that holds the shard, a node with replicas.
    let map = cluster.map_at(2).await.unwrap();
    let r0 = replicas(&map, 0);
    ctl_fails(&via, &["cluster", "move", "--collection", "o", "--shard", "0", "--from", &r0[0].to_string(), "--to", &r0[1].to_string()], "already holds a replica");
    ctl_fails(&via, &["cluster", "remove-node", "--node-id", &r0[0].to_string()], "drain it first");

    // Move shard 0's leader replica onto the new node.
    let leader = leader_of(&addr, "o", 0).await;
    let out = ctl(&via, &["cluster", "move", "--collection", "o", "--shard", "0", "--from", &leader.to_string(), "--to", &id4.to_string()]);
    assert_eq!(out["operations"][0]["state"], "done", "{out}");
    let r0 = replicas(&cluster.map_at(2).await.unwrap(), 0);
    assert!(r0.contains(&id4) && !r0.contains(&leader) && r0.len() == 2, "{r0:?}");
    wait_acks(&load, load.acked_len() + 300).await;

    // Hand shard 1's leadership to its other replica.
    let leader1 = leader_of(&addr, "o", 1).await;
    let other = *replicas(&cluster.map_at(2).await.unwrap(), 1).iter().find(|n| **n != leader1).unwrap();
    ctl(&via, &["cluster", "transfer-leader", "--collection", "o", "--shard", "1", "--to", &other.to_string()]);
    assert_eq!(leader_of(&addr, "o", 1).await, other, "leadership moved");
    assert_eq!(replicas(&cluster.map_at(2).await.unwrap(), 1)[0], other, "and it is the preferred leader");

    // Rebalance: 4 replicas over 4 nodes, one each.
    ctl(&via, &["cluster", "rebalance", "--parallel", "2"]);
    let counts = per_node(&cluster.map_at(2).await.unwrap());
    assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    wait_acks(&load, load.acked_len() + 300).await;

    // Drain the bootstrap node (it may lead the metadata group), remove it,
    // stop it.
    ctl(&via, &["cluster", "drain", "--node-id", "1"]);
    let map = cluster.map_at(2).await.unwrap();
    assert_eq!(per_node(&map).get(&1), Some(&0), "{map:?}");
    ctl(&via, &["cluster", "remove-node", "--node-id", "1"]);
    cluster.node(1).terminate().unwrap();
    cluster.wait_members(3, Duration::from_secs(30)).await.unwrap();
    wait_acks(&load, load.acked_len() + 300).await;

    // Replication factor 2 -> 3 on the three nodes left.
    ctl(&via, &["cluster", "set-replication", "--collection", "o", "--rf", "3"]);
    let map = cluster.map_at(2).await.unwrap();
    assert_eq!(map.collections[0].config.as_ref().unwrap().replication_factor, 3);
    for s in 0..SHARDS {
        let mut r = replicas(&map, s);
        r.sort_unstable();
        assert_eq!(r, vec![2, 3, id4], "shard {s}");
    }
    let ops = ctl(&via, &["cluster", "ops"]);
    assert!(ops["operations"].as_array().unwrap().iter().all(|o| o["state"] == "done"), "{ops}");

    wait_acks(&load, load.acked_len() + 300).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "o", SHARDS, &acked, &attempted).await;
    for s in 0..SHARDS {
        assert_eq!(cluster.digests("o", s).await.unwrap().len(), 3, "three replicas of shard {s} answered");
    }
    println!("{} acknowledged writes checked", acked.len());
}

/// A move survives a kill -9 of the node driving it: the operation is in
/// the replicated map, the next metadata leader finds it and finishes it
/// (each step checks what is already done), then the killed node returns.
/// Runs twice, killing at once and after the move has started.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_resumes_after_its_driver_is_killed() {
    let mut cluster = ProcCluster::start_with(4, &["--snapshot-every", "200", "--snapshot-keep", "0"]).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "r", SHARDS, 2).await;
    let load = Load::start(&addr, "r", 3, 0).await;
    wait_acks(&load, 3000).await;
    for delay_ms in [0u64, 300] {
        let driver = cluster.meta_leader().await;
        let map = cluster.map_at(driver).await.unwrap();
        // A shard and a move that do not involve the driver's node, so
        // killing it stops the driver and nothing else.
        let (shard, from, to) = (0..SHARDS)
            .find_map(|s| {
                let r = replicas(&map, s);
                let to = map.nodes.iter().map(|n| n.id).find(|n| !r.contains(n) && *n != driver)?;
                let from = *r.iter().find(|n| **n != driver)?;
                (!r.contains(&driver)).then_some((s, from, to))
            })
            .or_else(|| {
                (0..SHARDS).find_map(|s| {
                    let r = replicas(&map, s);
                    let to = map.nodes.iter().map(|n| n.id).find(|n| !r.contains(n) && *n != driver)?;
                    Some((s, *r.iter().find(|n| **n != driver)?, to))
                })
            })
            .expect("a move avoiding the driver");
        let via = cluster.nodes.iter().find(|n| n.id != driver && n.is_running()).unwrap().addr.clone();
        let (ok, out, err) =
            shoalctl(&["-o", "json", "cluster", "move", "--collection", "r", "--shard", &shard.to_string(), "--from", &from.to_string(), "--to", &to.to_string(), "--no-wait", "--node", &via]);
        assert!(ok, "{out}{err}");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        cluster.node(driver).kill9();
        let t = Instant::now();
        let (ok, out, err) = shoalctl(&["-o", "json", "cluster", "ops", "--watch", "--node", &via]);
        assert!(ok, "the move did not finish after its driver died:\n{out}\n{err}");
        println!("driver node {driver} killed {delay_ms} ms into moving {shard} from {from} to {to}; done {:.1} s later", t.elapsed().as_secs_f64());
        let r = replicas(&cluster.map_at(to).await.unwrap(), shard);
        assert!(r.contains(&to) && !r.contains(&from), "{r:?}");
        cluster.node(driver).restart().unwrap();
        wait_acks(&load, load.acked_len() + 500).await;
    }
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "r", SHARDS, &acked, &attempted).await;
}

/// `shoal.ready` health status of a node.
async fn ready(addr: &str) -> bool {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let Ok(ch) = shoal_tests::tls::channel_with(addr, Duration::from_secs(2)).await else {
        return false;
    };
    matches!(HealthClient::new(ch).check(HealthCheckRequest { service: "shoal.ready".into() }).await, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
}

async fn wait_ready(addr: &str, want: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while ready(addr).await != want {
        assert!(Instant::now() < deadline, "node {addr} did not become {} within {within:?}", if want { "ready" } else { "not ready" });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `shoal handoff` (the Kubernetes preStop hook) moves every shard
/// leadership off a node under write load; readiness (`shoal.ready`)
/// follows whether a node's replicas have a leader to catch up with.
#[tokio::test(flavor = "multi_thread")]
async fn handoff_moves_leaderships_and_readiness_follows_the_groups() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "h", SHARDS, 3).await;
    let load = Load::start(&addr, "h", 3, 0).await;
    wait_acks(&load, 1000).await;
    for n in &cluster.nodes {
        wait_ready(&n.addr, true, Duration::from_secs(30)).await;
    }
    // Make one node lead both shards, then hand off.
    let node = leader_of(&addr, "h", 0).await;
    let via = cluster.node(node).addr.clone();
    if leader_of(&addr, "h", 1).await != node {
        ctl(&via, &["cluster", "transfer-leader", "--collection", "h", "--shard", "1", "--to", &node.to_string()]);
    }
    let t = Instant::now();
    let out = std::process::Command::new(shoal_tests::shoal_bin()).args(shoal_tests::tls::operator_flags()).args(["handoff", "--node", &via]).output().unwrap();
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("moved h/")).count(), 2, "both leaderships moved:\n{text}");
    for s in 0..SHARDS {
        assert_ne!(leader_of(&addr, "h", s).await, node, "shard {s} still led by node {node}");
    }
    wait_acks(&load, load.acked_len() + 500).await;
    println!("handoff of 2 shard leaderships took {:.2} s; longest write gap since: {:?}", took.as_secs_f64(), load.longest_ack_gap(t));

    // The metadata leader hands the metadata group over too.
    let meta = cluster.meta_leader().await;
    let via = cluster.node(meta).addr.clone();
    let t = Instant::now();
    let out = std::process::Command::new(shoal_tests::shoal_bin()).args(shoal_tests::tls::operator_flags()).args(["handoff", "--node", &via]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("moved meta -> node"), "{text}");
    let now = cluster.meta_leader().await;
    assert_ne!(now, meta, "metadata leadership moved:\n{text}");
    println!("metadata hand-off from node {meta} to node {now} took {:.2} s", t.elapsed().as_secs_f64());
    ctl(&cluster.node(now).addr.clone(), &["cluster", "ops"]);

    // Two of three nodes down: the survivor's groups have no leader, so it
    // is not ready; it is again once they return.
    let survivor = cluster.nodes[0].id;
    let down: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != survivor).collect();
    for id in &down {
        cluster.node(*id).kill9();
    }
    let survivor_addr = cluster.node(survivor).addr.clone();
    wait_ready(&survivor_addr, false, Duration::from_secs(30)).await;
    for id in &down {
        cluster.node(*id).restart().unwrap();
    }
    for n in &cluster.nodes {
        wait_ready(&n.addr, true, Duration::from_secs(60)).await;
    }
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "h", SHARDS, &acked, &attempted).await;
}

/// A backup taken under write load holds every point acknowledged before it
/// began and nothing never written; it restores on a cluster of another
/// size with another shard count; bad names and damaged files are refused.
#[tokio::test(flavor = "multi_thread")]
async fn backup_under_write_load_restores_on_a_cluster_of_another_size() {
    use shoal_proto::v1::points_client::PointsClient;
    use shoal_proto::v1::{point_id, CountPointsRequest, GetPointsRequest};
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    let cluster = ProcCluster::start_with(3, &["--backup-root", &r]).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "b", SHARDS, 3).await;
    let load = Load::start(&addr, "b", 3, 0).await;
    wait_acks(&load, 2000).await;
    let via = cluster.nodes[1].addr.clone();
    ctl_fails(&via, &["backup", "create", "--collection", "b", "--name", "../evil"], "must be 1 to 128 characters");
    let acked_before = load.acked_ids();
    let manifest = ctl(&via, &["backup", "create", "--collection", "b", "--name", "nightly"]);
    ctl_fails(&via, &["backup", "create", "--collection", "b", "--name", "nightly"], "already exists");
    wait_acks(&load, load.acked_len() + 500).await;
    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "b", SHARDS, &acked, &attempted).await;
    let total: u64 = manifest["shards"].as_array().unwrap().iter().map(|s| s["points"].as_u64().unwrap()).sum();
    assert!(
        total as usize >= acked_before.len() && total as usize <= attempted.len(),
        "backup holds {total} points; {} were acknowledged before it, {} attempted",
        acked_before.len(),
        attempted.len()
    );

    // Another cluster: one node, sharing the backup root; 3 shards, rf 1.
    let other = ProcCluster::start_with(1, &["--backup-root", &r]).await.unwrap();
    let out = ctl(&other.nodes[0].addr, &["--addr", &other.coordinator.addr, "backup", "restore", "--name", "nightly", "--collection", "restored", "--shards", "3", "--replication-factor", "1"]);
    assert_eq!(out["points"].as_u64(), Some(total), "{out}");
    let mut c = PointsClient::new(workload::channel(&other.coordinator.addr).await);
    let count = c.count(CountPointsRequest { collection: "restored".into(), ..Default::default() }).await.unwrap().into_inner().count;
    assert_eq!(count, total);
    let ids: Vec<u64> = acked_before.iter().copied().collect();
    for chunk in ids.chunks(1000) {
        let got = c.get(GetPointsRequest { collection: "restored".into(), ids: chunk.iter().map(|&i| i.into()).collect(), with_vector: true, ..Default::default() }).await.unwrap().into_inner().points;
        assert_eq!(got.len(), chunk.len(), "points acknowledged before the backup are in the restore");
        for p in got {
            let Some(point_id::Kind::Num(i)) = p.id.and_then(|i| i.kind) else { panic!("bad id") };
            assert_eq!(p.vector, shoal_tests::vector(i, workload::DIM), "point {i}");
        }
    }
    ctl_fails(&other.nodes[0].addr, &["--addr", &other.coordinator.addr, "backup", "restore", "--name", "nightly", "--collection", "restored"], "pass --resume");

    // A flipped byte is refused with the file named.
    let file = root.path().join("nightly").join("shard-0.pts");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    ctl_fails(&other.nodes[0].addr, &["--addr", &other.coordinator.addr, "backup", "restore", "--name", "nightly", "--collection", "broken", "--replication-factor", "1"], "backup is damaged");
    let listed = shoal_tests::shoalctl(&["--addr", &other.coordinator.addr, "-o", "json", "collection", "list"]).1;
    assert!(!listed.contains("broken"), "a damaged backup creates no collection: {listed}");
    println!("backup of {total} points under load ({} acknowledged before it) restored onto 1 node, 3 shards", acked_before.len());
}

/// Each answering node's metadata role.
async fn roles(cluster: &ProcCluster) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for n in &cluster.nodes {
        if let Some(st) = cluster.node_status(n.id).await {
            out.insert(n.id, st.meta_role);
        }
    }
    out
}

/// Issue 14 point 4: a metadata voter lost for good (killed, never back)
/// is drained and removed while it is down, and a learner takes its seat:
/// the metadata group has three voters again, so it then survives the loss
/// of a second original voter, and writes go on throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_metadata_voter_lost_for_good_is_replaced() {
    let mut cluster = ProcCluster::start(4).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "mv", 2, 3).await;
    let load = Load::start(&addr, "mv", 2, 0).await;
    wait_acks(&load, 200).await;
    let before = roles(&cluster).await;
    assert_eq!(before.get(&4).map(String::as_str), Some("learner"), "{before:?}");
    // Node 3, a metadata voter, is lost for good.
    cluster.node(3).kill9();
    let via = cluster.node(2).addr.clone();
    ctl(&via, &["cluster", "drain", "--node-id", "3"]);
    ctl(&via, &["cluster", "remove-node", "--node-id", "3"]);
    cluster.nodes.retain(|n| n.id != 3);
    cluster.wait_members(3, Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = roles(&cluster).await;
        if r.get(&4).is_some_and(|r| r != "learner") {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not take the lost voter's seat: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_acks(&load, load.acked_len() + 200).await;
    // A second original voter goes: voters 1 and 4 still form a majority.
    let second = if cluster.meta_leader().await == 1 { 2 } else { 1 };
    cluster.node(second).kill9();
    create(&addr, "after", 1, 1).await;
    let map = cluster.map_at(4).await.unwrap();
    assert!(map.collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == "after")), "the metadata group takes changes: {map:?}");
    let (acked, _) = load.stop().await;
    assert!(!acked.is_empty());
}
