//! The log store against openraft's own storage test suite, on both KV
//! engines. The suite needs a state machine beside the log; [`TestSm`] is a
//! minimal in-memory one so that the suite exercises the log store.
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, RaftSnapshotBuilder};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use parking_lot::Mutex;

use super::log_store::LogStore;
use super::{Entry, NodeId, Reply, TypeConfig};
use crate::storage::memory::MemoryEngine;
use crate::storage::rocks::RocksEngine;
use crate::storage::KvEngine;

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
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
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
            out.push(Reply { affected: 1 });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(vec![])))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let mut s = self.0.lock();
        s.data = postcard::from_bytes(&bytes).unwrap();
        s.applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let s = self.0.lock();
        Ok(s.snapshot.as_ref().map(|(m, b)| Snapshot { meta: m.clone(), snapshot: Box::new(Cursor::new(b.clone())) }))
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

#[test]
fn openraft_suite_memory_engine() {
    Suite::test_all(Builder { rocks: false }).unwrap();
}

#[test]
fn openraft_suite_rocksdb_engine() {
    Suite::test_all(Builder { rocks: true }).unwrap();
}
