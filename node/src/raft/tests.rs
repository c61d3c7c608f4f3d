//! The log store against openraft's own storage test suite, on both KV
//! engines. The suite needs a state machine beside the log; [`TestSm`] is a
//! minimal in-memory one so that the suite exercises the log store.
use std::collections::BTreeMap;
use super::snapshot::SnapshotData;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, RaftSnapshotBuilder};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use parking_lot::Mutex;

use super::log_store::LogStore;
use super::{Entry, NodeId, Reply, TypeConfig};
use crate::storage::memory::MemoryEngine;
use crate::storage::rocks::RocksEngine;
use crate::storage::{KvEngine, ShardStore};
use super::state_machine::ShardStateMachine;
use shoal_proto::v1::{CollectionConfig, Metric, PayloadIndexSpec, PayloadIndexType};

#[derive(Default)]
struct SmState {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    data: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
}

#[derive(Clone, Default)]
struct TestSm(Arc<Mutex<SmState>>);

impl RaftSnapshotBuilder<TypeConfig> for TestSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut s = self.0.lock();
        let bytes = postcard::to_stdvec(&s.data).unwrap();
        let meta = SnapshotMeta { last_log_id: s.applied, last_membership: s.membership.clone(), snapshot_id: format!("{:?}", s.applied) };
        s.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: SnapshotData::memory(bytes) })
    }
}

impl RaftStateMachine<TypeConfig> for TestSm {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        let s = self.0.lock();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut s = self.0.lock();
        let mut out = vec![];
        for e in entries {
            s.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(c) => {
                    s.data.insert(e.log_id.index, c.write);
                }
                EntryPayload::Membership(m) => s.membership = StoredMembership::new(Some(e.log_id), m),
                EntryPayload::Blank => {}
            }
            out.push(Reply { affected: 1, error: None, parts: vec![] });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        Ok(SnapshotData::memory(vec![]))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, snapshot: Box<SnapshotData>) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_bytes().await.unwrap();
        let mut s = self.0.lock();
        s.data = postcard::from_bytes(&bytes).unwrap();
        s.applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let s = self.0.lock();
        Ok(s.snapshot.as_ref().map(|(m, b)| Snapshot { meta: m.clone(), snapshot: SnapshotData::memory(b.clone()) }))
    }
}

struct Builder {
    rocks: bool,
}

impl StoreBuilder<TypeConfig, LogStore, TestSm, Option<tempfile::TempDir>> for Builder {
    async fn build(&self) -> Result<(Option<tempfile::TempDir>, LogStore, TestSm), StorageError<NodeId>> {
        let (guard, engine): (_, Arc<dyn KvEngine>) = if self.rocks {
            let d = tempfile::tempdir().unwrap();
            let e = Arc::new(RocksEngine::open(d.path()).unwrap());
            (Some(d), e)
        } else {
            (None, Arc::new(MemoryEngine::new()))
        };
        // A neighbouring group in the same engine must not leak into this one.
        let other = LogStore::new(engine.clone(), "other-group");
        let mut o = other.clone();
        openraft::storage::RaftLogStorage::save_vote(&mut o, &openraft::Vote::new(9, 9)).await?;
        Ok((guard, LogStore::new(engine, "coll/0"), TestSm::default()))
    }
}

/// The real pair: log store and shard state machine.
struct ShardBuilder;

