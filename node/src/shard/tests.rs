//! Shard behaviour over both storage engines: replace and delete semantics,
//! filtered and exact search against the flat oracle, scroll, and index
//! persistence with reconciliation and rebuild.
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal_proto::v1::*;

use super::*;
use crate::index::flat::FlatIndex;
use crate::index::Allowed;
use crate::storage::{memory::MemoryEngine, rocks::RocksEngine, KvEngine};

fn config(dim: u32, metric: Metric) -> CollectionConfig {
    validate::collection_config(&CollectionConfig {
        name: "c".into(),
        dimension: dim,
        metric: metric as i32,
        payload_indexes: vec![PayloadIndexSpec { key: "group".into(), r#type: PayloadIndexType::Keyword as i32, text: None }],
        ..Default::default()
    })
    .unwrap()
}

fn vecs(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..dim).map(|_| r.random_range(-1.0..1.0)).collect()).collect()
}

fn points(vs: &[Vec<f32>], from: u64) -> Vec<PointStruct> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| PointStruct {
            id: Some((from + i as u64).into()),
            vector: v.clone(),
            payload: Some(Struct::try_from(&json!({"group": format!("g{}", (from + i as u64) % 10), "i": from + i as u64})).unwrap()), sparse: Default::default(), vectors: Default::default()
        })
        .collect()
}

fn search(q: &[f32], k: u32) -> SearchPointsRequest {
    SearchPointsRequest { vector: q.to_vec(), top_k: k, ..Default::default() }
}

fn ids(r: &[ScoredPoint]) -> Vec<u64> {
    r.iter()
        .map(|p| match p.id.as_ref().unwrap().kind {
            Some(point_id::Kind::Num(n)) => n,
            _ => panic!("uuid"),
        })
        .collect()
}

fn engines() -> Vec<(Arc<dyn KvEngine>, tempfile::TempDir)> {
    let d = tempfile::tempdir().unwrap();
    let rocks: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
    vec![(Arc::new(MemoryEngine::new()), tempfile::tempdir().unwrap()), (rocks, d)]
}

#[test]
fn upsert_replace_delete_count() {
    for (engine, dir) in engines() {
        let (s, _) = Shard::open(config(4, Metric::L2), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
        let vs = vecs(100, 4, 1);
        assert_eq!(s.write(&points(&vs, 0), &[], None).unwrap(), 100);
        assert_eq!(s.count(None).unwrap(), 100);
        assert_eq!(ids(&s.search(&search(&vs[7], 1)).unwrap()), vec![7]);
        // Replace point 7 with a far-away vector: its old position is empty at once.
        let far = vec![50.0, 50.0, 50.0, 50.0];
        s.write(&[PointStruct { id: Some(7u64.into()), vector: far.clone(), payload: None, sparse: Default::default(), vectors: Default::default() }], &[], None).unwrap();
        assert_eq!(s.count(None).unwrap(), 100);
        assert!(!ids(&s.search(&search(&vs[7], 3)).unwrap()).contains(&7));
        assert_eq!(ids(&s.search(&search(&far, 1)).unwrap()), vec![7]);
        let got = s.get(&[7u64.into(), 1000u64.into()], true, true).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].vector, far);
        assert_eq!(got[0].payload, Some(Struct::default()), "replace drops the old payload");
        // Delete by id and by filter.
        assert_eq!(s.write(&[], &[3u64.into(), 999u64.into()], None).unwrap(), 1);
        assert!(!ids(&s.search(&search(&vs[3], 3)).unwrap()).contains(&3));
        let g5 = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g5".into())) })) }], ..Default::default() };
        assert_eq!(s.count(Some(&g5)).unwrap(), 10);
        assert_eq!(s.write(&[], &[], Some(&g5)).unwrap(), 10);
        assert_eq!(s.count(Some(&g5)).unwrap(), 0);
        assert_eq!(s.count(None).unwrap(), 89);
        // Duplicate ids in one batch: the last one wins.
        let a = PointStruct { id: Some(500u64.into()), vector: vec![1.0; 4], payload: None, sparse: Default::default(), vectors: Default::default() };
        let b = PointStruct { id: Some(500u64.into()), vector: vec![2.0; 4], payload: None, sparse: Default::default(), vectors: Default::default() };
        assert_eq!(s.write(&[a, b], &[], None).unwrap(), 1);
        assert_eq!(s.get(&[500u64.into()], false, true).unwrap()[0].vector, vec![2.0; 4]);
    }
}

fn payload_update(sel: update_payload_request::Selector, op: update_payload_request::Op) -> UpdatePayloadRequest {
    UpdatePayloadRequest { collection: String::new(), selector: Some(sel), op: Some(op) }
}

fn payload_json(s: &Shard, id: u64) -> serde_json::Value {
    serde_json::Value::from(&s.get(&[id.into()], true, false).unwrap()[0].payload.clone().unwrap())
}

