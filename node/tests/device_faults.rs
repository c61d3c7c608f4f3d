//! A device fault never fails a request. The node's device here is the
//! host reference device (scan/host.rs) failing one call in three, by
//! error, out-of-memory or panic: every exact and filtered search a shard
//! answers still returns the true nearest points, and both the device and
//! the CPU fallback answered some. Its own test binary, because the
//! device is process-wide.
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal_node::scan::device::{install, offload, Offload};
use shoal_node::scan::host::{Fault, FaultPlan, HostAccel};
use shoal_node::shard::Shard;
use shoal_node::storage::memory::MemoryEngine;
use shoal_node::storage::ShardStore;
use shoal_proto::v1::*;
use shoal_proto::validate;

const DIM: usize = 16;

fn id(p: &ScoredPoint) -> u64 {
    match p.id.as_ref().and_then(|i| i.kind.clone()) {
        Some(point_id::Kind::Num(n)) => n,
        other => panic!("numeric ids only: {other:?}"),
    }
}

#[test]
fn device_faults_never_fail_a_search() {
    let plan: FaultPlan = Arc::new(|n| match n % 9 {
        2 => Some(Fault::Error),
        5 => Some(Fault::OutOfMemory),
        8 => Some(Fault::Panic),
        _ => None,
    });
    // Every scan goes to the device (no smallest size); a short cool-down
    // so the device keeps being tried.
    assert!(install(Offload::with(Box::new(HostAccel::with_faults(plan)), Duration::from_millis(2), 0)));
    let config = validate::collection_config(&CollectionConfig {
        name: "c".into(),
        dimension: DIM as u32,
        metric: Metric::L2 as i32,
        payload_indexes: vec![PayloadIndexSpec { key: "group".into(), r#type: PayloadIndexType::Keyword as i32, text: None }],
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (shard, _) = Shard::open(config, 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), dir.path()).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    let vs: Vec<Vec<f32>> = (0..3_000).map(|_| (0..DIM).map(|_| r.random_range(-1.0f32..1.0)).collect()).collect();
    let points: Vec<PointStruct> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| PointStruct { id: Some((i as u64).into()), vector: v.clone(), payload: Some(Struct::try_from(&json!({"group": format!("g{}", i % 4), "i": i})).unwrap()), ..Default::default() })
        .collect();
    shard.write(&points, &[], None).unwrap();
    let g1 = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g1".into())) })) }], ..Default::default() };
    // The true top 10 in f64, among the points a filter group admits.
    let truth = |q: &[f32], group: Option<usize>| -> Vec<u64> {
        let mut d: Vec<(f64, u64)> = vs.iter().enumerate().filter(|(i, _)| group.is_none_or(|g| i % 4 == g)).map(|(i, v)| (v.iter().zip(q).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>(), i as u64)).collect();
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        d.into_iter().take(10).map(|(_, i)| i).collect()
    };
    for round in 0..40 {
        let q: Vec<f32> = (0..DIM).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let exact = SearchPointsRequest { vector: q.clone(), top_k: 10, exact: true, ..Default::default() };
        let got: Vec<u64> = shard.search(&exact).unwrap_or_else(|e| panic!("round {round}: a device fault failed an exact search: {e}")).iter().map(id).collect();
        assert_eq!(got, truth(&q, None), "round {round}: exact");
        let filtered = SearchPointsRequest { filter: Some(g1.clone()), ..exact.clone() };
        let got: Vec<u64> = shard.search(&filtered).unwrap_or_else(|e| panic!("round {round}: a device fault failed a filtered search: {e}")).iter().map(id).collect();
        assert_eq!(got, truth(&q, Some(1)), "round {round}: filtered exact");
    }
    let st = offload().unwrap().status();
    assert!(st.scans > 0, "the device answered some scans: {st:?}");
    assert!(st.fallbacks > 0, "and the CPU the ones it failed: {st:?}");
    assert!(st.mirrors >= 1, "the shard graph was mirrored: {st:?}");
}
