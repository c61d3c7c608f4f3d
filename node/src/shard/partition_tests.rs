//! Partition graphs (partition.rs): a filtered search through one finds
//! what the shard's graph finds, and writes the indexer has not caught up
//! with (deletes, replaces, new points, reused offsets) never make it
//! return a retired version or a wrong score.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal_proto::v1::*;

use super::*;
use crate::storage::memory::MemoryEngine;

const DIM: usize = 8;

fn config() -> CollectionConfig {
    validate::collection_config(&CollectionConfig {
        name: "c".into(),
        dimension: DIM as u32,
        metric: Metric::Cosine as i32,
        payload_indexes: vec![PayloadIndexSpec { key: "group".into(), r#type: PayloadIndexType::Keyword as i32, text: None }],
        ..Default::default()
    })
    .unwrap()
}

fn vector(r: &mut rand::rngs::StdRng) -> Vec<f32> {
    (0..DIM).map(|_| r.random_range(-1.0..1.0)).collect()
}

fn point(id: u64, v: Vec<f32>, group: u64) -> PointStruct {
    PointStruct { id: Some(id.into()), vector: v, payload: Some(Struct::try_from(&json!({"group": format!("g{group}")})).unwrap()), ..Default::default() }
}

fn in_group(g: u64) -> Filter {
    Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword(format!("g{g}"))) })) }], ..Default::default() }
}

fn num(p: &ScoredPoint) -> u64 {
    match p.id.as_ref().unwrap().kind {
        Some(point_id::Kind::Num(n)) => n,
        _ => panic!("uuid"),
    }
}

/// Cosine similarity, f64.
fn cos(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    d / (n(a) * n(b))
}

/// Every hit is in group 3 by the model, scored as the model's vector
/// says; recall@10 against the model's exact top-10 of group 3.
fn check(s: &Shard, model: &HashMap<u64, (Vec<f32>, u64)>, queries: &[Vec<f32>]) -> f64 {
    let mut recall = 0.0;
    for q in queries {
        let got = s.search(&SearchPointsRequest { vector: q.clone(), top_k: 10, filter: Some(in_group(3)), ..Default::default() }).unwrap();
        for p in &got {
            let (v, g) = model.get(&num(p)).unwrap_or_else(|| panic!("{} was deleted", num(p)));
            assert_eq!(*g, 3, "{} is not in the group", num(p));
            assert!((p.score as f64 - cos(q, v)).abs() < 1e-4, "{}: score {} for similarity {}", num(p), p.score, cos(q, v));
        }
        let mut want: Vec<(f64, u64)> = model.iter().filter(|(_, (_, g))| *g == 3).map(|(id, (v, _))| (cos(q, v), *id)).collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<u64> = want.iter().take(10).map(|x| x.1).collect();
        recall += got.iter().filter(|p| want.contains(&num(p))).count() as f64 / 10.0;
    }
    recall / queries.len() as f64
}

fn settle(s: &Shard) {
    let stop = AtomicBool::new(false);
    for _ in 0..100 {
        if !s.maintain_partitions(&stop).unwrap() {
            return;
        }
    }
    panic!("partition upkeep does not settle");
}

#[test]
fn partition_search_is_right_before_and_after_upkeep() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Shard::open(config(), 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), dir.path()).unwrap();
    // Walk rather than scan at this size, so that searches want partitions.
    s.exact_scan_threshold = Some(0);
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    let mut model: HashMap<u64, (Vec<f32>, u64)> = HashMap::new();
    for chunk in (0..12_000u64).collect::<Vec<_>>().chunks(1000) {
        let pts: Vec<PointStruct> = chunk.iter().map(|i| point(*i, vector(&mut r), i % 10)).collect();
        for p in &pts {
            model.insert(num_of(p), (p.vector.clone(), num_of(p) % 10));
        }
        s.write(&pts, &[], None).unwrap();
    }
    let queries: Vec<Vec<f32>> = (0..40).map(|_| vector(&mut r)).collect();
    assert!(check(&s, &model, &queries) >= 0.9);
    assert_eq!(s.partition_stats(), (0, 0), "searches only ask; the indexer builds");
    settle(&s);
    assert_eq!(s.partition_stats(), (1, 1200), "one graph for g3");
    assert!(check(&s, &model, &queries) >= 0.9, "through the partition");

    // Writes the partition has not seen: deletes, replaces (new versions),
    // new points (one at each query, so they must be found), group moves.
    let deleted: Vec<PointId> = (0..12_000u64).filter(|i| i % 10 == 3 && i % 7 == 0).map(PointId::from).collect();
    s.write(&[], &deleted, None).unwrap();
    for id in (0..12_000u64).filter(|i| i % 10 == 3 && i % 7 == 0) {
        model.remove(&id);
    }
    s.save_index().unwrap();
    let mut fresh = vec![];
    for (j, q) in queries.iter().enumerate() {
        fresh.push(point(20_000 + j as u64, q.clone(), 3));
    }
    for id in (0..12_000u64).filter(|i| i % 10 == 3 && i % 7 == 1).take(50) {
        fresh.push(point(id, vector(&mut r), 3));
    }
    for id in (0..12_000u64).filter(|i| i % 10 == 5).take(20) {
        fresh.push(point(id, vector(&mut r), 3));
    }
    for id in (0..12_000u64).filter(|i| i % 10 == 3 && i % 7 == 2).take(20) {
        fresh.push(point(id, vector(&mut r), 4));
    }
    s.write(&fresh, &[], None).unwrap();
    for p in &fresh {
        let g = match p.payload.as_ref().unwrap().fields["group"].kind.as_ref() {
            Some(value::Kind::StringValue(x)) => x[1..].parse().unwrap(),
            _ => unreachable!(),
        };
        model.insert(num_of(p), (p.vector.clone(), g));
    }
    assert_eq!(s.partition_stats().0, 1);
    let before = check(&s, &model, &queries);
    assert!(before >= 0.9, "stale partition: recall {before}");
    for (j, q) in queries.iter().enumerate() {
        let got = s.search(&SearchPointsRequest { vector: q.clone(), top_k: 1, filter: Some(in_group(3)), ..Default::default() }).unwrap();
        assert_eq!(num(&got[0]), 20_000 + j as u64, "a point the partition lacks is still found");
    }
    settle(&s);
    let g3 = model.values().filter(|(_, g)| *g == 3).count() as u64;
    assert_eq!(s.partition_stats(), (1, g3), "caught up");
    assert!(check(&s, &model, &queries) >= 0.9);
}