#[test]
fn payload_updates_keep_vectors_and_move_index_entries() {
    use update_payload_request::{Op, Selector};
    let keyword = |k: &str, v: &str| Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: k.into(), value: Some(match_condition::Value::Keyword(v.into())) })) }], ..Default::default() };
    let st = |j: serde_json::Value| Struct::try_from(&j).unwrap();
    for (engine, dir) in engines() {
        let (s, _) = Shard::open(config(4, Metric::Cosine), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
        let vs = vecs(50, 4, 3);
        s.write(&points(&vs, 0), &[], None).unwrap();
        let before = s.get(&[7u64.into()], false, true).unwrap()[0].vector.clone();
        let apply = |u: UpdatePayloadRequest| s.write_request(WriteOps { payload_update: Some(&u), ..Default::default() }, vec![], None, Durability::Sync);
        // Set by ids: merged, indexed under the new value, vector untouched
        // (bit for bit: no second normalisation).
        let n = apply(payload_update(Selector::Ids(PointIdList { ids: vec![7u64.into(), 8u64.into(), 1000u64.into(), 7u64.into()] }), Op::Set(st(json!({"group": "moved", "extra": [1, 2]}))))).unwrap();
        assert_eq!(n, 2, "absent ids are skipped and duplicates counted once");
        assert_eq!(payload_json(&s, 7), json!({"group": "moved", "i": 7, "extra": [1, 2]}));
        assert_eq!(s.get(&[7u64.into()], false, true).unwrap()[0].vector, before);
        assert_eq!(s.count(Some(&keyword("group", "moved"))).unwrap(), 2);
        assert_eq!(s.count(Some(&keyword("group", "g7"))).unwrap(), 4, "the old index entry is gone");
        assert_eq!(ids(&s.search(&search(&vs[7], 1)).unwrap()), vec![7], "the new version is searchable");
        // Delete keys by filter.
        let n = apply(payload_update(Selector::Filter(keyword("group", "moved")), Op::DeleteKeys(PayloadKeys { keys: vec!["extra".into(), "nope".into()] }))).unwrap();
        assert_eq!(n, 2);
        assert_eq!(payload_json(&s, 8), json!({"group": "moved", "i": 8}));
        // Overwrite by filter, then clear all.
        assert_eq!(apply(payload_update(Selector::Filter(keyword("group", "g3")), Op::Overwrite(st(json!({"only": true}))))).unwrap(), 5);
        assert_eq!(payload_json(&s, 13), json!({"only": true}));
        assert_eq!(s.count(Some(&keyword("group", "g3"))).unwrap(), 0);
        assert_eq!(apply(payload_update(Selector::All(true), Op::Clear(true))).unwrap(), 50);
        assert_eq!(payload_json(&s, 13), json!({}));
        assert_eq!(s.count(None).unwrap(), 50);
        assert_eq!(s.count(Some(&keyword("group", "moved"))).unwrap(), 0);
        // A merge that breaks the payload limits refuses the whole update.
        let big = "x".repeat(shoal_proto::limits::MAX_PAYLOAD_BYTES / 2 + 16);
        apply(payload_update(Selector::Ids(PointIdList { ids: vec![1u64.into()] }), Op::Set(st(json!({"a": big.clone()}))))).unwrap();
        let err = apply(payload_update(Selector::Ids(PointIdList { ids: vec![2u64.into(), 1u64.into()] }), Op::Set(st(json!({"b": big}))))).unwrap_err();
        assert!(matches!(err, NodeError::Invalid(_)), "{err}");
        assert_eq!(payload_json(&s, 2), json!({}), "nothing of a refused update is applied");
        // Bad updates are refused before anything is read.
        assert!(apply(payload_update(Selector::All(false), Op::Clear(true))).is_err());
        assert!(apply(payload_update(Selector::Filter(Filter::default()), Op::Clear(true))).is_err());
        assert!(apply(UpdatePayloadRequest { selector: Some(Selector::All(true)), ..Default::default() }).is_err());
    }
}

#[test]
fn payload_indexes_change_live_and_at_reopen() {
    let keyword = |k: &str, v: &str| Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: k.into(), value: Some(match_condition::Value::Keyword(v.into())) })) }], ..Default::default() };
    let below = |k: &str, x: f64| Filter { must: vec![Condition { kind: Some(condition::Kind::Range(RangeCondition { key: k.into(), lt: Some(x), ..Default::default() })) }], ..Default::default() };
    let numeric_i = PayloadIndexSpec { key: "i".into(), r#type: PayloadIndexType::Numeric as i32, text: None };
    let fields = |s: &Shard| {
        let mut f = std::collections::BTreeSet::new();
        s.store.scan_index(&mut |e| {
            f.insert(e.field.clone());
        })
        .unwrap();
        f
    };
    let d = tempfile::tempdir().unwrap();
    let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
    let (s, _) = Shard::open(config(4, Metric::L2), 0, ShardStore::new(engine.clone(), "c", 0), d.path()).unwrap();
    s.write(&points(&vecs(200, 4, 5), 0), &[], None).unwrap();
    let (g3, lt50) = (s.count(Some(&keyword("group", "g3"))).unwrap(), s.count(Some(&below("i", 50.0))).unwrap());
    assert_eq!((g3, lt50), (20, 50));
    assert_eq!(fields(&s), ["group".to_string()].into());
    // Drop "group", add "i": the stored entries follow, results do not change.
    assert!(s.set_payload_indexes(std::slice::from_ref(&numeric_i), vec![]).unwrap());
    assert!(!s.set_payload_indexes(std::slice::from_ref(&numeric_i), vec![]).unwrap(), "the same specs change nothing");
    assert_eq!(fields(&s), ["i".to_string()].into());
    assert_eq!(s.count(Some(&keyword("group", "g3"))).unwrap(), 20, "an unindexed field is scanned");
    assert_eq!(s.count(Some(&below("i", 50.0))).unwrap(), 50);
    // Writes after the change keep the new index.
    s.write(&points(&vecs(10, 4, 6), 1000), &[], None).unwrap();
    assert_eq!(s.count(Some(&below("i", 50.0))).unwrap(), 50);
    assert_eq!(s.count(Some(&below("i", 1005.0))).unwrap(), 205);
    drop(s);
    // Reopened with the config it was created with: it keeps the specs its
    // entries were recorded for (only its log changes them).
    let (s, _) = Shard::open(config(4, Metric::L2), 0, ShardStore::new(engine.clone(), "c", 0), d.path()).unwrap();
    assert_eq!(fields(&s), ["i".to_string()].into());
    assert_eq!(s.payload_index_specs(), vec![numeric_i]);
    assert_eq!(s.count(Some(&keyword("group", "g3"))).unwrap(), 21);
    assert_eq!(s.count(Some(&below("i", 1005.0))).unwrap(), 205);
}

