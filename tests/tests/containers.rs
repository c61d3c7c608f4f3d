//! Container fault suite: three `shoal node` containers on a private
//! Docker network and a coordinator, with writers and `any`-consistency
//! searchers running throughout. One fault per phase:
//! 1. kill -9 of a shard leader's container, then start it again;
//! 2. `docker pause` of a shard leader, then unpause;
//! 3. a partition: a shard leader disconnected from the network, then
//!    reconnected;
//! 4. a rolling restart of every node, each caught up before the next.
//!
//! After each phase the load stops and the check runs: every acknowledged
//! write is readable with `strong` reads and every replica's digest is
//! identical. Each phase prints the longest time without an acknowledged
//! write, and the searchers' error rate and longest time without an answer.
//!
//! A second test rehearses the Kubernetes StatefulSet in compose
//! (deploy/k8s-rehearsal.yml): pods named and addressed as in Kubernetes,
//! started at once with the StatefulSet's environment, form one cluster;
//! pod 0 replaced with an empty volume joins it instead of starting a
//! second one.
//!
//! Needs Docker and builds the image from the binaries under test, so the
//! tests are `#[ignore]`d; `.ci/run` runs them, one at a time, when
//! `docker info` works:
//! `cargo test --release --workspace --test containers -- --ignored --nocapture --test-threads 1`.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::containers::{build_image, DockerCluster, Rehearsal};
use shoal_tests::workload::{self, acks_resume, create, leader_of, wait_acks, Availability, Load, Searchers};

const SHARDS: u32 = 2;
const IMAGE: &str = "shoal:test";

/// Every write acknowledged or attempted so far, across phases.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<u64>,
    attempted: BTreeSet<u64>,
    next_base: u64,
}

impl Ledger {
    /// Starts writers (on fresh ids) and searchers; waits for some acks.
    async fn load(&mut self, addr: &str) -> (Load, Searchers) {
        let load = Load::start(addr, "c", 3, self.next_base).await;
        self.next_base += 10_000_000;
        let searchers = Searchers::start(addr, "c", 2).await;
        wait_acks(&load, 300).await;
        (load, searchers)
    }

    /// Stops the load, checks everything acknowledged so far, and reports
    /// the phase.
    async fn finish(&mut self, cluster: &DockerCluster, name: &str, (load, searchers): (Load, Searchers), from: Instant) -> Availability {
        let avail = searchers.since(from);
        let write_gap = load.longest_ack_gap(from);
        searchers.stop().await;
        let (acked, attempted) = load.stop().await;
        self.acked.extend(acked);
        self.attempted.extend(attempted);
        workload::check(&cluster.view(), cluster.coordinator(), "c", SHARDS, &self.acked, &self.attempted).await;
        println!(
            "{name}: longest time without an acknowledged write {write_gap:?}; `any` searches: {} answered, {} failed (error rate {:.2}%), longest gap {:?}; {} acknowledged ids all readable, replicas identical",
            avail.answered,
            avail.failed,
            avail.error_rate() * 100.0,
            avail.longest_gap,
            self.acked.len()
        );
        avail
    }
}

/// Waits until every replica of every shard is within 200 entries of its
/// leader (the cluster is whole again).
async fn whole(cluster: &DockerCluster, id: u64) {
    for s in 0..SHARDS {
        cluster.view().caught_up("c", s, 3, 200, Duration::from_secs(120)).await.unwrap_or_else(|e| panic!("{e}\nlast log lines of node {id}:\n{}", cluster.logs(id)));
    }
}

/// A single-node fault and its repair.
#[derive(Clone, Copy)]
enum Fault {
    /// `docker kill --signal KILL`, then `docker start`.
    Kill9,
    /// `docker pause`, then `docker unpause`.
    Pause,
    /// `docker network disconnect`, then `connect` with the same IP.
    Partition,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 of a leader container",
            Fault::Pause => "docker pause of a leader",
            Fault::Partition => "partition of a leader",
        }
    }

    fn apply(self, c: &mut DockerCluster, id: u64) -> anyhow::Result<()> {
        match self {
            Fault::Kill9 => c.kill9(id),
            Fault::Pause => c.pause(id),
            Fault::Partition => c.disconnect(id),
        }
    }

    fn heal(self, c: &mut DockerCluster, id: u64) -> anyhow::Result<()> {
        match self {
            Fault::Kill9 => c.start_again(id),
            Fault::Pause => c.unpause(id),
            Fault::Partition => c.connect(id),
        }
    }
}