fn num_of(p: &PointStruct) -> u64 {
    match p.id.as_ref().unwrap().kind {
        Some(point_id::Kind::Num(n)) => n,
        _ => unreachable!(),
    }
}

/// Quantized shards keep no partitions; a storage kind that stops serving
/// them drops the ones built.
#[test]
fn partitions_follow_the_storage_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Shard::open(CollectionConfig { storage: VectorStorage::Int8 as i32, ..config() }, 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), dir.path()).unwrap();
    s.exact_scan_threshold = Some(0);
    let mut r = rand::rngs::StdRng::seed_from_u64(8);
    let pts: Vec<PointStruct> = (0..4000u64).map(|i| point(i, vector(&mut r), i % 3)).collect();
    s.write(&pts, &[], None).unwrap();
    let q = vector(&mut r);
    let got = s.search(&SearchPointsRequest { vector: q, top_k: 10, filter: Some(in_group(1)), ..Default::default() }).unwrap();
    assert_eq!(got.len(), 10);
    assert!(!s.maintain_partitions(&AtomicBool::new(false)).unwrap());
    assert_eq!(s.partition_stats(), (0, 0));
}

/// Writers (replaces, deletes, group moves), the upkeep loop and searches
/// at once: every hit passes the filter by the payload returned with it,
/// and nothing panics or deadlocks; with partitions and without. (Without
/// them it failed too before searches dropped hits whose point changed
/// after the search matched it: the payload returned was the new one.)
#[test]
fn partitions_under_concurrent_writes_never_break_the_filter() {
    concurrent(true);
    concurrent(false);
}

fn concurrent(partitions: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Shard::open(config(), 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), dir.path()).unwrap();
    s.exact_scan_threshold = Some(0);
    let mut r = rand::rngs::StdRng::seed_from_u64(9);
    s.use_partitions = partitions;
    let pts: Vec<PointStruct> = (0..6000u64).map(|i| point(i, vector(&mut r), i % 4)).collect();
    s.write(&pts, &[], None).unwrap();
    let s = Arc::new(s);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![];
    {
        let (s, stop) = (s.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut r = rand::rngs::StdRng::seed_from_u64(10);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<u64> = (0..50).map(|_| r.random_range(0..6000u64)).collect();
                let pts: Vec<PointStruct> = ids.iter().map(|i| point(*i, vector(&mut r), r.random_range(0..4))).collect();
                s.write(&pts, &[], None).unwrap();
                let del: Vec<PointId> = (0..10).map(|_| PointId::from(r.random_range(0..6000u64))).collect();
                s.write(&[], &del, None).unwrap();
                n += 1;
                if n % 10 == 0 {
                    s.save_index().unwrap();
                }
            }
            0u64
        }));
    }
    {
        let (s, stop) = (s.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.maintain_partitions(&stop).unwrap();
            }
            0u64
        }));
    }
    for t in 0..2u64 {
        let (s, stop) = (s.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut r = rand::rngs::StdRng::seed_from_u64(20 + t);
            let mut searches = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = s.search(&SearchPointsRequest { vector: vector(&mut r), top_k: 10, filter: Some(in_group(3)), with_payload: true, ..Default::default() }).unwrap();
                for p in &got {
                    let g = p.payload.as_ref().and_then(|x| x.fields.get("group")).and_then(|v| v.kind.clone());
                    assert_eq!(g, Some(value::Kind::StringValue("g3".into())), "{} passed the filter with {g:?}", num(p));
                }
                searches += 1;
            }
            searches
        }));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t.join().unwrap_or_else(|_| panic!("a thread panicked"));
    }
    assert!(total > 0);
    let (parts, _) = s.partition_stats();
    assert!(parts <= partitions as usize, "only g3 was asked for");
}