#[test]
fn bad_points_reject_the_whole_batch() {
    let (engine, dir) = engines().pop().unwrap();
    let (s, _) = Shard::open(config(3, Metric::Cosine), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
    let good = PointStruct { id: Some(1u64.into()), vector: vec![1.0, 0.0, 0.0], payload: None, sparse: Default::default(), vectors: Default::default() };
    for (bad, field) in [
        (PointStruct { id: Some(2u64.into()), vector: vec![1.0, 0.0], payload: None, sparse: Default::default(), vectors: Default::default() }, "points[1].vector"),
        (PointStruct { id: Some(2u64.into()), vector: vec![1.0, f32::NAN, 0.0], payload: None, sparse: Default::default(), vectors: Default::default() }, "points[1].vector"),
        (PointStruct { id: Some(2u64.into()), vector: vec![0.0; 3], payload: None, sparse: Default::default(), vectors: Default::default() }, "points[1].vector"),
        (PointStruct { id: None, vector: vec![1.0, 0.0, 0.0], payload: None, sparse: Default::default(), vectors: Default::default() }, "points[1].id"),
    ] {
        match s.write(&[good.clone(), bad], &[], None) {
            Err(NodeError::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("expected invalid, got {other:?}"),
        }
    }
    assert_eq!(s.count(None).unwrap(), 0, "nothing of a rejected batch is written");
}

#[test]
fn filtered_and_exact_search_match_the_oracle() {
    let dim = 16;
    let (engine, dir) = engines().pop().unwrap();
    let (mut s, _) = Shard::open(config(dim as u32, Metric::Cosine), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
    let vs = vecs(2000, dim, 2);
    for chunk in points(&vs, 0).chunks(500) {
        s.write(chunk, &[], None).unwrap();
    }
    let oracle = FlatIndex::new(dim, Distance(Metric::Cosine), Precision::F32);
    for (i, v) in vs.iter().enumerate() {
        let mut n = v.clone();
        normalise(&mut n);
        oracle.add(i as u64, &n).unwrap();
    }
    let g3: roaring::RoaringBitmap = (0..2000u32).filter(|i| i % 10 == 3).collect();
    let f = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g3".into())) })) }], ..Default::default() };
    for threshold in [0, u64::MAX] {
        // Both the predicate path (threshold 0) and the exact-scan path.
        s.exact_scan_threshold = Some(threshold);
        let mut recall = 0.0;
        for q in vecs(30, dim, 9) {
            let want: Vec<u64> = oracle.exact(&q, 10, &Allowed::Set(&g3)).unwrap().iter().map(|h| h.key).collect();
            let got = ids(&s.search(&SearchPointsRequest { filter: Some(f.clone()), ..search(&q, 10) }).unwrap());
            assert!(got.iter().all(|i| i % 10 == 3), "filter violated");
            recall += got.iter().filter(|i| want.contains(i)).count() as f64 / 10.0;
            let exact = ids(&s.search(&SearchPointsRequest { filter: Some(f.clone()), exact: true, ..search(&q, 10) }).unwrap());
            assert_eq!(exact, want, "exact filtered search equals the oracle");
            let all: Vec<u64> = oracle.exact(&q, 10, &Allowed::All).unwrap().iter().map(|h| h.key).collect();
            assert_eq!(ids(&s.search(&SearchPointsRequest { exact: true, ..search(&q, 10) }).unwrap()), all);
        }
        assert!(recall / 30.0 >= 0.9, "threshold {threshold}: filtered recall {}", recall / 30.0);
    }
    // Score threshold drops worse results; scores are cosine similarities.
    let r = s.search(&SearchPointsRequest { score_threshold: Some(0.99), ..search(&vs[0], 5) }).unwrap();
    assert_eq!(ids(&r), vec![0]);
    assert!((r[0].score - 1.0).abs() < 1e-4);
}

#[test]
fn scroll_pages_cover_every_point_once() {
    let (engine, dir) = engines().pop().unwrap();
    let (s, _) = Shard::open(config(2, Metric::Dot), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
    s.write(&points(&vecs(53, 2, 3), 0), &[], None).unwrap();
    let mut seen = vec![];
    let mut cursor: Option<PointId> = None;
    loop {
        let (page, next) = s.scroll(cursor.as_ref(), 10, None, false, false).unwrap();
        seen.extend(page.iter().map(|p| p.id.clone().unwrap()));
        match next {
            Some(n) => cursor = Some(n.to_proto()),
            None => break,
        }
    }
    assert_eq!(seen, (0..53u64).map(PointId::from).collect::<Vec<_>>());
}

/// A shard reopened after a clean save, after unsaved writes, and after its
/// index file is damaged serves the same results every time.
#[test]
fn index_file_is_reloaded_reconciled_or_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let dim = 8;
    let vs = vecs(600, dim, 4);
    let qs = vecs(20, dim, 5);
    let open = || {
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        Shard::open(config(dim as u32, Metric::L2), 0, ShardStore::new(engine, "c", 0), &d.path().join("idx")).unwrap()
    };
    let results = |s: &Shard| -> Vec<Vec<u64>> { qs.iter().map(|q| ids(&s.search(&SearchPointsRequest { ef: Some(200), ..search(q, 10) }).unwrap())).collect() };
    let exact = |s: &Shard| -> Vec<Vec<u64>> { qs.iter().map(|q| ids(&s.search(&SearchPointsRequest { exact: true, ..search(q, 10) }).unwrap())).collect() };
    let (mut before, exact_before);
    {
        let (s, how) = open();
        assert_eq!(how, IndexOpen::Rebuilt);
        s.write(&points(&vs[..400], 0), &[], None).unwrap();
        assert!(s.save_index().unwrap());
        assert!(!s.save_index().unwrap(), "no writes, no save");
        // Unsaved: 200 new points, 10 deletes, 5 replaces.
        s.write(&points(&vs[400..], 400), &[], None).unwrap();
        s.write(&[], &(0..10u64).map(PointId::from).collect::<Vec<_>>(), None).unwrap();
        s.write(&points(&vs[100..105], 20), &[], None).unwrap();
        before = results(&s);
        exact_before = exact(&s);
    }
    {
        let (s, how) = open();
        assert_eq!(how, IndexOpen::Loaded { added: 205, removed: 15 });
        assert!(s.opened_from_checkpoint(), "writes after the save: the checkpoint and the write journal stand in for the scan");
        assert_eq!(s.len(), 590);
        // Re-inserting the unsaved points may link the graph a little
        // differently (insertion order is not replayed exactly), so the
        // approximate results are held to the same recall, not identity.
        let again = results(&s);
        let same: usize = again.iter().zip(&before).map(|(a, b)| a.iter().filter(|x| b.contains(x)).count()).sum();
        assert!(same as f64 >= 0.97 * (before.len() * 10) as f64, "reconciled index agrees on only {same} of {} results", before.len() * 10);
        assert_eq!(exact(&s), exact_before);
        // They wait in the pending set (searched exactly) for the node's
        // indexer, which this test plays.
        assert_eq!(s.unindexed(), 205);
        assert_eq!(s.index_pending(1000).unwrap(), 205);
        let indexed = results(&s);
        let same: usize = indexed.iter().zip(&before).map(|(a, b)| a.iter().filter(|x| b.contains(x)).count()).sum();
        assert!(same as f64 >= 0.97 * (before.len() * 10) as f64, "indexed, the graph agrees on only {same} of {} results", before.len() * 10);
        s.save_index().unwrap();
        before = indexed;
    }
    {
        let (s, how) = open();
        assert_eq!(how, IndexOpen::Loaded { added: 0, removed: 0 });
        assert!(s.opened_from_checkpoint(), "nothing written since the save: the key checkpoint stands in for the scan");
        assert_eq!(results(&s), before, "a clean reload is the same graph");
        assert_eq!(exact(&s), exact_before);
    }
    let file = d.path().join("idx").join("0.usearch");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let (s, how) = open();
    assert_eq!(how, IndexOpen::Rebuilt);
    // A rebuilt graph is a different graph: exact results are identical,
    // approximate ones nearly so.
    assert_eq!(exact(&s), exact_before);
    let after = results(&s);
    let same: usize = after.iter().zip(&before).map(|(a, b)| a.iter().filter(|x| b.contains(x)).count()).sum();
    assert!(same as f64 / 200.0 >= 0.95, "rebuilt index overlap {same}/200");
}

/// A follower's deferred indexing: points applied with deferral on are
/// found before the indexer runs (exact and approximate, with filters),
/// replaces and deletes of pending points take effect, draining moves
/// everything into the graph, and a reopen finds the same results.
#[test]
fn deferred_indexing_serves_pending_points_and_drains() {
    for metric in [Metric::Cosine, Metric::L2] {
        let d = tempfile::tempdir().unwrap();
        let dim = 8;
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        let (s, _) = Shard::open(config(dim as u32, metric), 0, ShardStore::new(engine.clone(), "c", 0), &d.path().join("idx")).unwrap();
        let (o, _) = Shard::open(config(dim as u32, metric), 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), &d.path().join("oracle")).unwrap();
        let vs = vecs(300, dim, 11);
        // 200 indexed at once, 100 deferred.
        s.write(&points(&vs[..200], 0), &[], None).unwrap();
        s.set_defer_index(true);
        s.write(&points(&vs[200..], 200), &[], None).unwrap();
        // Replace one pending and one indexed point; delete two of each.
        let moved = points(&vecs(2, dim, 12), 0);
        let replace = vec![PointStruct { id: Some(250u64.into()), ..moved[0].clone() }, PointStruct { id: Some(10u64.into()), ..moved[1].clone() }];
        s.write(&replace, &[], None).unwrap();
        let del: Vec<PointId> = [260u64, 261, 20, 21].iter().map(|&i| i.into()).collect();
        s.write(&[], &del, None).unwrap();
        assert_eq!(s.unindexed(), 99, "100 deferred, one replaced (its new version pending), two deleted");
        // The oracle gets the same writes, indexed at once.
        o.write(&points(&vs, 0), &[], None).unwrap();
        o.write(&replace, &[], None).unwrap();
        o.write(&[], &del, None).unwrap();
        let g3 = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g3".into())) })) }], ..Default::default() };
        let queries = vecs(10, dim, 13);
        let compare = |s: &Shard, when: &str| {
            let mut found = 0;
            for q in &queries {
                let exact = SearchPointsRequest { exact: true, ..search(q, 10) };
                let truth = ids(&o.search(&exact).unwrap());
                assert_eq!(ids(&s.search(&exact).unwrap()), truth, "{metric:?} exact {when}");
                let filtered = SearchPointsRequest { filter: Some(g3.clone()), exact: true, ..search(q, 5) };
                assert_eq!(ids(&s.search(&filtered).unwrap()), ids(&o.search(&filtered).unwrap()), "{metric:?} filtered {when}");
                // Approximate: pending points are scanned exactly, graph
                // points found as HNSW finds them (not always all).
                let approx = SearchPointsRequest { ef: Some(300), ..search(q, 10) };
                found += ids(&s.search(&approx).unwrap()).iter().filter(|i| truth.contains(i)).count();
            }
            assert!(found >= 95, "{metric:?} approximate recall {found}/100 {when}");
        };
        compare(&s, "with pending points");
        assert_eq!(s.len(), 296);
        while s.index_pending(7).unwrap() > 0 {}
        assert_eq!(s.unindexed(), 0);
        compare(&s, "after draining");
        assert!(s.save_index().unwrap(), "drained points are saved");
        drop(s);
        let (again, how) = Shard::open(config(dim as u32, metric), 0, ShardStore::new(engine, "c", 0), &d.path().join("idx")).unwrap();
        assert_eq!(how, IndexOpen::Loaded { added: 0, removed: 0 }, "the saved graph holds every live version and nothing else");
        compare(&again, "after reopen");
    }
}

/// A split on the replica side: the child gets exactly the upper range
/// (and a graph it can load), the parent refuses writes there and filter
/// deletes, hides its frozen copies from reads routed with the new map,
/// and drops them when the split finishes; the state survives a reopen.
#[test]
fn split_copies_the_upper_range_freezes_and_finishes() {
    use split::{ChildSpec, RangeState, RANGE};
    for (kv, dir) in engines() {
        let cfg = config(8, Metric::Cosine);
        let vs = vecs(400, 8, 11);
        let (shard, _) = Shard::open(cfg.clone(), 0, ShardStore::new(kv.clone(), "c", 0), &dir.path().join("p")).unwrap();
        shard.write(&points(&vs, 0), &[], None).unwrap();
        let mid = 1u64 << 63;
        let upper: Vec<u64> = (0..400u64).filter(|i| PointKey::Num(*i).route_hash() >= mid).collect();
        let lower: Vec<u64> = (0..400u64).filter(|i| PointKey::Num(*i).route_hash() < mid).collect();
        assert!(!upper.is_empty() && !lower.is_empty());

        // Split: copy into shard 1, then freeze.
        let child_store = ShardStore::new(kv.clone(), "c", 1);
        let child_meta = vec![(RANGE, RangeState { owned: Some((mid, u64::MAX)), ..Default::default() }.encode())];
        let spec = ChildSpec { store: &child_store, index_dir: &dir.path().join("p"), shard_id: 1, meta: child_meta };
        assert_eq!(shard.copy_range_to(mid, u64::MAX, spec).unwrap(), upper.len() as u64);
        shard.begin_split((0, u64::MAX), mid, 1, vec![]).unwrap();
        let (child, opened) = Shard::open(cfg.clone(), 1, child_store, &dir.path().join("p")).unwrap();
        assert!(matches!(opened, IndexOpen::Loaded { added: 0, .. }), "the copied graph loads: {opened:?}");
        assert_eq!(child.len(), upper.len() as u64);
        assert_eq!(child.range_state().owned, Some((mid, u64::MAX)));
        let q = &vs[upper[0] as usize];
        assert_eq!(ids(&child.search(&search(q, 1)).unwrap()), vec![upper[0]], "the child finds its points through the graph");

        // The parent: writes above mid and filter deletes are refused.
        let moved = |r: Result<()>| matches!(r, Err(NodeError::RangeMoved(_)));
        assert!(moved(shard.check_route(&points(&vs[..1], upper[0]), &[], false, 0)));
        assert!(moved(shard.check_route(&[], &[upper[1].into()], false, 0)));
        assert!(moved(shard.check_route(&[], &[], true, 0)));
        assert!(shard.check_route(&points(&vs[..1], lower[0]), &[lower[1].into()], false, 0).is_ok());
        // Reads: everything for an old-map reader, the lower range for a new one.
        assert_eq!(shard.count_scoped(None, false).unwrap(), 400);
        assert_eq!(shard.count_scoped(None, true).unwrap(), lower.len() as u64);
        let hidden = ids(&shard.search_scoped(&search(q, 400), true).unwrap());
        assert!(hidden.iter().all(|i| lower.contains(i)) && hidden.len() == lower.len(), "{} of {}", hidden.len(), lower.len());
        let (page, _) = shard.scroll_scoped(None, 1000, None, false, false, true).unwrap();
        assert_eq!(page.len(), lower.len());
        let f = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g1".into())) })) }], ..Default::default() };
        let g1_lower = lower.iter().filter(|i| *i % 10 == 1).count() as u64;
        assert_eq!(shard.count_scoped(Some(&f), true).unwrap(), g1_lower);
        // A reopen finds the pending split again.
        drop(shard);
        let (shard, _) = Shard::open(cfg.clone(), 0, ShardStore::new(kv.clone(), "c", 0), &dir.path().join("p")).unwrap();
        assert_eq!(shard.pending_split().map(|p| (p.mid, p.child)), Some((mid, 1)));
        assert_eq!(shard.count_scoped(None, true).unwrap(), lower.len() as u64);

        // Finish: the frozen copies go; old-epoch writes are refused.
        assert_eq!(shard.finish_split(7, vec![]).unwrap(), upper.len() as u64);
        assert_eq!(shard.len(), lower.len() as u64);
        assert!(shard.pending_split().is_none());
        assert!(moved(shard.check_route(&points(&vs[..1], lower[0]), &[], false, 6)));
        assert!(shard.check_route(&points(&vs[..1], lower[0]), &[], false, 7).is_ok());
        assert!(shard.check_route(&[], &[], true, 7).is_ok(), "filter deletes are accepted again");
        assert_eq!(shard.finish_split(7, vec![]).unwrap(), 0, "idempotent");
    }
}

/// A graph full of removed nodes is rebuilt without them: same answers,
/// no removals left, and the rebuilt graph is what a reopen loads.
#[test]
fn compaction_rebuilds_the_graph_without_removed_nodes() {
    for (kv, dir) in engines() {
        let cfg = config(8, Metric::Cosine);
        let vs = vecs(3000, 8, 5);
        let (shard, _) = Shard::open(cfg.clone(), 0, ShardStore::new(kv.clone(), "c", 0), dir.path()).unwrap();
        shard.write(&points(&vs, 0), &[], None).unwrap();
        assert!(!shard.needs_compaction());
        let gone: Vec<PointId> = (0..2000u64).map(Into::into).collect();
        shard.write(&[], &gone, None).unwrap();
        assert!(shard.needs_compaction(), "2000 removed beside 1000 live");
        let qs = vecs(50, 8, 99);
        let truth: Vec<Vec<u64>> = qs.iter().map(|q| ids(&shard.search(&SearchPointsRequest { exact: true, ..search(q, 5) }).unwrap())).collect();
        let stopped = std::sync::atomic::AtomicBool::new(true);
        assert_eq!(shard.compact_index(&stopped).unwrap(), 0, "a node shutting down gives up");
        assert!(shard.needs_compaction(), "and changes nothing");
        assert_eq!(shard.compact_index(&Default::default()).unwrap(), 1000);
        assert!(!shard.needs_compaction());
        let after: Vec<Vec<u64>> = qs.iter().map(|q| ids(&shard.search(&search(q, 5)).unwrap())).collect();
        // HNSW is approximate (and built in parallel): compare with the
        // exact top-5 as a recall, not id by id.
        let hits: usize = truth.iter().zip(&after).map(|(t, a)| a.iter().filter(|i| t.contains(i)).count()).sum();
        assert!(hits as f64 / 250.0 >= 0.95, "recall@5 after compaction {}", hits as f64 / 250.0);
        assert!(after.iter().flatten().all(|i| *i >= 2000), "no deleted point comes back");
        assert!(shard.save_index().unwrap(), "the rebuilt graph is saved");
        drop(shard);
        let (shard, opened) = Shard::open(cfg, 0, ShardStore::new(kv.clone(), "c", 0), dir.path()).unwrap();
        assert_eq!(opened, IndexOpen::Loaded { added: 0, removed: 0 });
        assert_eq!(shard.len(), 1000);
    }
}

/// Offsets of retired versions are taken again once the graph file no
/// longer holds them: a shard whose points are replaced over and over
/// keeps its offsets (and its key table) near the live count instead of
/// growing one slot per version and refusing writes after 2^32 versions.
/// Searches (graph and exact), a graph compaction, and a restart between a
/// reuse and the next save all see the current vectors.
#[test]
fn retired_offsets_are_reused_once_the_saved_graph_drops_them() {
    let d = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
    let cfg = config(8, Metric::L2);
    let open = || Shard::open(cfg.clone(), 0, ShardStore::new(kv.clone(), "c", 0), &d.path().join("index")).unwrap().0;
    let n = 200usize;
    let check = |s: &Shard, vs: &[Vec<f32>], what: &str| {
        assert_eq!(s.len(), n as u64, "{what}");
        // The graph finds the points (approximately: a small graph built by
        // several threads at once is not always fully connected), and the
        // vector stored under each offset is its point's own (the exact
        // scan reads the graph's vectors: distance 0, every time). A wide
        // candidate list (ef 200 of 200 points): what is tested is which
        // vector an offset holds, not the graph's recall at the default
        // ef (once 194 of 200 at ef 128 on a CI machine).
        let found = vs.iter().enumerate().filter(|(i, v)| ids(&s.search(&SearchPointsRequest { ef: Some(200), ..search(v, 10) }).unwrap()).contains(&(*i as u64))).count();
        assert!(found >= n * 98 / 100, "{what}: the graph search found {found} of {n} points");
        for (i, v) in vs.iter().enumerate() {
            let exact = s.search(&SearchPointsRequest { exact: true, ..search(v, 1) }).unwrap();
            assert_eq!(ids(&exact), vec![i as u64], "{what}: exact search for point {i}");
            assert!(exact[0].score.abs() < 1e-4, "{what}: point {i} scores {} against its own vector", exact[0].score);
        }
    };
    let shard = open();
    let mut last = Vec::new();
    for round in 0..20u64 {
        last = vecs(n, 8, round);
        shard.write(&points(&last, 0), &[], None).unwrap();
        if round == 0 {
            // Retired since the last save: the file may hold them.
            shard.write(&points(&last, 0), &[], None).unwrap();
            assert_eq!(shard.next_offset(), 2 * n as u32, "offsets the saved graph may hold are not reused");
        }
        if round % 2 == 1 {
            shard.save_index().unwrap();
        }
    }
    // Without reuse: 21 × 200 = 4,200.
    assert!(shard.next_offset() <= 4 * n as u32, "offsets grew to {}", shard.next_offset());
    check(&shard, &last, "after 20 rounds");
    shard.compact_index(&std::sync::atomic::AtomicBool::new(false)).unwrap();
    check(&shard, &last, "after a compaction");

    // Reused offsets written, then a crash before the next save: the file
    // does not hold them, the restart adds them from storage.
    shard.save_index().unwrap();
    let before = shard.next_offset();
    let fresh = vecs(n, 8, 99);
    shard.write(&points(&fresh, 0), &[], None).unwrap();
    assert_eq!(shard.next_offset(), before, "a round after a save reuses offsets");
    drop(shard);
    let again = open();
    check(&again, &fresh, "after a restart");
    // And the restart knows which offsets it may reuse.
    let more = vecs(n, 8, 100);
    again.write(&points(&more, 0), &[], None).unwrap();
    again.save_index().unwrap();
    again.write(&points(&more, 0), &[], None).unwrap();
    assert!(again.next_offset() <= before + n as u32, "{} > {}", again.next_offset(), before + n as u32);
    check(&again, &more, "after the restart");
}

/// The contents digest depends on the contents only: the same points
/// written in another order, with other offsets (replaced versions in
/// between), digest alike; another payload does not.
#[test]
fn digest_is_canonical_and_streams_the_contents() {
    let vs = vecs(50, 4, 7);
    let open = |d: &tempfile::TempDir| Shard::open(config(4, Metric::L2), 0, ShardStore::new(Arc::new(MemoryEngine::new()), "c", 0), d.path()).unwrap().0;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(&d1), open(&d2));
    a.write(&points(&vs, 0), &[], None).unwrap();
    let mut rev = points(&vs, 0);
    rev.reverse();
    b.write(&points(&vecs(50, 4, 8), 0), &[], None).unwrap();
    b.write(&rev, &[], None).unwrap();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(a.digest().unwrap().0, 50);
    let mut changed = points(&vs[..1], 0);
    changed[0].payload = Some(Struct::try_from(&json!({"group": "other", "i": 0})).unwrap());
    b.write(&changed, &[], None).unwrap();
    assert_ne!(a.digest().unwrap(), b.digest().unwrap());
}

/// A clean restart from the key checkpoint rebuilds what the scan of every
/// stored point would: ids of both kinds, deletes and replaces, payload
/// filters, and offsets that later writes can use.
#[test]
fn a_clean_restart_from_the_key_checkpoint_matches_a_scan() {
    let d = tempfile::tempdir().unwrap();
    let dim = 8;
    let vs = vecs(300, dim, 11);
    let qs = vecs(10, dim, 12);
    let open = || {
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        Shard::open(config(dim as u32, Metric::L2), 0, ShardStore::new(engine, "c", 0), &d.path().join("idx")).unwrap().0
    };
    let uuid = |i: usize| shoal_proto::PointKey::Uuid(0xabc0_0000 + i as u128).to_proto();
    let all_ids: Vec<PointId> = (0..200u64).map(PointId::from).chain((0..60).map(uuid)).collect();
    let group = Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "group".into(), value: Some(match_condition::Value::Keyword("g3".into())) })) }], ..Default::default() };
    // What a reader sees: every id's point, the exact top 10 of each query
    // (ids of both kinds, as strings), and a filtered count.
    let view = |s: &Shard| {
        let got = s.get(&all_ids, true, true).unwrap();
        let top: Vec<Vec<String>> = qs.iter().map(|q| s.search(&SearchPointsRequest { exact: true, ..search(q, 10) }).unwrap().iter().map(|p| format!("{:?}", p.id)).collect()).collect();
        (s.count(None).unwrap(), s.count(Some(&group)).unwrap(), got, top)
    };
    let before = {
        let s = open();
        s.write(&points(&vs[..200], 0), &[], None).unwrap();
        let mut uuids = points(&vs[200..260], 0);
        for (i, p) in uuids.iter_mut().enumerate() {
            p.id = Some(uuid(i));
        }
        s.write(&uuids, &[], None).unwrap();
        s.write(&[], &(0..20u64).map(PointId::from).chain([uuid(5)]).collect::<Vec<_>>(), None).unwrap();
        s.write(&points(&vs[260..270], 30), &[], None).unwrap();
        assert!(s.save_index().unwrap());
        view(&s)
    };
    assert_eq!(before.0, 239, "260 written, 21 deleted");
    let after = {
        let s = open();
        assert!(s.opened_from_checkpoint());
        assert_eq!(view(&s), before);
        // New writes take offsets the checkpoint left free or new ones and
        // are found; they are not saved (a crash): the next open replays
        // the write journal over the checkpoint.
        s.write(&points(&vs[270..280], 500), &[], None).unwrap();
        s.write(&[], &[PointId::from(501), PointId::from(30), uuid(7)], None).unwrap();
        s.write(&points(&vs[280..283], 40), &[], None).unwrap();
        // One write deleting and upserting the same id retires its old
        // version once in the journal.
        s.write(&points(&vs[283..284], 41), &[PointId::from(41)], None).unwrap();
        assert_eq!(s.count(None).unwrap(), 246);
        assert_eq!(ids(&s.search(&SearchPointsRequest { exact: true, ..search(&vs[275], 1) }).unwrap()), vec![505]);
        view(&s)
    };
    let s = open();
    assert!(s.opened_from_checkpoint(), "unsaved writes: the journal brings the checkpoint up to storage");
    assert_eq!(view(&s), after);
    drop(s);
    // A replay that does not end at the live count the last write stored
    // is not used.
    {
        let store = || ShardStore::new(Arc::new(RocksEngine::open(&d.path().join("db")).unwrap()), "c", 0);
        let right = store().meta_get("live").unwrap().expect("writes store the live count");
        assert_eq!(u64::from_be_bytes(right.as_slice().try_into().unwrap()), 246);
        store().write(StoreBatch { put_meta: vec![("live", 245u64.to_be_bytes().to_vec())], ..Default::default() }, true).unwrap();
        // The scan's open drops the checkpoint it did not use: kept aside
        // for the next steps.
        let keys = keyfile::path(&index_file(&d.path().join("idx"), 0));
        let saved = std::fs::read(&keys).unwrap();
        let s = open();
        assert!(!s.opened_from_checkpoint(), "a count that disagrees: scanned");
        assert_eq!(view(&s), after);
        drop(s);
        std::fs::write(&keys, saved).unwrap();
        store().write(StoreBatch { put_meta: vec![("live", right)], ..Default::default() }, true).unwrap();
        assert!(open().opened_from_checkpoint(), "the true count again: replayed");
    }
    // A journal missing a record (here the first one the checkpoint
    // needs) is not used: the scan serves the same.
    ShardStore::new(Arc::new(RocksEngine::open(&d.path().join("db")).unwrap()), "c", 0).trim_journal(6).unwrap();
    let s = open();
    assert!(!s.opened_from_checkpoint(), "a gap in the journal: scanned");
    assert_eq!(view(&s), after);
    s.write(&[], &(500..510u64).map(PointId::from).chain([PointId::from(40), PointId::from(41), PointId::from(42)]).collect::<Vec<_>>(), None).unwrap();
    s.write(&points(&vs[20..22], 20), &[], None).unwrap();
    s.write(&points(&vs[30..31], 30), &[], None).unwrap();
    s.write(&[], &[uuid(7)], None).unwrap();
    s.write(&points(&vs[207..208], 0), &[], None).unwrap();
    {
        let mut u = points(&vs[207..208], 0);
        u[0].id = Some(uuid(7));
        s.write(&u, &[], None).unwrap();
    }
    let last = view(&s);
    s.save_index().unwrap();
    drop(s);
    // A damaged checkpoint is not used, and the scan serves the same.
    let keys = keyfile::path(&index_file(&d.path().join("idx"), 0));
    let mut bytes = std::fs::read(&keys).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&keys, &bytes).unwrap();
    let s = open();
    assert!(!s.opened_from_checkpoint());
    assert_eq!(view(&s), last);
    // Nothing to save, but the scan's open left no checkpoint: the save
    // writes one, and the next open uses it.
    assert!(!s.save_index().unwrap());
    drop(s);
    let s = open();
    assert!(s.opened_from_checkpoint());
    assert_eq!(view(&s), last);
}