fn test_config() -> CollectionConfig {
    let c = CollectionConfig {
        name: "c".into(),
        dimension: 4,
        metric: Metric::L2 as i32,
        payload_indexes: vec![PayloadIndexSpec { key: "g".into(), r#type: PayloadIndexType::Keyword as i32, text: None }],
        ..Default::default()
    };
    shoal_proto::validate::collection_config(&c).unwrap()
}

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, tempfile::TempDir> for ShardBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError<NodeId>> {
        let d = tempfile::tempdir().unwrap();
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        let sm = ShardStateMachine::open(test_config(), 0, ShardStore::new(engine.clone(), "c", 0), d.path().join("index")).unwrap();
        Ok((d, LogStore::new(engine, "c/0"), sm))
    }
}

#[test]
fn openraft_suite_with_shard_state_machine() {
    Suite::test_all(ShardBuilder).unwrap();
}

#[test]
fn openraft_suite_memory_engine() {
    Suite::test_all(Builder { rocks: false }).unwrap();
}

#[test]
fn openraft_suite_rocksdb_engine() {
    Suite::test_all(Builder { rocks: true }).unwrap();
}

/// A RocksDB engine in `dir`.
fn rocks_in(dir: &std::path::Path) -> Arc<dyn KvEngine> {
    Arc::new(RocksEngine::open(&dir.join("db")).unwrap())
}

/// The test collection's shard 0 state machine over `engine`, its graph in
/// `dir`.
fn sm_in(engine: &Arc<dyn KvEngine>, dir: &std::path::Path) -> ShardStateMachine {
    ShardStateMachine::open(test_config(), 0, ShardStore::new(engine.clone(), "c", 0), dir.join("index")).unwrap()
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry { log_id: openraft::testing::log_id(term, 1, index), payload }
}

fn write_cmd(ids: std::ops::Range<u64>, delete: &[u64]) -> EntryPayload<TypeConfig> {
    use prost::Message;
    use shoal_proto::internal::v1::ShardWriteRequest;
    use shoal_proto::v1::{PointStruct, Struct};
    let upserts = ids
        .map(|i| PointStruct {
            id: Some(i.into()),
            vector: vec![i as f32, 1.0, 2.0, 3.0],
            payload: Some(Struct::try_from(&serde_json::json!({"g": if i % 2 == 0 { "even" } else { "odd" }})).unwrap()), sparse: Default::default(), vectors: Default::default()
        })
        .collect();
    let req = ShardWriteRequest { upserts, delete_ids: delete.iter().map(|&i| i.into()).collect(), ..Default::default() };
    EntryPayload::Normal(super::Command { write: req.encode_to_vec() })
}

/// Sorted (id, vector, payload) triples of a shard: its digest.
fn contents(sm: &ShardStateMachine) -> Vec<String> {
    let (points, _) = sm.shard().export(&[]).unwrap();
    let mut v: Vec<String> = points.iter().map(|p| format!("{:?} {:?} {:?}", p.id, p.vector, p.payload)).collect();
    v.sort();
    v
}

/// Applied writes persist with their log id; a restart reports the same
/// applied id; an invalid write is rejected identically and still
/// advances the applied id; a snapshot installed on an empty replica
/// reproduces the contents, the payload index and the applied id.
#[test]
fn shard_state_machine_applies_snapshots_and_restarts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = tempfile::tempdir().unwrap();
        let engine = rocks_in(d.path());
        let open = |e: &Arc<dyn KvEngine>| sm_in(e, d.path());
        let mut sm = open(&engine);
        let bad = {
            use prost::Message;
            let req = shoal_proto::internal::v1::ShardWriteRequest {
                upserts: vec![shoal_proto::v1::PointStruct { id: Some(99u64.into()), vector: vec![1.0], payload: None, sparse: Default::default(), vectors: Default::default() }],
                ..Default::default()
            };
            EntryPayload::Normal(super::Command { write: req.encode_to_vec() })
        };
        let replies = sm
            .apply(vec![entry(1, 1, EntryPayload::Blank), entry(1, 2, write_cmd(0..50, &[])), entry(1, 3, write_cmd(40..60, &[1, 2, 3])), entry(1, 4, bad)])
            .await
            .unwrap();
        assert_eq!(replies.len(), 4, "one reply per entry");
        assert_eq!(replies[1], Reply { affected: 50, error: None, parts: vec![] });
        assert_eq!(replies[2].affected, 23, "20 upserts (10 replaced) + 3 deletes");
        assert!(replies[3].error.as_deref().is_some_and(|e| e.contains("dimension")), "{:?}", replies[3]);
        assert_eq!(sm.shard().len(), 57);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(openraft::testing::log_id(1, 1, 4)), "a rejected write still advances the applied id");

        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, applied);
        let want = contents(&sm);

        // Restart on the same storage: same applied id, same contents.
        drop(sm);
        let mut again = open(&engine);
        assert_eq!(again.applied_state().await.unwrap().0, applied);
        assert_eq!(contents(&again), want);

        // Install on a fresh replica in another engine.
        let d2 = tempfile::tempdir().unwrap();
        let mut other = sm_in(&rocks_in(d2.path()), d2.path());
        other.apply(vec![entry(1, 1, write_cmd(500..510, &[]))]).await.unwrap();
        other.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(contents(&other), want, "install replaces the old contents");
        assert_eq!(other.applied_state().await.unwrap().0, applied);
        use shoal_proto::v1::{condition, match_condition, Condition, Filter, MatchCondition};
        let even = Filter {
            must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "g".into(), value: Some(match_condition::Value::Keyword("even".into())) })) }],
            ..Default::default()
        };
        assert_eq!(other.shard().count(Some(&even)).unwrap(), again.shard().count(Some(&even)).unwrap(), "payload index rebuilt");
        let q = shoal_proto::v1::SearchPointsRequest { vector: vec![7.0, 1.0, 2.0, 3.0], top_k: 3, exact: true, ..Default::default() };
        assert_eq!(other.shard().search(&q).unwrap(), again.shard().search(&q).unwrap(), "search agrees after install");
        assert_eq!(other.get_current_snapshot().await.unwrap().map(|s| s.meta), Some(snap.meta));
    });
}

