//! Randomized fault run on one shard group of three in-process nodes.
//!
//! A writer upserts fresh ids, deletes acknowledged ones and sets a payload
//! key on acknowledged ones (by ids and by filter) while a seeded
//! schedule stops, restarts, partitions and heals nodes (one fault at a
//! time, so a majority can always make progress). Afterwards every node is
//! restarted and healed, and the history is checked against every replica:
//! - every acknowledged upsert not later deleted (or sent a delete that may
//!   have taken effect) is present, with its vector;
//! - every acknowledged delete is absent;
//! - every surviving point's payload `tag` is the last acknowledged one set
//!   on it, or one set after it without an acknowledgement, and its other
//!   keys are intact;
//! - no id appears that was never written (unacknowledged writes may or may
//!   not have taken effect);
//! - all replicas hold identical contents (vectors, payloads and sparse
//!   vectors).
//!
//! Seeds: `SHOAL_FAULT_SEEDS` (how many, default 2), `SHOAL_FAULT_SEED`
//! (replay one), `SHOAL_FAULT_STEPS` (faults per seed, default 6). Every
//! seed is printed so a failure can be replayed.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rand::{Rng, SeedableRng};
use shoal_node::raft::Command;
use shoal_proto::internal::v1::ShardWriteRequest;
use shoal_tests::raft_cluster::{upsert_cmd, RaftCluster};
use tokio::sync::RwLock;

const T: Duration = Duration::from_secs(30);

#[derive(Default)]
struct History {
    acked_upserts: BTreeSet<u64>,
    acked_deletes: BTreeSet<u64>,
    attempted: BTreeSet<u64>,
    /// Deletes sent but not acknowledged: they may or may not have taken
    /// effect (a timed-out write can still commit).
    maybe_deleted: BTreeSet<u64>,
    /// Per id: the last acknowledged `tag` set on it, and tags sent after
    /// it without an acknowledgement.
    tags: BTreeMap<u64, (Option<u64>, BTreeSet<u64>)>,
}

/// Sets `{"tag": tag}` on `ids`: by ids, or (every other time) by a
/// `has_id` filter, so both selectors go through the log.
fn tag_cmd(ids: &[u64], tag: u64) -> Command {
    use shoal_proto::v1::update_payload_request::{Op, Selector};
    use shoal_proto::v1::{condition, Condition, Filter, HasIdCondition, PointIdList, Struct, UpdatePayloadRequest};
    let pids: Vec<_> = ids.iter().map(|&i| i.into()).collect();
    let selector = if tag.is_multiple_of(2) {
        Selector::Ids(PointIdList { ids: pids })
    } else {
        Selector::Filter(Filter { must: vec![Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: pids })) }], ..Default::default() })
    };
    let op = Op::Set(Struct::try_from(&serde_json::json!({"tag": tag})).expect("object"));
    let u = UpdatePayloadRequest { collection: String::new(), selector: Some(selector), op: Some(op) };
    Command { write: ShardWriteRequest { payload_update: Some(u), ..Default::default() }.encode_to_vec() }
}