/// The filtered-search plan: a walk keeps `ef·s` allowed points (never
/// fewer than fetched, never more than `ef`); the cost model scans rare
/// filters and walks common ones; a node threshold overrides it.
#[test]
fn filtered_plan_follows_selectivity() {
    use crate::shard::{filtered_ef, prefer_scan, WALK_EF_IN_SCANNED_POINTS};
    assert_eq!(filtered_ef(128, 14, 50_000, 100_000), 64);
    assert_eq!(filtered_ef(128, 14, 1_000, 100_000), 14, "at least what is fetched");
    assert_eq!(filtered_ef(128, 14, 100_000, 100_000), 128, "an all-passing filter walks like no filter");
    assert_eq!(filtered_ef(8, 14, 100_000, 100_000), 14);
    assert_eq!(filtered_ef(128, 14, 0, 0), 14);
    // 63k points, ef 32, fetch 14 (the debian set's shapes).
    let n = 63_000;
    assert!(prefer_scan(136, n, 32, 14, None), "0.2%: a walk would go as far as ef 6,500");
    assert!(prefer_scan(1_088, n, 32, 14, None), "1.7%: scan");
    assert!(!prefer_scan(6_600, n, 32, 14, None), "10%: walk");
    assert!(!prefer_scan(24_000, n, 32, 14, None), "38%: walk");
    // The crossing point grows with ef.
    let at = |ef| (1..n).find(|a| !prefer_scan(*a, n, ef, 14, None)).unwrap();
    assert!(at(512) > at(32), "{} vs {}", at(512), at(32));
    assert!(at(32) as f64 >= (14.0 * n as f64 * WALK_EF_IN_SCANNED_POINTS as f64).sqrt() * 0.99);
    // An operator's threshold wins.
    assert!(prefer_scan(6_600, n, 32, 14, Some(10_000)));
    assert!(!prefer_scan(136, n, 32, 14, Some(0)));
    assert!(prefer_scan(0, 0, 32, 14, None), "an empty shard scans nothing");
}

