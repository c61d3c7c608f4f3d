//! Named dense vectors and multi-vectors on one shard: searches and MaxSim
//! scores against an f64 brute force, replaces and deletes, a reopen
//! (graphs rebuilt from storage), live add and drop, and bad input.
use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use shoal_proto::internal::v1::ShardScoreRequest;
use shoal_proto::v1::*;

use super::*;
use crate::storage::rocks::RocksEngine;

fn config() -> CollectionConfig {
    validate::collection_config(&CollectionConfig {
        name: "c".into(),
        dimension: 2,
        metric: Metric::Dot as i32,
        payload_indexes: vec![PayloadIndexSpec { key: "g".into(), r#type: PayloadIndexType::Keyword as i32, text: None }],
        vectors: vec![
            NamedVectorConfig { name: "t".into(), dimension: 4, metric: Metric::L2 as i32, ..Default::default() },
            NamedVectorConfig { name: "c".into(), dimension: 3, metric: Metric::Cosine as i32, ..Default::default() },
            NamedVectorConfig { name: "m".into(), dimension: 2, metric: Metric::Dot as i32, multivector: true, ..Default::default() },
        ],
        ..Default::default()
    })
    .unwrap()
}

struct Data {
    t: BTreeMap<u64, Vec<f32>>,
    m: BTreeMap<u64, Vec<Vec<f32>>>,
}

/// Points 0..n at `version`: `t` on all but every fifth, `c` on all, `m`
/// (1 to 3 rows) on even ones; payload `g` = a or b.
fn write(s: &Shard, n: u64, version: u64) -> Data {
    let mut r = rand::rngs::StdRng::seed_from_u64(version);
    let mut v = |d: usize| -> Vec<f32> { (0..d).map(|_| r.random_range(-1.0..1.0f32)).collect() };
    let (mut t, mut m) = (BTreeMap::new(), BTreeMap::new());
    let points: Vec<PointStruct> = (0..n)
        .map(|i| {
            let mut vectors = BTreeMap::new();
            if i % 5 != 0 {
                let x = v(4);
                t.insert(i, x.clone());
                vectors.insert("t".to_string(), NamedVector { values: x, rows: vec![] });
            }
            vectors.insert("c".to_string(), NamedVector { values: v(3), rows: vec![] });
            if i % 2 == 0 {
                let rows: Vec<Vec<f32>> = (0..1 + i % 3).map(|_| v(2)).collect();
                m.insert(i, rows.clone());
                vectors.insert("m".to_string(), NamedVector { values: vec![], rows: rows.into_iter().map(|values| DenseVector { values }).collect() });
            }
            let g = if i % 3 == 0 { "a" } else { "b" };
            PointStruct { id: Some(i.into()), vector: v(2), payload: Some(Struct::try_from(&serde_json::json!({"g": g})).unwrap()), sparse: Default::default(), vectors }
        })
        .collect();
    s.write(&points, &[], None).unwrap();
    Data { t, m }
}

fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt()
}

fn key(p: &Option<PointId>) -> u64 {
    match p.as_ref().and_then(|i| i.kind.clone()) {
        Some(point_id::Kind::Num(n)) => n,
        _ => panic!("numeric ids only"),
    }
}

/// The exact top-k of `t` by L2 among `ok` ids, ties by id.
fn brute_t(d: &Data, q: &[f32], k: usize, ok: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut all: Vec<(u64, f64)> = d.t.iter().filter(|(i, _)| ok(**i)).map(|(i, v)| (*i, l2(q, v))).collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|(i, _)| i).collect()
}

fn maxsim_ref(q: &[Vec<f32>], rows: &[Vec<f32>]) -> f64 {
    q.iter().map(|a| rows.iter().map(|r| a.iter().zip(r).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>()).fold(f64::NEG_INFINITY, f64::max)).sum()
}

