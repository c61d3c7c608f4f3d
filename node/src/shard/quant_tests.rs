//! Quantized shards (INT8, BINARY): search against the f32 oracle, the
//! vector file checked and rewritten at open (damage, a crash before the
//! slot write, a lost file), compaction and recalibration.
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use shoal_proto::v1::*;

use super::*;
use crate::storage::{rocks::RocksEngine, KvEngine};

fn config(storage: VectorStorage, metric: Metric) -> CollectionConfig {
    validate::collection_config(&CollectionConfig { name: "q".into(), dimension: 32, metric: metric as i32, storage: storage as i32, ..Default::default() }).unwrap()
}

fn vecs(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..32).map(|_| r.random_range(-1.0..1.0)).collect()).collect()
}

fn points(vs: &[Vec<f32>]) -> Vec<PointStruct> {
    vs.iter().enumerate().map(|(i, v)| PointStruct { id: Some((i as u64).into()), vector: v.clone(), ..Default::default() }).collect()
}

fn top(s: &Shard, q: &[f32], k: u32, exact: bool) -> Vec<(u64, f32)> {
    let req = SearchPointsRequest { vector: q.to_vec(), top_k: k, exact, ef: Some(200), ..Default::default() };
    s.search(&req)
        .unwrap()
        .iter()
        .map(|p| match p.id.as_ref().unwrap().kind {
            Some(point_id::Kind::Num(n)) => (n, p.score),
            _ => panic!("uuid"),
        })
        .collect()
}

/// L2 scores of the true top `k` (f64).
fn truth(vs: &[Vec<f32>], q: &[f32], k: usize) -> Vec<(u64, f64)> {
    let mut all: Vec<(u64, f64)> = vs.iter().enumerate().map(|(i, v)| (i as u64, v.iter().zip(q).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt())).collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    all.truncate(k);
    all
}

#[test]
fn quantized_shards_search_exactly_after_rescoring_and_survive_reopen() {
    for storage in [VectorStorage::Int8, VectorStorage::Binary] {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
        let open = || Shard::open(config(storage, Metric::L2), 0, ShardStore::new(engine.clone(), "q", 0), &dir.path().join("idx")).unwrap().0;
        let vs = vecs(600, 1);
        let s = open();
        s.write(&points(&vs), &[], None).unwrap();
        assert!(vector_file(&dir.path().join("idx"), 0).exists());
        let q = &vecs(1, 99)[0];
        // Exact search reads the full vectors: the true order and scores.
        let want = truth(&vs, q, 5);
        let got = top(&s, q, 5, true);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>(), "{storage:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 as f64 - w.1).abs() < 1e-4, "{storage:?}: {} vs {}", g.1, w.1);
        }
        // A graph search with a wide oversampling re-scores to the same top 5.
        let req = SearchPointsRequest { vector: q.clone(), top_k: 5, ef: Some(400), oversampling: Some(40.0), ..Default::default() };
        let approx: Vec<f32> = s.search(&req).unwrap().iter().map(|p| p.score).collect();
        assert_eq!(approx.len(), 5);
        for (a, w) in approx.iter().zip(&want) {
            assert!((*a as f64 - w.1).abs() < 1e-4, "{storage:?}: re-scored {a} vs {}", w.1);
        }
        // Codes alone: scores differ from the full ones (they are estimates).
        let plain = s.search(&SearchPointsRequest { rescore: Some(false), ..req.clone() }).unwrap();
        assert_eq!(plain.len(), 5);
        let plain: Vec<f32> = plain.iter().map(|p| p.score).collect();
        assert_ne!(plain, approx, "{storage:?}: scores from the codes are estimates");
        if storage == VectorStorage::Int8 {
            // int8 estimates of these L2 distances are within a few percent.
            for (p, w) in plain.iter().zip(&want) {
                assert!((*p as f64 - w.1).abs() < 0.1 * w.1.max(1.0), "int8 estimate {p} vs {}", w.1);
            }
        }
        // top_k past MAX_EF: at least top_k candidates, no panic.
        let all = s.search(&SearchPointsRequest { vector: q.clone(), top_k: 10_000, ..Default::default() }).unwrap();
        assert!(all.len() >= 500 && all.len() <= 600, "{storage:?}: {}", all.len());
        assert!(all.windows(2).all(|w| w[0].score <= w[1].score), "L2 scores ascend");
        s.save_index().unwrap();
        drop(s);

        // Damage: one slot's bytes flipped, and a slot zeroed as if the
        // node died between the apply and the slot write.
        let path = vector_file(&dir.path().join("idx"), 0);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let stride = 32 * 4 + 4;
        f.write_all_at(&[0xFF; 8], 64 + 3 * stride + 4).unwrap();
        f.write_all_at(&vec![0u8; stride as usize], 64 + 7 * stride).unwrap();
        drop(f);
        let s = open();
        assert!(matches!(s.opened, IndexOpen::Loaded { .. }), "the graph loads with its calibration");
        assert!(s.opened_from_checkpoint(), "a clean restart: damaged slots are found by their checksums");
        let got = top(&s, q, 5, true);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
        for id in [3u64, 7] {
            let hit = top(&s, &vs[id as usize], 1, true);
            assert_eq!(hit[0].0, id);
            assert!(hit[0].1.abs() < 1e-6, "{storage:?}: slot {id} holds its stored vector again");
        }
        drop(s);
        // The file lost entirely: rewritten from storage.
        std::fs::remove_file(&path).unwrap();
        let s = open();
        let got = top(&s, q, 5, true);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
        // Replaces and deletes: the old vectors leave.
        s.write(&[PointStruct { id: Some(0u64.into()), vector: q.clone(), ..Default::default() }], &[1u64.into()], None).unwrap();
        let got = top(&s, q, 2, false);
        assert_eq!(got[0].0, 0);
        assert!(got[0].1.abs() < 1e-6);
        assert!(top(&s, &vs[1], 3, true).iter().all(|g| g.0 != 1));
        // Get returns the stored f32 vector, not a code.
        assert_eq!(s.get(&[5u64.into()], false, true).unwrap()[0].vector, vs[5]);
    }
}

#[test]
fn a_graph_calibrated_on_a_small_sample_is_rebuilt_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
    let (s, _) = Shard::open(config(VectorStorage::Int8, Metric::Dot), 0, ShardStore::new(engine, "q", 0), &dir.path().join("idx")).unwrap();
    let vs = vecs(1200, 4);
    // One point first: calibrated on a single vector.
    s.write(&points(&vs[..1]), &[], None).unwrap();
    assert!(s.index.calibration().unwrap().ends_with(";1"), "{:?}", s.index.calibration());
    let rest: Vec<PointStruct> = points(&vs).into_iter().skip(1).collect();
    s.write(&rest, &[], None).unwrap();
    assert!(s.needs_compaction(), "1,200 vectors on a 1-vector calibration");
    assert_eq!(s.compact_index(&Default::default()).unwrap(), 1200);
    assert!(s.index.calibration().unwrap().ends_with(";1200"), "{:?}", s.index.calibration());
    assert!(!s.needs_compaction());
    let q = &vecs(1, 5)[0];
    let want: Vec<u64> = {
        let mut all: Vec<(u64, f64)> = vs.iter().enumerate().map(|(i, v)| (i as u64, v.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>())).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.iter().take(5).map(|x| x.0).collect()
    };
    assert_eq!(top(&s, q, 5, true).iter().map(|g| g.0).collect::<Vec<_>>(), want);
}