/// A snapshot install is all or nothing. A file with a corrupt or cut-off
/// points section is refused and leaves the old replica whole (contents,
/// applied id, generation), also across a restart. A good file is
/// installed with the shipped HNSW graph loaded, not rebuilt, and
/// survives a restart. A corrupt graph section falls back to a rebuild,
/// and the generation it replaces is deleted.
#[test]
fn snapshot_install_is_atomic_and_ships_the_graph() {
    use crate::shard::IndexOpen;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = tempfile::tempdir().unwrap();
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        let mut sm = ShardStateMachine::open(test_config(), 0, ShardStore::new(engine.clone(), "c", 0), d.path().join("index")).unwrap();
        sm.apply(vec![entry(1, 1, write_cmd(0..300, &[])), entry(1, 2, write_cmd(250..320, &[5, 6]))]).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let want = contents(&sm);
        assert_eq!(want.len(), 318);
        let path = d.path().join("index/0.snapshots/current.snap");
        let good = std::fs::read(&path).unwrap();
        assert_eq!(sm.current_snapshot_bytes(), good.len() as u64);
        let hlen = u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
        let (header, _) = super::snapshot::read_header(&mut good.as_slice()).unwrap();
        assert!(header.index_bytes > 0, "the graph travels with the points");

        let d2 = tempfile::tempdir().unwrap();
        let e2: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d2.path().join("db")).unwrap());
        let open2 = || ShardStateMachine::open(test_config(), 0, ShardStore::new(e2.clone(), "c", 0), d2.path().join("index")).unwrap();
        let mut other = open2();
        other.apply(vec![entry(1, 1, write_cmd(500..510, &[]))]).await.unwrap();
        let before = contents(&other);
        let applied_before = other.applied_state().await.unwrap().0;

        let variant = |name: &str, bytes: Vec<u8>| {
            let p = d2.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut flipped = good.clone();
        flipped[12 + hlen + 10] ^= 0x40;
        let truncated = good[..good.len() - 100].to_vec();
        for (name, bytes) in [("flipped.snap", flipped), ("truncated.snap", truncated)] {
            let data = SnapshotData::open(variant(name, bytes)).await.unwrap();
            assert!(other.install_snapshot(&snap.meta, data).await.is_err(), "{name} must be refused");
            assert_eq!(contents(&other), before, "{name}: old contents untouched");
            assert_eq!(other.applied_state().await.unwrap().0, applied_before, "{name}: old applied id");
            assert_eq!(other.generation(), 0);
            assert_eq!(ShardStore::new(e2.clone(), "c", 0).with_generation(1).meta_u64("seq").unwrap(), 0, "{name}: staging dropped");
        }
        drop(other);
        let mut other = open2();
        assert_eq!(contents(&other), before, "a restart after refused installs finds the old replica");

        let data = SnapshotData::open(variant("good.snap", good.clone())).await.unwrap();
        other.install_snapshot(&snap.meta, data).await.unwrap();
        assert_eq!(contents(&other), want);
        assert_eq!(other.generation(), 1);
        assert_eq!(other.shard().index_open(), IndexOpen::Loaded { added: 0, removed: 0 }, "shipped graph loaded as is");
        let q = shoal_proto::v1::SearchPointsRequest { vector: vec![7.0, 1.0, 2.0, 3.0], top_k: 5, ..Default::default() };
        assert_eq!(other.shard().search(&q).unwrap(), sm.shard().search(&q).unwrap(), "graph search agrees");
        assert_eq!(ShardStore::new(e2.clone(), "c", 0).meta_u64("seq").unwrap(), 0, "generation 0 deleted");

        // As if the process died after the commit but before the received
        // file became `current.snap`: it is still the live generation's.
        let snaps = d2.path().join("index/0.snapshots");
        std::fs::rename(snaps.join("current.snap"), snaps.join("gen1.snap")).unwrap();
        drop(other);
        let mut other = open2();
        assert_eq!((other.generation(), contents(&other)), (1, want.clone()), "install survives a restart");
        assert_eq!(other.applied_state().await.unwrap().0, snap.meta.last_log_id);
        assert_eq!(other.shard().index_open(), IndexOpen::Loaded { added: 0, removed: 0 });
        assert_eq!(other.get_current_snapshot().await.unwrap().map(|s| s.meta), Some(snap.meta.clone()), "kept to send on");

        // Checksums fine, contents not this shard's: 8-d points for a 4-d
        // shard. Refused before the commit; the replica stays as it was
        // and still opens.
        let d3 = tempfile::tempdir().unwrap();
        let e3: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d3.path().join("db")).unwrap());
        let wide = shoal_proto::validate::collection_config(&CollectionConfig { dimension: 8, ..test_config() }).unwrap();
        let mut alien = ShardStateMachine::open(wide, 0, ShardStore::new(e3.clone(), "c", 0), d3.path().join("index")).unwrap();
        let eight = |ids: std::ops::Range<u64>| {
            use prost::Message;
            use shoal_proto::internal::v1::ShardWriteRequest;
            use shoal_proto::v1::PointStruct;
            let upserts = ids.map(|i| PointStruct { id: Some(i.into()), vector: vec![i as f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], payload: None, sparse: Default::default(), vectors: Default::default() }).collect();
            EntryPayload::Normal(super::Command { write: ShardWriteRequest { upserts, ..Default::default() }.encode_to_vec() })
        };
        alien.apply(vec![entry(1, 1, eight(0..50))]).await.unwrap();
        let alien_snap = alien.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let alien_bytes = std::fs::read(d3.path().join("index/0.snapshots/current.snap")).unwrap();
        let data = SnapshotData::open(variant("alien.snap", alien_bytes)).await.unwrap();
        let err = other.install_snapshot(&alien_snap.meta, data).await.expect_err("another collection's snapshot must be refused");
        assert!(err.to_string().contains("do not open"), "{err}");
        assert_eq!((other.generation(), contents(&other)), (1, want.clone()), "untouched");
        drop(other);
        let mut other = open2();
        assert_eq!((other.generation(), contents(&other)), (1, want.clone()), "and it still opens");

        let mut bad_graph = good.clone();
        let last = bad_graph.len() - 1;
        bad_graph[last] ^= 0x01;
        let data = SnapshotData::open(variant("bad-graph.snap", bad_graph)).await.unwrap();
        other.install_snapshot(&snap.meta, data).await.unwrap();
        assert_eq!((other.generation(), contents(&other)), (2, want.clone()));
        assert_eq!(other.shard().index_open(), IndexOpen::Rebuilt, "corrupt graph rebuilt from the points");
        assert_eq!(other.shard().search(&q).unwrap(), sm.shard().search(&q).unwrap());
        assert_eq!(ShardStore::new(e2.clone(), "c", 0).with_generation(1).meta_u64("seq").unwrap(), 0, "generation 1 deleted");
    });
}