fn check(s: &Shard, d: &Data, what: &str) {
    let mut r = rand::rngs::StdRng::seed_from_u64(42);
    let g_a = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "g".into(), value: Some(match_condition::Value::Keyword("a".into())) })) }], ..Default::default() };
    for _ in 0..20 {
        let q: Vec<f32> = (0..4).map(|_| r.random_range(-1.0..1.0f32)).collect();
        let req = SearchPointsRequest { vector: q.clone(), top_k: 10, vector_name: "t".into(), exact: true, ..Default::default() };
        let got = s.search(&req).unwrap();
        assert_eq!(got.iter().map(|p| key(&p.id)).collect::<Vec<_>>(), brute_t(d, &q, 10, |_| true), "{what}: exact named search");
        for p in &got {
            let want = l2(&q, &d.t[&key(&p.id)]);
            assert!((p.score as f64 - want).abs() <= 1e-5 * (1.0 + want), "{what}: score {} vs f64 {want}", p.score);
        }
        // The graph (ef 200 over a few hundred points) finds the exact top-10.
        let approx = s.search(&SearchPointsRequest { exact: false, ef: Some(200), ..req.clone() }).unwrap();
        let truth = brute_t(d, &q, 10, |_| true);
        let hits = approx.iter().filter(|p| truth.contains(&key(&p.id))).count();
        assert!(hits >= 9, "{what}: graph recall {hits}/10");
        let filtered = s.search(&SearchPointsRequest { filter: Some(g_a.clone()), ..req.clone() }).unwrap();
        assert_eq!(filtered.iter().map(|p| key(&p.id)).collect::<Vec<_>>(), brute_t(d, &q, 10, |i| i % 3 == 0), "{what}: filtered named search");
        // MaxSim over every holder, against an f64 reference.
        let rows: Vec<Vec<f32>> = (0..3).map(|_| (0..2).map(|_| r.random_range(-1.0..1.0f32)).collect()).collect();
        let sreq = ShardScoreRequest { vectors: rows.iter().map(|v| DenseVector { values: v.clone() }).collect(), using: "m".into(), maxsim: true, max_points: 100_000, ..Default::default() };
        let scored = s.score(&sreq, false).unwrap();
        assert_eq!(scored.len(), d.m.len(), "{what}: every point with the multi-vector is scored, no other");
        for row in scored {
            let want = maxsim_ref(&rows, &d.m[&key(&row.id)]);
            assert!((row.scores[0] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what}: MaxSim {} vs f64 {want}", row.scores[0]);
        }
    }
}

#[test]
fn named_vectors_search_score_replace_reopen_and_change() {
    let d = tempfile::tempdir().unwrap();
    let kv: Arc<dyn crate::storage::KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
    let open = |cfg: CollectionConfig| Shard::open(cfg, 0, ShardStore::new(kv.clone(), "c", 0), &d.path().join("index")).unwrap().0;
    let s = open(config());
    write(&s, 300, 1);
    // Replaced: the graphs hold the new versions only.
    let data = write(&s, 300, 2);
    check(&s, &data, "after a replace");
    // Deleted points leave the graphs and the MaxSim scans.
    s.write(&[], &(0..50u64).map(Into::into).collect::<Vec<_>>(), None).unwrap();
    let data = Data { t: data.t.into_iter().filter(|(i, _)| *i >= 50).collect(), m: data.m.into_iter().filter(|(i, _)| *i >= 50).collect() };
    check(&s, &data, "after deletes");
    // A cosine named vector is stored as its unit vector.
    let got = s.get(&[51u64.into()], false, true).unwrap();
    let c = &got[0].vectors["c"].values;
    assert!((c.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() - 1.0).abs() < 1e-5, "unit vector stored: {c:?}");
    drop(s);
    // Reopened: the graphs are rebuilt from the stored points.
    let s = open(config());
    check(&s, &data, "after a reopen");

    // Drop `t`: its values leave every point; searching it is refused.
    let mut schema = s.schema();
    schema.vectors.retain(|v| v.name != "t");
    assert!(s.set_schema(&schema, vec![]).unwrap());
    assert!(!s.set_schema(&schema, vec![]).unwrap(), "the same schema changes nothing");
    let q = SearchPointsRequest { vector: vec![0.0; 4], top_k: 5, vector_name: "t".into(), ..Default::default() };
    assert!(matches!(s.search(&q), Err(NodeError::Invalid(_))), "a dropped vector cannot be searched");
    assert!(!s.get(&[51u64.into()], false, true).unwrap()[0].vectors.contains_key("t"), "values stripped");
    // Added again: empty until points carry it; the record survives a reopen.
    schema.vectors.push(NamedVectorConfig { name: "t".into(), dimension: 4, metric: Metric::L2 as i32, hnsw: Some(HnswConfig { m: 16, ef_construction: 128, ef_search: 128 }), ..Default::default() });
    assert!(s.set_schema(&schema, vec![]).unwrap());
    assert!(s.search(&q).unwrap().is_empty(), "a new vector starts empty");
    drop(s);
    let s = open(config());
    assert_eq!(s.schema(), schema, "the shard opens with its recorded schema, not the config's");
    assert!(s.search(&q).unwrap().is_empty());
    let data = write(&s, 300, 3);
    check(&s, &data, "after re-adding");
}