fn delete_cmd(ids: &[u64]) -> Command {
    Command { write: ShardWriteRequest { delete_ids: ids.iter().map(|&i| i.into()).collect(), ..Default::default() }.encode_to_vec() }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn run_seed(seed: u64, steps: u64) {
    eprintln!("fault run: seed {seed} ({steps} steps); replay with SHOAL_FAULT_SEED={seed}");
    let cluster = Arc::new(RwLock::new(RaftCluster::start(3).await.unwrap()));
    let history = Arc::new(parking_lot::Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let writer = {
        let (cluster, history, stop) = (cluster.clone(), history.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut next = 0u64;
            let mut next_tag = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let raft = {
                    let c = cluster.read().await;
                    match c.leader(Duration::from_millis(500)).await {
                        Ok(l) => c.node(l).raft().cloned(),
                        Err(_) => None,
                    }
                };
                let Some(raft) = raft else { continue };
                let deletable: Vec<u64> = {
                    let h = history.lock();
                    h.acked_upserts.difference(&h.acked_deletes).copied().collect()
                };
                if !deletable.is_empty() && rng.random_bool(0.2) {
                    let ids: Vec<u64> = (0..3).map(|_| deletable[rng.random_range(0..deletable.len())]).collect();
                    let tag = next_tag;
                    next_tag += 1;
                    let ok = matches!(tokio::time::timeout(Duration::from_secs(2), raft.client_write(tag_cmd(&ids, tag))).await, Ok(Ok(_)));
                    let mut h = history.lock();
                    for id in &ids {
                        let e = h.tags.entry(*id).or_default();
                        if ok {
                            *e = (Some(tag), BTreeSet::new());
                        } else {
                            e.1.insert(tag);
                        }
                    }
                } else if !deletable.is_empty() && rng.random_bool(0.2) {
                    let ids: Vec<u64> = (0..3).map(|_| deletable[rng.random_range(0..deletable.len())]).collect();
                    match tokio::time::timeout(Duration::from_secs(2), raft.client_write(delete_cmd(&ids))).await {
                        Ok(Ok(_)) => history.lock().acked_deletes.extend(ids),
                        _ => history.lock().maybe_deleted.extend(ids),
                    }
                } else {
                    let ids = next..next + 10;
                    next += 10;
                    history.lock().attempted.extend(ids.clone());
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), raft.client_write(upsert_cmd(ids.clone(), 1))).await {
                        history.lock().acked_upserts.extend(ids);
                    }
                }
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for step in 0..steps {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        let victim = rng.random_range(1..=3u64);
        let partition = rng.random_bool(0.5);
        {
            let mut c = cluster.write().await;
            if partition {
                let others: Vec<u64> = (1..=3).filter(|&n| n != victim).collect();
                c.partition(victim, &others);
            } else {
                c.stop(victim).await;
            }
        }
        eprintln!("  step {step}: {} node {victim}", if partition { "partition" } else { "stop" });
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        {
            let mut c = cluster.write().await;
            if partition {
                c.heal();
            } else {
                c.restart(victim).await.unwrap();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let c = cluster.read().await;
    let last = c.write(upsert_cmd(u64::MAX - 1..u64::MAX, 1), T).await.unwrap();
    c.applied_everywhere(last, T).await.unwrap();
    let digests = c.digests().unwrap();
    let first = digests.values().next().unwrap().clone();
    for (id, d) in &digests {
        assert_eq!(d, &first, "seed {seed}: replica {id} differs from replica 1");
    }
    {
        let h = history.lock();
        let mut present: BTreeMap<u64, String> = BTreeMap::new();
        for d in &first {
            let id: u64 = d.split("Num(").nth(1).and_then(|x| x.split(')').next()).and_then(|x| x.parse().ok()).expect("numeric id");
            present.insert(id, d.clone());
        }
        present.remove(&(u64::MAX - 1));
        for id in h.acked_upserts.iter().filter(|i| !h.acked_deletes.contains(i) && !h.maybe_deleted.contains(i)) {
            let d = present.get(id).unwrap_or_else(|| panic!("seed {seed}: acknowledged id {id} lost"));
            assert!(d.contains(&format!("[{}.0, 1.0, 1.0, 2.0]", *id as f32)), "seed {seed}: id {id} has the wrong vector: {d}");
        }
        // Payloads: the tag, and the upsert's keys kept beside it.
        let (points, _) = c.node(1).sm().expect("running").shard().export(&[]).unwrap();
        let mut tagged = 0;
        for p in &points {
            let Some(shoal_proto::v1::point_id::Kind::Num(id)) = p.id.as_ref().and_then(|i| i.kind.clone()) else { continue };
            if id == u64::MAX - 1 {
                continue;
            }
            let j = serde_json::Value::from(&p.payload.clone().unwrap_or_default());
            assert_eq!(j["id"], serde_json::json!(id), "seed {seed}: id {id} lost its upsert keys: {j}");
            assert_eq!(j["nested"]["x"], serde_json::json!(id % 7), "seed {seed}: id {id} lost its nested keys: {j}");
            assert_eq!(p.sparse.get("s"), Some(&shoal_tests::raft_cluster::sparse_of(id, 1)), "seed {seed}: id {id} lost its sparse vector");
            // Named vectors survive payload updates: the multi-vector as
            // written, the cosine one as its unit vector.
            let want = shoal_tests::raft_cluster::named_of(id, 1);
            assert_eq!(p.vectors.get("m"), want.get("m"), "seed {seed}: id {id} lost its multi-vector");
            let (d, w) = (&p.vectors.get("d").unwrap_or_else(|| panic!("seed {seed}: id {id} lost its named vector")).values, &want["d"].values);
            let n = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(d.iter().zip(w).all(|(a, b)| (*a as f64 - *b as f64 / n).abs() < 1e-6), "seed {seed}: id {id} has named vector {d:?}, wrote {w:?}");
            let (acked, maybe) = h.tags.get(&id).cloned().unwrap_or_default();
            let tag = j.get("tag").and_then(|t| t.as_u64());
            let allowed = tag == acked || tag.is_some_and(|t| maybe.contains(&t));
            assert!(allowed, "seed {seed}: id {id} has tag {tag:?}; last acknowledged {acked:?}, unacknowledged since {maybe:?}");
            tagged += usize::from(tag.is_some());
        }
        for id in &h.acked_deletes {
            assert!(!present.contains_key(id), "seed {seed}: acknowledged delete of {id} undone");
        }
        for id in present.keys() {
            assert!(h.attempted.contains(id), "seed {seed}: phantom id {id} was never written");
        }
        eprintln!(
            "  seed {seed}: {} acked upserts, {} acked deletes, {} attempted, {} present ({tagged} tagged), replicas identical",
            h.acked_upserts.len(),
            h.acked_deletes.len(),
            h.attempted.len(),
            present.len()
        );
    }
    drop(c);
    Arc::try_unwrap(cluster).ok().expect("sole owner").into_inner().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_faults_lose_no_acknowledged_write() {
    let steps = env("SHOAL_FAULT_STEPS", 6);
    let seeds: Vec<u64> = match std::env::var("SHOAL_FAULT_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => {
            let base: u64 = rand::rng().random();
            (0..env("SHOAL_FAULT_SEEDS", 2)).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        run_seed(seed, steps).await;
    }
}