/// One write with a request id: upserts of `ids` with payload `{"g": g}`
/// and vector `[v, 1, 2, 3]`, or (with `filter`) a delete of every point
/// whose `g` is `filter`.
fn request(id: u8, ids: std::ops::Range<u64>, g: &str, v: f32, filter: Option<&str>) -> shoal_proto::internal::v1::ShardWriteRequest {
    use shoal_proto::internal::v1::ShardWriteRequest;
    use shoal_proto::v1::{condition, match_condition, Condition, Filter, MatchCondition, PointStruct, Struct};
    let request_id = vec![id; 16];
    if let Some(f) = filter {
        let cond = Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "g".into(), value: Some(match_condition::Value::Keyword(f.into())) })) };
        return ShardWriteRequest { delete_filter: Some(Filter { must: vec![cond], ..Default::default() }), request_id, ..Default::default() };
    }
    let upserts = ids.map(|i| PointStruct { id: Some(i.into()), vector: vec![v, 1.0, 2.0, 3.0], payload: Some(Struct::try_from(&serde_json::json!({ "g": g })).unwrap()), sparse: Default::default(), vectors: Default::default() }).collect();
    ShardWriteRequest { upserts, request_id, ..Default::default() }
}

fn normal(w: shoal_proto::internal::v1::ShardWriteRequest) -> EntryPayload<TypeConfig> {
    use prost::Message;
    EntryPayload::Normal(super::Command { write: w.encode_to_vec() })
}

