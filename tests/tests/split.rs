//! Resharding on a running cluster of `shoal node` processes: shards split
//! in two hash ranges through `shoalctl cluster split` while clients write
//! and search continuously. Ends with every acknowledged write readable
//! where the new map routes it, identical replica digests, no frozen copy
//! left behind, and searches that kept answering.
use std::time::{Duration, Instant};

use shoal_proto::internal::v1::ClusterMap;
use shoal_proto::routing::{ShardMap, ShardRange};
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::{Consistency, SearchPointsRequest};
use shoal_tests::procs::ProcCluster;
use shoal_tests::workload::{self, channel, create, wait_acks, Load, Searchers, DIM};
use shoal_tests::{ctl, ctl_fails, shoalctl, vector};

/// The collection's routed shard map (validated: the ranges tile the
/// hash space) and whether any shard is still being split off.
fn layout(map: &ClusterMap) -> (ShardMap, bool) {
    let c = &map.collections[0];
    let ranges = c.shards.iter().filter(|s| !s.splitting).map(|s| ShardRange { shard_id: s.shard_id, start: s.range_start, end: s.range_end }).collect();
    (ShardMap::new(ranges).expect("routed shards tile the hash space"), c.shards.iter().any(|s| s.splitting))
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_split_under_write_and_search_load() {
    let mut cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "sp", 2, 2).await;
    let load = Load::start(&addr, "sp", 3, 0).await;
    let searchers = Searchers::start(&addr, "sp", 2).await;
    wait_acks(&load, 1000).await;
    let via = cluster.node(2).addr.clone();

    // Refusals: a split point outside the shard's range, an unknown shard.
    ctl_fails(&via, &["cluster", "split", "--collection", "sp", "--shard", "1", "--at", "10"], "not inside");
    ctl_fails(&via, &["cluster", "split", "--collection", "sp", "--shard", "0", "--at", "0"], "lower half would be empty");
    ctl_fails(&via, &["cluster", "split", "--collection", "sp", "--shard", "9"], "not hosted");

    // Split shard 0 at its middle: shard 2 takes the upper half.
    let started = Instant::now();
    let out = ctl(&via, &["cluster", "split", "--collection", "sp", "--shard", "0"]);
    assert_eq!(out["operations"][0]["state"], "done", "{out}");
    let (m, splitting) = layout(&cluster.map_at(2).await.unwrap());
    assert!(!splitting);
    let r: Vec<(u32, u64, u64)> = m.ranges().iter().map(|r| (r.shard_id, r.start, r.end)).collect();
    assert_eq!(r, vec![(0, 0, (1 << 62) - 1), (2, 1 << 62, (1 << 63) - 1), (1, 1 << 63, u64::MAX)], "shard 0 split at its middle");
    wait_acks(&load, load.acked_len() + 500).await;

    // Every shard, all three splits at once: 3 -> 6 shards.
    let out = ctl(&via, &["cluster", "split", "--collection", "sp", "--all", "--parallel", "3"]);
    assert_eq!(out["operations"].as_array().unwrap().len(), 3, "{out}");
    assert!(out["operations"].as_array().unwrap().iter().all(|o| o["state"] == "done"), "{out}");
    let map = cluster.map_at(2).await.unwrap();
    let (m, splitting) = layout(&map);
    assert_eq!((m.ranges().len(), splitting), (6, false));
    assert_eq!(map.collections[0].config.as_ref().unwrap().shard_count, 6, "the config follows");
    println!("4 splits took {:.1} s", started.elapsed().as_secs_f64());
    wait_acks(&load, load.acked_len() + 500).await;

    let avail = searchers.since(started);
    searchers.stop().await;
    let (acked, attempted) = load.stop().await;
    println!("searches during the splits: {} answered, {} failed, longest gap {:?}", avail.answered, avail.failed, avail.longest_gap);
    assert_eq!(avail.failed, 0, "searches kept answering through the splits");
    assert!(avail.longest_gap < Duration::from_secs(5), "{avail:?}");
    // Acknowledged ids readable where the new map routes them, replicas
    // identical, and the replicas' counts add up to the collection's count
    // (no parent kept a copy of its moved half).
    workload::check(&cluster.view(), &addr, "sp", 6, &acked, &attempted).await;

    // Each point is in the shard its hash routes to, and an exact search
    // for a stored vector finds it first.
    let mut c = PointsClient::new(channel(&addr).await);
    for id in acked.iter().step_by(acked.len() / 20 + 1) {
        let req = SearchPointsRequest { collection: "sp".into(), vector: vector(*id, DIM), top_k: 1, exact: true, consistency: Consistency::Strong as i32, ..Default::default() };
        let r = c.search(req).await.unwrap().into_inner();
        assert_eq!(r.results[0].id, Some((*id).into()), "exact search for point {id}");
    }
    for s in m.ranges() {
        let d = cluster.digests("sp", s.shard_id).await.unwrap();
        assert_eq!(d.len(), 2, "two replicas of shard {}", s.shard_id);
    }
    println!("{} acknowledged writes checked", acked.len());
}

/// A split survives a kill -9 of the node driving it, and a replica that
/// was down while a split ran catches up afterwards: the parent's log is
/// compacted meanwhile (a snapshot every 200 entries), so it gets the
/// parent's post-split state and the child's state as snapshots instead
/// of applying the split itself.
#[tokio::test(flavor = "multi_thread")]
async fn splits_resume_after_the_driver_dies_and_a_lagging_replica_catches_up() {
    let mut cluster = ProcCluster::start_with(3, &["--snapshot-every", "200", "--snapshot-keep", "0"]).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "sr", 1, 3).await;
    let load = Load::start(&addr, "sr", 3, 0).await;
    wait_acks(&load, 1000).await;

    let driver = cluster.meta_leader().await;
    let lagging = (1..=3).find(|id| *id != driver).unwrap();
    let via = cluster.nodes.iter().find(|n| n.id != driver && n.id != lagging).unwrap().addr.clone();
    cluster.node(lagging).kill9();
    let out = ctl(&via, &["cluster", "split", "--collection", "sr", "--shard", "0"]);
    assert_eq!(out["operations"][0]["state"], "done", "split with node {lagging} down: {out}");
    // Enough entries for the parent's log to be compacted past the split.
    wait_acks(&load, load.acked_len() + 30_000).await;
    cluster.node(lagging).restart().unwrap();

    // The driver dies 300 ms into the next split; the next metadata
    // leader finishes it.
    let (ok, out, err) = shoalctl(&["-o", "json", "cluster", "split", "--collection", "sr", "--shard", "1", "--no-wait", "--node", &via]);
    assert!(ok, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.node(driver).kill9();
    let t = Instant::now();
    let (ok, out, err) = shoalctl(&["-o", "json", "cluster", "ops", "--watch", "--node", &via]);
    assert!(ok, "the split did not finish after its driver died:\n{out}\n{err}");
    println!("driver node {driver} killed 300 ms into a split; done {:.1} s later", t.elapsed().as_secs_f64());
    cluster.node(driver).restart().unwrap();
    let (m, splitting) = layout(&cluster.map_at(lagging).await.unwrap());
    assert_eq!((m.ranges().len(), splitting), (3, false));
    wait_acks(&load, load.acked_len() + 500).await;

    let (acked, attempted) = load.stop().await;
    workload::check(&cluster.view(), &addr, "sr", 3, &acked, &attempted).await;
    for s in 0..3 {
        assert_eq!(cluster.digests("sr", s).await.unwrap().len(), 3, "three replicas of shard {s} answered, node {lagging} included");
    }
    println!("{} acknowledged writes checked", acked.len());
}
