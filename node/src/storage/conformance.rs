//! One conformance suite for every [`KvEngine`] implementation, run against
//! [`MemoryEngine`](super::memory::MemoryEngine) and
//! [`RocksEngine`](super::rocks::RocksEngine) by the tests at the bottom.
//! A new engine passes this suite before it is used anywhere.
use std::sync::Arc;

use shoal_proto::v1::Struct;
use shoal_proto::PointKey;

use super::{Cf, IndexEntry, IndexValue, KvEngine, KvOp, ShardStore, StoreBatch, StoredPoint};

/// Runs every check against engines made by `make` (a fresh, empty engine
/// each call).
pub fn run_all(make: &dyn Fn() -> Arc<dyn KvEngine>) {
    kv_put_get_delete(make());
    kv_scan_bounds_and_order(make());
    kv_batch_is_ordered(make());
    kv_delete_range(make());
    kv_last_in_range(make());
    shard_points_roundtrip_and_isolation(make());
    shard_scan_from_cursor(make());
    shard_index_entries(make());
    shard_meta_and_destroy(make());
}

fn collect(e: &dyn KvEngine, cf: Cf, s: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    e.scan(cf, s, end, &mut |k, _| {
        out.push(k.to_vec());
        true
    })
    .unwrap();
    out
}

fn kv_last_in_range(e: Arc<dyn KvEngine>) {
    assert_eq!(e.last(Cf::RaftLog, b"a", b"z").unwrap(), None, "empty range");
    let ops = ["a1", "a2", "b0", "b5", "c"].iter().map(|k| KvOp::Put(Cf::RaftLog, k.as_bytes().to_vec(), k.as_bytes().to_vec())).collect();
    e.write(ops, true).unwrap();
    assert_eq!(e.last(Cf::RaftLog, b"a", b"b").unwrap(), Some((b"a2".to_vec(), b"a2".to_vec())));
    assert_eq!(e.last(Cf::RaftLog, b"b", b"b5").unwrap().map(|x| x.0), Some(b"b0".to_vec()), "end is exclusive");
    assert_eq!(e.last(Cf::RaftLog, b"b", b"b6").unwrap().map(|x| x.0), Some(b"b5".to_vec()));
    assert_eq!(e.last(Cf::RaftLog, b"c0", b"d").unwrap(), None, "start is inclusive and bounds the search");
    assert_eq!(e.last(Cf::Points, b"a", b"z").unwrap(), None, "column families are separate");
}