/// Point 1's vector's first component, if the point exists.
fn first_component(sm: &ShardStateMachine, id: u64) -> Option<f32> {
    let (points, _) = sm.shard().export(&[]).unwrap();
    points.iter().find(|p| p.id == Some(id.into())).map(|p| p.vector[0])
}

/// A write retried with the same request id (a coordinator's retry after
/// a timeout, whose first attempt had committed) applies once: it cannot
/// bring back an older value (a, b, a) or delete a point written since,
/// inside a group-commit entry either; the answer repeats the first
/// apply's; the table survives a restart and travels in snapshots.
#[test]
fn a_retried_request_applies_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = tempfile::tempdir().unwrap();
        let engine = rocks_in(d.path());
        let open = |e: &Arc<dyn KvEngine>| sm_in(e, d.path());
        let mut sm = open(&engine);
        let r = sm
            .apply(vec![
                entry(1, 1, normal(request(1, 1..4, "even", 10.0, None))), // a
                entry(1, 2, normal(request(2, 1..2, "even", 20.0, None))), // b
                entry(1, 3, normal(request(1, 1..4, "even", 10.0, None))), // a again
            ])
            .await
            .unwrap();
        assert_eq!(r[2].affected, 3, "the retry answers as the first apply did");
        assert_eq!(first_component(&sm, 1), Some(20.0), "the retry brought an older value back");

        // A delete by filter, a point written since, the delete retried.
        let r = sm
            .apply(vec![
                entry(1, 4, normal(request(3, 0..0, "", 0.0, Some("even")))),
                entry(1, 5, normal(request(4, 7..8, "even", 70.0, None))),
                entry(1, 6, normal(request(3, 0..0, "", 0.0, Some("even")))),
            ])
            .await
            .unwrap();
        assert_eq!((r[0].affected, r[2].affected), (3, 3));
        assert_eq!(first_component(&sm, 7), Some(70.0), "a retried delete removed a point acknowledged since");

        // In one group-commit entry: the repeat is skipped, the new one not.
        let batch = shoal_proto::internal::v1::ShardWriteRequest { batch: vec![request(5, 8..9, "odd", 80.0, None), request(6, 8..9, "odd", 81.0, None), request(5, 8..9, "odd", 80.0, None)], ..Default::default() };
        let r = sm.apply(vec![entry(1, 7, normal(batch))]).await.unwrap();
        assert_eq!(r[0].parts, vec![(1, None), (1, None), (1, None)]);
        assert_eq!(first_component(&sm, 8), Some(81.0));

        // Without an id a write applies every time (older coordinators).
        let mut plain = request(0, 1..2, "even", 30.0, None);
        plain.request_id.clear();
        sm.apply(vec![entry(1, 8, normal(plain.clone())), entry(1, 9, normal(request(7, 1..2, "even", 40.0, None))), entry(1, 10, normal(plain))]).await.unwrap();
        assert_eq!(first_component(&sm, 1), Some(30.0));
        assert_eq!(sm.shard().requests_held(), 7);
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

        // A restart keeps the table.
        drop(sm);
        let mut again = open(&engine);
        assert_eq!(again.shard().requests_held(), 7);
        again.apply(vec![entry(1, 11, normal(request(2, 1..2, "even", 20.0, None)))]).await.unwrap();
        assert_eq!(first_component(&again, 1), Some(30.0), "after a restart a retry applied again");

        // A replica built from a snapshot holds the same table.
        let d2 = tempfile::tempdir().unwrap();
        let mut other = sm_in(&rocks_in(d2.path()), d2.path());
        other.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(other.shard().requests_held(), 7);
        other.apply(vec![entry(1, 11, normal(request(2, 1..2, "even", 20.0, None)))]).await.unwrap();
        assert_eq!(first_component(&other, 1), Some(30.0), "a replica installed from a snapshot applied a retry again");
        assert_eq!(contents(&other), contents(&again), "replicas agree");
    });
}