/// Exact searches of a batch sharing a filter are scored together by the
/// scan engine (`search_exact_groups`): each gets the answer it gets on
/// its own, graph and pending versions alike, per filter group, with a
/// search that is not exact left to the single path.
#[test]
fn batched_exact_searches_answer_as_single_ones() {
    let keyword = |k: &str, v: &str| Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: k.into(), value: Some(match_condition::Value::Keyword(v.into())) })) }], ..Default::default() };
    for metric in [Metric::L2, Metric::Cosine] {
        let (engine, dir) = engines().pop().unwrap();
        let (s, _) = Shard::open(config(16, metric), 0, ShardStore::new(engine, "c", 0), dir.path()).unwrap();
        let vs = vecs(3_000, 16, 31);
        s.write(&points(&vs[..2_000], 0), &[], None).unwrap();
        // A follower's deferred versions wait in the pending set.
        s.set_defer_index(true);
        s.write(&points(&vs[2_000..], 2_000), &[], None).unwrap();
        assert_eq!(s.unindexed(), 1_000);
        let qs = vecs(24, 16, 32);
        let mut reqs: Vec<SearchPointsRequest> = qs
            .iter()
            .enumerate()
            .map(|(i, q)| SearchPointsRequest {
                exact: i % 6 != 5,
                filter: (i % 3 == 1).then(|| keyword("group", "g3")),
                // Groups share a filter and a top_k: most ask for 10 (a group
                // of 8+, scored by matrix products), a few for 3.
                top_k: if i % 8 == 7 { 3 } else { 10 },
                with_payload: i % 2 == 0,
                ..search(q, 10)
            })
            .collect();
        // A query that is a stored point: found first, distance 0.
        reqs[0].vector = vs[2_500].clone();
        let refs: Vec<&SearchPointsRequest> = reqs.iter().collect();
        let grouped = s.search_exact_groups(&refs, false).unwrap();
        for (i, (r, g)) in reqs.iter().zip(&grouped).enumerate() {
            let single = s.search(r).unwrap();
            // Not exact, or alone with its filter and top_k: the single path.
            let Some(g) = g else { continue };
            assert_eq!(ids(g), ids(&single), "{metric:?} search {i}");
            for (a, b) in g.iter().zip(&single) {
                assert!((a.score - b.score).abs() <= 1e-4 * (1.0 + b.score.abs()), "{metric:?} search {i}: {} vs {}", a.score, b.score);
                assert_eq!(a.payload, b.payload);
            }
            if let Some(f) = &r.filter {
                let allowed: Vec<u64> = ids(&s.search(&SearchPointsRequest { top_k: 1_000, exact: true, filter: Some(f.clone()), ..search(&r.vector, 1_000) }).unwrap());
                assert!(ids(g).iter().all(|id| allowed.contains(id)), "search {i} stays in its filter");
            }
        }
        assert_eq!(ids(grouped[0].as_ref().unwrap())[0], 2_500, "{metric:?}: a pending version is found");
        assert!(grouped.iter().filter(|g| g.is_some()).count() >= 16);
    }
}