/// The image under test, built once per test binary.
fn image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_image(IMAGE).unwrap());
    IMAGE
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn container_faults() {
    image();
    let mut cluster = DockerCluster::start(3, IMAGE).await.unwrap();
    let addr = cluster.coordinator().to_string();
    create(&addr, "c", SHARDS, 3).await;
    let mut ledger = Ledger::default();
    let mut results = vec![];

    // 1-3. One leader at a time: killed, paused, cut off; then healed.
    for (fault, shard) in [(Fault::Kill9, 0), (Fault::Pause, 1), (Fault::Partition, 0)] {
        let running = ledger.load(&addr).await;
        let victim = leader_of(&addr, "c", shard).await;
        let t = Instant::now();
        fault.apply(&mut cluster, victim).unwrap();
        acks_resume(&running.0, t, 20).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        fault.heal(&mut cluster, victim).unwrap();
        whole(&cluster, victim).await;
        results.push((fault.name(), ledger.finish(&cluster, &format!("{} (node {victim}, leader of shard {shard})", fault.name()), running, t).await));
    }

    // 4. Rolling restart: each node restarted gracefully and caught up
    //    before the next.
    let running = ledger.load(&addr).await;
    let t = Instant::now();
    for id in 1..=3 {
        cluster.restart(id).unwrap();
        whole(&cluster, id).await;
    }
    let took = t.elapsed();
    results.push(("rolling restart", ledger.finish(&cluster, &format!("rolling restart of 3 nodes in {took:?}"), running, t).await));

    // Searches with `any` kept answering through every single-node fault.
    for (name, a) in &results {
        assert!(a.answered > 0, "{name}: no search answered");
        assert!(a.longest_gap < Duration::from_secs(15), "{name}: `any` searches stopped answering for {:?}", a.longest_gap);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn statefulset_rehearsal_forms_one_cluster_and_an_empty_pod_0_rejoins_it() {
    image();
    let formed = Instant::now();
    let r = Rehearsal::up(IMAGE).unwrap();
    let nodes = r.nodes(3).unwrap();
    nodes.wait_members(3, Duration::from_secs(120)).await.unwrap_or_else(|e| panic!("{e}\n{}", r.logs("shoal-0")));
    println!("3 pods started together formed one cluster {:?} after `docker-compose up`", formed.elapsed());
    // Ids from the ordinals, stable DNS names as addresses, one cluster.
    let map = nodes.map_at(1).await.unwrap();
    let mut members: Vec<(u64, String)> = map.nodes.iter().map(|n| (n.id, n.address.clone())).collect();
    members.sort();
    let want: Vec<(u64, String)> = (0..3).map(|i| (i + 1, format!("shoal-{i}.shoal-headless.default.svc.cluster.local:7400"))).collect();
    assert_eq!(members, want);
    for id in 2..=3 {
        assert_eq!(nodes.map_at(id).await.unwrap().nodes.len(), 3, "node {id} is in the same cluster");
    }

    let coord = format!("{}:6333", r.ip("shoal-coordinator").unwrap());
    create(&coord, "c", SHARDS, 3).await;
    let load = Load::start(&coord, "c", 3, 0).await;
    wait_acks(&load, 300).await;
    let epoch = nodes.map_at(2).await.unwrap().epoch;

    // Pod 0 comes back with an empty volume (a lost PersistentVolume): it
    // must join the running cluster, not bootstrap a second one.
    let t = Instant::now();
    r.replace_pod_with_empty_volume(0).unwrap();
    let nodes = r.nodes(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(m) = nodes.map_at(1).await {
            if m.collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == "c")) && m.nodes.len() == 3 && m.epoch >= epoch {
                break;
            }
        }
        assert!(Instant::now() < deadline, "pod 0 did not rejoin:\n{}", r.logs("shoal-0"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("pod 0 with an empty volume rejoined the cluster in {:?}", t.elapsed());
    let logs = r.logs("shoal-0");
    assert!(!logs.contains("started a new cluster") && logs.contains("--bootstrap ignored"), "pod 0 should have joined, not bootstrapped:\n{logs}");
    for id in 2..=3 {
        assert_eq!(nodes.map_at(id).await.unwrap().nodes.len(), 3, "node {id} still sees one cluster of three");
    }
    wait_acks(&load, load.acked_len() + 300).await;
    let (acked, attempted) = load.stop().await;
    // Pod 0's replicas are rebuilt from the others: digests agree.
    workload::check(&nodes, &coord, "c", SHARDS, &acked, &attempted).await;
    println!("{} acknowledged writes readable; pod 0's replicas match the others", acked.len());
}