#[test]
fn bad_named_vectors_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Shard::open(config(), 0, ShardStore::new(Arc::new(crate::storage::memory::MemoryEngine::new()), "c", 0), d.path()).unwrap().0;
    let p = |name: &str, v: NamedVector| PointStruct { id: Some(1u64.into()), vector: vec![1.0, 0.0], payload: None, sparse: Default::default(), vectors: [(name.to_string(), v)].into() };
    let dense = |n: usize| NamedVector { values: vec![0.5; n], rows: vec![] };
    let multi = |rows: usize| NamedVector { values: vec![], rows: (0..rows).map(|_| DenseVector { values: vec![1.0, 2.0] }).collect() };
    for (bad, field) in [
        (p("nope", dense(4)), "vectors"),
        (p("t", dense(3)), "values"),
        (p("t", NamedVector { values: vec![f32::NAN, 0.0, 0.0, 0.0], rows: vec![] }), "values"),
        (p("c", dense(0)), "values"),
        (p("c", NamedVector { values: vec![0.0; 3], rows: vec![] }), "values"),
        (p("m", dense(2)), "values"),
        (p("m", multi(0)), "rows"),
        (p("m", multi(257)), "rows"),
        (p("t", multi(1)), "rows"),
    ] {
        match s.write(std::slice::from_ref(&bad), &[], None) {
            Err(NodeError::Invalid(e)) => assert!(e.field.contains(field), "{bad:?}: field {} (want {field}): {}", e.field, e.message),
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    assert!(s.is_empty());
    // Searching a multi-vector with a graph search, or MaxSim on a dense one.
    let q = SearchPointsRequest { vector: vec![0.0; 2], top_k: 5, vector_name: "m".into(), ..Default::default() };
    assert!(matches!(s.search(&q), Err(NodeError::Invalid(_))));
    let sreq = ShardScoreRequest { vectors: vec![DenseVector { values: vec![0.0; 4] }], using: "t".into(), maxsim: true, max_points: 10, ..Default::default() };
    assert!(matches!(s.score(&sreq, false), Err(NodeError::Invalid(_))));
    let sreq = ShardScoreRequest { vectors: vec![], using: "m".into(), maxsim: true, max_points: 10, ..Default::default() };
    assert!(matches!(s.score(&sreq, false), Err(NodeError::Invalid(_))));
}

/// A control entry's schema replaces the shard's only if newer; an
/// unversioned one (from a node older than named vectors) changes the
/// payload indexes only, never the named vectors.
#[test]
fn schema_versions_never_go_back() {
    let cfg = config();
    let at = |version, vectors: Vec<NamedVectorConfig>| Schema { specs: cfg.payload_indexes.clone(), vectors, version };
    let cur = at(5, cfg.vectors.clone());
    let newer = at(7, cfg.vectors[..1].to_vec());
    assert_eq!(newer.successor_of(&cur), Some(newer.clone()));
    assert_eq!(at(5, vec![]).successor_of(&cur), None, "the same version");
    assert_eq!(at(3, vec![]).successor_of(&cur), None, "an older one, e.g. from a leader whose map lags");
    let legacy = Schema { specs: vec![], vectors: vec![], version: 0 };
    assert_eq!(legacy.successor_of(&cur), Some(Schema { specs: vec![], ..cur.clone() }), "specs only; the vectors stay");
    assert_eq!(Schema { specs: cur.specs.clone(), vectors: vec![], version: 0 }.successor_of(&cur), None);
    // Records written as a CollectionConfig decode as version 0.
    let old = CollectionConfig { payload_indexes: cfg.payload_indexes.clone(), ..Default::default() };
    assert_eq!(Schema::decode(&prost::Message::encode_to_vec(&old)).unwrap(), Schema { specs: cfg.payload_indexes.clone(), vectors: vec![], version: 0 });
    assert_eq!(Schema::decode(&cur.encode()).unwrap(), cur);
}

/// Named graphs full of removed nodes (replaced points) are rebuilt
/// without them and answer as before.
#[test]
fn named_graphs_compact() {
    let d = tempfile::tempdir().unwrap();
    let s = Shard::open(config(), 0, ShardStore::new(Arc::new(crate::storage::memory::MemoryEngine::new()), "c", 0), d.path()).unwrap().0;
    let mut data = write(&s, 300, 1);
    assert!(!s.named_need_compaction());
    for v in 2..8 {
        data = write(&s, 300, v);
    }
    assert!(s.named_need_compaction(), "six replaces of 300 points leave 1,800 removed nodes");
    let stopped = std::sync::atomic::AtomicBool::new(true);
    assert_eq!(s.compact_named(&stopped).unwrap(), 0, "a node shutting down gives up");
    assert!(s.named_need_compaction());
    assert_eq!(s.compact_named(&Default::default()).unwrap(), 2, "`t` and `c` (the multi-vector has no graph)");
    assert!(!s.named_need_compaction());
    check(&s, &data, "after compacting the named graphs");
    // Writes after the swap go to the new graphs.
    let data = write(&s, 300, 9);
    check(&s, &data, "after a write to the compacted graphs");
}