fn kv_put_get_delete(e: Arc<dyn KvEngine>) {
    e.write(vec![KvOp::Put(Cf::Points, b"a".to_vec(), b"1".to_vec())], true).unwrap();
    assert_eq!(e.get(Cf::Points, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(e.get(Cf::Meta, b"a").unwrap(), None, "column families are separate");
    e.write(vec![KvOp::Delete(Cf::Points, b"a".to_vec())], false).unwrap();
    assert_eq!(e.get(Cf::Points, b"a").unwrap(), None);
}

fn kv_scan_bounds_and_order(e: Arc<dyn KvEngine>) {
    let keys: [&[u8]; 5] = [b"b", b"a", b"ab", b"c", b"\xff"];
    e.write(keys.iter().map(|k| KvOp::Put(Cf::Points, k.to_vec(), vec![])).collect(), true).unwrap();
    assert_eq!(collect(&*e, Cf::Points, b"a", b"c"), vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec()]);
    assert_eq!(collect(&*e, Cf::Points, b"ab", b"\xff\xff"), vec![b"ab".to_vec(), b"b".to_vec(), b"c".to_vec(), b"\xff".to_vec()]);
    let mut n = 0;
    e.scan(Cf::Points, b"", b"\xff\xff", &mut |_, _| {
        n += 1;
        n < 2
    })
    .unwrap();
    assert_eq!(n, 2, "scan stops when the visitor says so");
}

fn kv_batch_is_ordered(e: Arc<dyn KvEngine>) {
    e.write(
        vec![
            KvOp::Put(Cf::Points, b"k".to_vec(), b"1".to_vec()),
            KvOp::Delete(Cf::Points, b"k".to_vec()),
            KvOp::Put(Cf::Points, b"k".to_vec(), b"2".to_vec()),
            KvOp::Put(Cf::Meta, b"m".to_vec(), b"x".to_vec()),
        ],
        true,
    )
    .unwrap();
    assert_eq!(e.get(Cf::Points, b"k").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(Cf::Meta, b"m").unwrap(), Some(b"x".to_vec()));
}

fn kv_delete_range(e: Arc<dyn KvEngine>) {
    e.write((0u8..10).map(|i| KvOp::Put(Cf::PayloadIndex, vec![i], vec![])).collect(), true).unwrap();
    e.write(vec![KvOp::DeleteRange(Cf::PayloadIndex, vec![2], vec![5])], true).unwrap();
    let left = collect(&*e, Cf::PayloadIndex, &[0], &[100]);
    assert_eq!(left, vec![vec![0], vec![1], vec![5], vec![6], vec![7], vec![8], vec![9]]);
}

fn point(id: PointKey, offset: u32) -> StoredPoint {
    let payload = Struct { fields: [("n".to_string(), shoal_proto::v1::Value { kind: Some(shoal_proto::v1::value::Kind::IntegerValue(offset as i64)) })].into() };
    StoredPoint { id: Some(id.to_proto()), vector: vec![offset as f32, 1.0], payload: Some(payload), offset, sparse: Default::default(), vectors: Default::default() }
}

fn shard_points_roundtrip_and_isolation(e: Arc<dyn KvEngine>) {
    let a = ShardStore::new(e.clone(), "c", 0);
    let b = ShardStore::new(e.clone(), "c", 1);
    let c = ShardStore::new(e.clone(), "c2", 0);
    let id = PointKey::Num(7);
    a.write(StoreBatch { put_points: vec![point(id, 1)], ..Default::default() }, true).unwrap();
    assert_eq!(a.get(&id).unwrap(), Some(point(id, 1)));
    assert_eq!(b.get(&id).unwrap(), None, "shards of one collection are isolated");
    assert_eq!(c.get(&id).unwrap(), None, "collections are isolated");
    a.write(StoreBatch { put_points: vec![point(id, 2)], ..Default::default() }, true).unwrap();
    assert_eq!(a.get(&id).unwrap().unwrap().offset, 2, "put replaces");
    a.write(StoreBatch { delete_points: vec![id], ..Default::default() }, true).unwrap();
    assert_eq!(a.get(&id).unwrap(), None);
}

fn shard_scan_from_cursor(e: Arc<dyn KvEngine>) {
    let s = ShardStore::new(e.clone(), "c", 3);
    let other = ShardStore::new(e.clone(), "c", 4);
    let ids = [PointKey::Uuid(5), PointKey::Num(300), PointKey::Num(2), PointKey::Uuid(1), PointKey::Num(u64::MAX)];
    s.write(StoreBatch { put_points: ids.iter().enumerate().map(|(i, id)| point(*id, i as u32)).collect(), ..Default::default() }, true).unwrap();
    other.write(StoreBatch { put_points: vec![point(PointKey::Num(1), 9)], ..Default::default() }, true).unwrap();
    let scan = |from: Option<PointKey>| {
        let mut out = vec![];
        s.scan_points(from.as_ref(), &mut |k, _| {
            out.push(k);
            true
        })
        .unwrap();
        out
    };
    let mut sorted = ids.to_vec();
    sorted.sort();
    assert_eq!(scan(None), sorted, "points scan in id order, shard-local");
    assert_eq!(scan(Some(PointKey::Num(3))), sorted[1..].to_vec());
    assert_eq!(scan(Some(PointKey::Uuid(2))), vec![PointKey::Uuid(5)]);
}

fn shard_index_entries(e: Arc<dyn KvEngine>) {
    let s = ShardStore::new(e.clone(), "c", 0);
    let t = ShardStore::new(e.clone(), "c", 1);
    let entries = vec![
        IndexEntry { field: "section".into(), value: IndexValue::Keyword("net".into()), offset: 1 },
        IndexEntry { field: "size".into(), value: IndexValue::Number(-2.5), offset: 1 },
        IndexEntry { field: "size".into(), value: IndexValue::Number(10.0), offset: 2 },
        IndexEntry { field: "ok".into(), value: IndexValue::Bool(false), offset: 3 },
    ];
    s.write(StoreBatch { put_index: entries.clone(), ..Default::default() }, true).unwrap();
    t.write(StoreBatch { put_index: vec![entries[0].clone()], ..Default::default() }, true).unwrap();
    let mut got = vec![];
    s.scan_index(&mut |e| got.push(e)).unwrap();
    assert_eq!(got.len(), 4);
    for e in &entries {
        assert!(got.contains(e), "{e:?} missing");
    }
    s.write(StoreBatch { delete_index: vec![entries[1].clone()], ..Default::default() }, true).unwrap();
    let mut n = 0;
    s.scan_index(&mut |_| n += 1).unwrap();
    assert_eq!(n, 3);
}

fn shard_meta_and_destroy(e: Arc<dyn KvEngine>) {
    let s = ShardStore::new(e.clone(), "c", 0);
    let keep = ShardStore::new(e.clone(), "c", 1);
    assert_eq!(s.meta_u64("seq").unwrap(), 0);
    s.write(
        StoreBatch { put_points: vec![point(PointKey::Num(1), 0)], put_meta: vec![("seq", 42u64.to_be_bytes().to_vec())], ..Default::default() },
        true,
    )
    .unwrap();
    keep.write(StoreBatch { put_points: vec![point(PointKey::Num(1), 0)], ..Default::default() }, true).unwrap();
    assert_eq!(s.meta_u64("seq").unwrap(), 42);
    s.destroy().unwrap();
    assert_eq!(s.meta_u64("seq").unwrap(), 0);
    assert_eq!(s.get(&PointKey::Num(1)).unwrap(), None);
    assert!(keep.get(&PointKey::Num(1)).unwrap().is_some(), "destroy is shard-local");
    super::shard_store::node_meta_put(&*e, "map", b"v".to_vec()).unwrap();
    assert_eq!(super::shard_store::node_meta_get(&*e, "map").unwrap(), Some(b"v".to_vec()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{memory::MemoryEngine, rocks::RocksEngine};

    #[test]
    fn memory_engine_conforms() {
        run_all(&|| Arc::new(MemoryEngine::new()));
    }

    #[test]
    fn rocks_engine_conforms() {
        let dirs = parking_lot::Mutex::new(vec![]);
        run_all(&|| {
            let d = tempfile::tempdir().unwrap();
            let e = Arc::new(RocksEngine::open(d.path()).unwrap());
            dirs.lock().push(d);
            e
        });
    }

    /// Synced writes survive closing and reopening the database.
    #[test]
    fn rocks_engine_persists_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let e: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(d.path()).unwrap());
            ShardStore::new(e, "c", 0).write(StoreBatch { put_points: vec![point(PointKey::Num(5), 3)], ..Default::default() }, true).unwrap();
        }
        let e: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(d.path()).unwrap());
        assert_eq!(ShardStore::new(e, "c", 0).get(&PointKey::Num(5)).unwrap(), Some(point(PointKey::Num(5), 3)));
    }
}