/// A quantized shard's snapshot names its graph's kind and calibration
/// (format 6): the receiver loads the shipped int8 graph instead of
/// rebuilding it, writes its vector file from the points, and answers
/// like the sender.
#[test]
fn snapshot_of_a_quantized_shard_ships_its_calibration() {
    use crate::shard::IndexOpen;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = shoal_proto::validate::collection_config(&CollectionConfig { storage: shoal_proto::v1::VectorStorage::Int8 as i32, ..test_config() }).unwrap();
        let d = tempfile::tempdir().unwrap();
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d.path().join("db")).unwrap());
        let mut sm = ShardStateMachine::open(config.clone(), 0, ShardStore::new(engine, "c", 0), d.path().join("index")).unwrap();
        sm.apply(vec![entry(1, 1, write_cmd(0..300, &[]))]).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let bytes = std::fs::read(d.path().join("index/0.snapshots/current.snap")).unwrap();
        assert_eq!(&bytes[..8], super::snapshot::MAGIC, "a quantized graph's snapshot is format 6");
        let (header, _) = super::snapshot::read_header(&mut bytes.as_slice()).unwrap();
        assert!(header.index_kind.starts_with("i8:"), "{:?}", header.index_kind);

        let d2 = tempfile::tempdir().unwrap();
        let e2: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&d2.path().join("db")).unwrap());
        let mut other = ShardStateMachine::open(config, 0, ShardStore::new(e2, "c", 0), d2.path().join("index")).unwrap();
        let p = d2.path().join("q.snap");
        std::fs::write(&p, bytes).unwrap();
        other.install_snapshot(&snap.meta, SnapshotData::open(p).await.unwrap()).await.unwrap();
        assert_eq!(other.shard().index_open(), IndexOpen::Loaded { added: 0, removed: 0 }, "shipped int8 graph loaded as is");
        for v in [[7.0, 1.0, 2.0, 3.0], [250.0, 1.0, 2.0, 3.0]] {
            let q = shoal_proto::v1::SearchPointsRequest { vector: v.to_vec(), top_k: 5, ..Default::default() };
            assert_eq!(other.shard().search(&q).unwrap(), sm.shard().search(&q).unwrap(), "graph search agrees");
            let e = shoal_proto::v1::SearchPointsRequest { exact: true, ..q };
            assert_eq!(other.shard().search(&e).unwrap(), sm.shard().search(&e).unwrap(), "exact scans read the rewritten vector file");
        }
    });
}
