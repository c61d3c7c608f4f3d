//! The metadata state machine: the cluster map, driven by the `meta` group.
//!
//! Up to [`META_VOTERS`] nodes vote in the metadata group; every other
//! registered node follows it as a learner, so every node applies the same
//! map and reacts to it (the engine opens and drops the shard replicas the
//! map places on it). Commands are [`MetaCommand`]s, postcard-encoded in
//! the shared [`Command`](super::Command) type.
//!
//! Applying a command is deterministic and bumps the map's epoch when it
//! changes anything. Preconditions (a collection that exists, one that does
//! not) are checked by the leader before it proposes and again here, so a
//! race can only end in a rejected command, never a divergent map.
//!
//! State (applied id, membership and map) is one record in the node's
//! `meta` column family, rewritten on every apply; snapshots are that
//! record.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use shoal_proto::internal::v1::operation::Kind;
use shoal_proto::internal::v1::{ClusterMap, CollectionEntry, NodeEntry, OperationState, SubmitOperationsRequest};
use tokio::sync::watch;

use super::snapshot::SnapshotData;
use super::{Entry, NodeId, Reply, TypeConfig};
use crate::storage::{shard_store, KvEngine};

/// Name of the metadata group.
pub const META_GROUP: &str = "meta";
/// How many nodes vote in the metadata group (the first ones to join).
pub const META_VOTERS: usize = 3;
const STATE_KEY: &str = "meta/state";

type Membership = StoredMembership<NodeId, BasicNode>;

/// A change to the cluster map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node, or updates its address.
    RegisterNode {
        id: u64,
        address: String,
    },
    /// Adds a collection; `entry` is a protobuf `CollectionEntry` whose
    /// `uid` the apply sets to the entry's log index.
    CreateCollection {
        entry: Vec<u8>,
    },
    DeleteCollection {
        name: String,
    },
    /// Records operations (protobuf `SubmitOperationsRequest`); the apply
    /// assigns their ids and marks them pending.
    SubmitOps {
        request: Vec<u8>,
    },
    /// Sets one shard's voting replicas and learners (a step of a move);
    /// `uid` guards against a re-created collection of the same name.
    SetPlacement {
        collection: String,
        uid: u64,
        shard_id: u32,
        replicas: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Ends operation `id`: done, or failed with `error`.
    FinishOp {
        id: u64,
        error: Option<String>,
    },
    /// Sets a collection's replication factor (after its moves).
    SetReplication {
        collection: String,
        uid: u64,
        replication_factor: u32,
    },
    /// Removes a node that holds no replicas.
    RemoveNode {
        id: u64,
    },
    /// First step of a split: places shard `child` (range `[mid, parent's
    /// end]`, the parent's replicas) as `splitting`, not routed.
    /// Operation `op` records the child id and `mid` it chose.
    PrepareSplit {
        op: u64,
        collection: String,
        uid: u64,
        parent: u32,
        child: u32,
        mid: u64,
    },
    /// Last map step of a split: the parent's range ends below the child's,
    /// and the child is routed.
    CommitSplit {
        collection: String,
        uid: u64,
        parent: u32,
        child: u32,
    },
    /// Adds a node or updates it, with the incarnation of its data
    /// directory; a new incarnation counts a rejoin and records the entry's
    /// index as `since` (collections older than that are older than the
    /// node's data). Appended last: older log entries keep decoding.
    Register {
        id: u64,
        address: String,
        incarnation: u64,
    },
    /// Applies alias actions (protobuf `UpdateAliasesRequest`) all or none
    /// ([`super::aliases::apply`]). Appended last.
    UpdateAliases {
        request: Vec<u8>,
    },
    /// Replaces a collection's payload index specs (a protobuf
    /// `CollectionConfig` holding only them); every replica re-indexes
    /// when it sees the change. Appended last.
    SetPayloadIndexes {
        collection: String,
        uid: u64,
        specs: Vec<u8>,
    },
    /// Replaces a collection's named vectors (a protobuf `CollectionConfig`
    /// holding only them); every replica adds and drops them when it sees
    /// the change. Appended last.
    SetVectors {
        collection: String,
        uid: u64,
        vectors: Vec<u8>,
    },
    /// Sets a collection's storage kind and vector memory (raw
    /// `VectorStorage` and `VectorMemory`); each replica rebuilds its graph
    /// in the background. Appended last.
    SetStorage {
        collection: String,
        uid: u64,
        storage: i32,
        memory: i32,
    },
}

impl MetaCommand {
    pub fn encode(&self) -> super::Command {
        super::Command { write: postcard::to_stdvec(self).expect("meta commands always encode") }
    }
}

/// Why the metadata state machine rejected a command.
pub const EXISTS: &str = "exists";
pub const NOT_FOUND: &str = "not found";
pub const IN_USE: &str = "in use";
/// Finished operations kept in the map (the oldest go first).
pub const FINISHED_KEPT: usize = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// protobuf `ClusterMap`
    map: Vec<u8>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

fn name_of(c: &CollectionEntry) -> &str {
    c.config.as_ref().map_or("", |c| c.name.as_str())
}

/// Applies one command to `map`; `Err` is the rejection reason.
fn apply_command(map: &mut ClusterMap, cmd: MetaCommand, index: u64) -> Result<u64, String> {
    match cmd {
        MetaCommand::RegisterNode { id, address } => match map.nodes.iter_mut().find(|n| n.id == id) {
            Some(n) if n.address == address => return Ok(0),
            Some(n) => n.address = address,
            None => map.nodes.push(NodeEntry { id, address, ..Default::default() }),
        },
        MetaCommand::Register { id, address: _, incarnation } => {
            // Incarnation only (the address came through `RegisterNode`),
            // and no new epoch: nodes of older versions skip this command,
            // and their maps must not fall behind in epoch.
            let n = map.nodes.iter_mut().find(|n| n.id == id).ok_or(NOT_FOUND)?;
            if n.incarnation != incarnation {
                if n.incarnation != 0 {
                    // The node came back with an emptied data directory.
                    n.rejoins = n.rejoins.saturating_add(1);
                }
                n.incarnation = incarnation;
                n.since = index;
            }
            return Ok(0);
        }
        MetaCommand::CreateCollection { entry } => {
            let mut entry = CollectionEntry::decode(entry.as_slice()).map_err(|e| format!("undecodable collection: {e}"))?;
            // Checked again here, not only by the leader that proposed it:
            // the name becomes a directory and key prefix on every replica,
            // and an entry from a rogue or buggy leader skips the leader's
            // checks. (The name rules are as old as the log.)
            shoal_proto::validate::collection_name(name_of(&entry)).map_err(|e| format!("invalid collection name: {}", e.message))?;
            if map.collections.iter().any(|c| name_of(c) == name_of(&entry)) || map.aliases.iter().any(|a| a.alias == name_of(&entry)) {
                return Err(EXISTS.into());
            }
            entry.uid = index;
            entry.schema_version = 0;
            entry.initial_schema = entry.config.as_ref().map(|c| shoal_proto::internal::v1::ShardSchema { payload_indexes: c.payload_indexes.clone(), vectors: c.vectors.clone(), version: 0 });
            map.collections.push(entry);
        }
        MetaCommand::DeleteCollection { name } => {
            let before = map.collections.len();
            map.collections.retain(|c| name_of(c) != name);
            if map.collections.len() == before {
                return Err(NOT_FOUND.into());
            }
            // Its aliases go with it: a later collection of the same name
            // is not what they were made for.
            map.aliases.retain(|a| a.collection != name);
        }
        MetaCommand::SubmitOps { request } => {
            let req = SubmitOperationsRequest::decode(request.as_slice()).map_err(|e| format!("undecodable operations: {e}"))?;
            let first = map.next_operation.max(1);
            for mut op in req.operations {
                map.next_operation = map.next_operation.max(1);
                op.id = map.next_operation;
                map.next_operation += 1;
                op.state = OperationState::Pending as i32;
                op.detail.clear();
                op.progress_done = 0;
                op.progress_total = 0;
                op.batch = req.batch.clone();
                op.parallel = req.parallel;
                map.operations.push(op);
            }
            map.epoch += 1;
            // The reply carries the first id; the others follow in order.
            return Ok(first);
        }
        MetaCommand::SetPlacement { collection, uid, shard_id, replicas, learners } => {
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let s = c.shards.iter_mut().find(|s| s.shard_id == shard_id).ok_or(NOT_FOUND)?;
            if s.replicas == replicas && s.learners == learners {
                return Ok(0);
            }
            s.replicas = replicas;
            s.learners = learners;
            s.changes += 1;
        }
        MetaCommand::FinishOp { id, error } => {
            let op = map.operations.iter_mut().find(|o| o.id == id).ok_or(NOT_FOUND)?;
            if op.state != OperationState::Pending as i32 {
                return Ok(0);
            }
            op.state = if error.is_some() { OperationState::Failed } else { OperationState::Done } as i32;
            op.detail = error.unwrap_or_default();
            let finished = map.operations.iter().filter(|o| o.state != OperationState::Pending as i32).count();
            let mut excess = finished.saturating_sub(FINISHED_KEPT);
            map.operations.retain(|o| {
                let drop = excess > 0 && o.state != OperationState::Pending as i32;
                excess -= drop as usize;
                !drop
            });
        }
        MetaCommand::SetReplication { collection, uid, replication_factor } => {
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let config = c.config.as_mut().ok_or(NOT_FOUND)?;
            if config.replication_factor == replication_factor {
                return Ok(0);
            }
            config.replication_factor = replication_factor;
        }
        MetaCommand::RemoveNode { id } => {
            if !map.nodes.iter().any(|n| n.id == id) {
                return Err(NOT_FOUND.into());
            }
            if map.collections.iter().flat_map(|c| &c.shards).any(|s| s.replicas.contains(&id) || s.learners.contains(&id)) {
                return Err(IN_USE.into());
            }
            map.nodes.retain(|n| n.id != id);
        }
        MetaCommand::PrepareSplit { op, collection, uid, parent, child, mid } => {
            let c = map.collections.iter().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            if let Some(s) = c.shards.iter().find(|s| s.shard_id == child) {
                return if s.splitting && s.split_from == parent && s.range_start == mid { Ok(0) } else { Err(EXISTS.into()) };
            }
            // One split of a shard at a time, and an operation keeps the
            // child it chose (a new driver must not place a second one).
            if let Some(s) = c.shards.iter().find(|s| s.splitting && s.split_from == parent) {
                return Err(format!("shard {parent} is already being split into shard {}", s.shard_id));
            }
            let recorded = map.operations.iter().find(|o| o.id == op).and_then(|o| match &o.kind {
                Some(Kind::Split(s)) if s.child_shard_id != 0 => Some(s.child_shard_id),
                _ => None,
            });
            if let Some(r) = recorded.filter(|r| *r != child) {
                return Err(format!("operation {op} already split shard {parent} into shard {r}"));
            }
            let p = c.shards.iter().find(|s| s.shard_id == parent).ok_or(NOT_FOUND)?;
            if p.splitting || mid <= p.range_start || mid > p.range_end {
                return Err(format!("cannot split shard {parent} (range {:#x}..={:#x}) at {mid:#x}", p.range_start, p.range_end));
            }
            let placed = shoal_proto::internal::v1::ShardPlacement {
                shard_id: child,
                range_start: mid,
                range_end: p.range_end,
                replicas: p.replicas.clone(),
                learners: vec![],
                // Never initialised from empty: created from the parent's
                // log, or caught up from the child's leader.
                changes: 1,
                splitting: true,
                split_from: parent,
                split_child: true,
            };
            if let Some(Kind::Split(s)) = map.operations.iter_mut().find(|o| o.id == op).and_then(|o| o.kind.as_mut()) {
                s.child_shard_id = child;
                s.mid = mid;
            }
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            c.shards.push(placed);
        }
        MetaCommand::UpdateAliases { request } => {
            let req = shoal_proto::v1::UpdateAliasesRequest::decode(request.as_slice()).map_err(|e| format!("undecodable alias update: {e}"))?;
            super::aliases::apply(map, &req)?;
        }
        MetaCommand::SetPayloadIndexes { collection, uid, specs } => {
            let specs = shoal_proto::v1::CollectionConfig::decode(specs.as_slice()).map_err(|e| format!("undecodable payload index specs: {e}"))?.payload_indexes;
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let config = c.config.as_ref().ok_or(NOT_FOUND)?;
            if specs == config.payload_indexes {
                return Ok(0);
            }
            let changed = shoal_proto::v1::CollectionConfig { payload_indexes: specs, ..config.clone() };
            shoal_proto::validate::collection_config(&changed).map_err(|e| e.to_string())?;
            c.config = Some(changed);
            c.schema_version = index;
        }
        MetaCommand::SetVectors { collection, uid, vectors } => {
            let vectors = shoal_proto::v1::CollectionConfig::decode(vectors.as_slice()).map_err(|e| format!("undecodable named vectors: {e}"))?.vectors;
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let config = c.config.as_ref().ok_or(NOT_FOUND)?;
            if vectors == config.vectors {
                return Ok(0);
            }
            let changed = shoal_proto::validate::collection_config(&shoal_proto::v1::CollectionConfig { vectors, ..config.clone() }).map_err(|e| e.to_string())?;
            c.config = Some(changed);
            c.schema_version = index;
        }
        MetaCommand::SetStorage { collection, uid, storage, memory } => {
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let config = c.config.as_ref().ok_or(NOT_FOUND)?;
            if config.storage == storage && config.memory == memory {
                return Ok(0);
            }
            let changed = shoal_proto::validate::collection_config(&shoal_proto::v1::CollectionConfig { storage, memory, ..config.clone() }).map_err(|e| e.to_string())?;
            c.config = Some(changed);
        }
        MetaCommand::CommitSplit { collection, uid, parent, child } => {
            let c = map.collections.iter_mut().find(|c| name_of(c) == collection && c.uid == uid).ok_or(NOT_FOUND)?;
            let s = c.shards.iter().find(|s| s.shard_id == child).ok_or(NOT_FOUND)?;
            if !s.splitting {
                return Ok(0);
            }
            let mid = s.range_start;
            let p = c.shards.iter_mut().find(|s| s.shard_id == parent).ok_or(NOT_FOUND)?;
            p.range_end = mid - 1;
            let s = c.shards.iter_mut().find(|s| s.shard_id == child).ok_or(NOT_FOUND)?;
            // `split_from` stays: readers use it to tell a parent replica
            // that has not applied the split yet.
            s.splitting = false;
            let n = c.shards.iter().filter(|s| !s.splitting).count() as u32;
            if let Some(config) = c.config.as_mut() {
                config.shard_count = n;
            }
        }
    }
    map.epoch += 1;
    Ok(1)
}

struct Inner {
    kv: Arc<dyn KvEngine>,
    state: Mutex<State>,
    tx: watch::Sender<ClusterMap>,
}

/// The metadata group's state machine. Clones share state.
#[derive(Clone)]
pub struct MetaStateMachine {
    inner: Arc<Inner>,
}

impl MetaStateMachine {
    /// Loads the applied state from the node's storage.
    pub fn open(kv: Arc<dyn KvEngine>) -> Result<Self, crate::error::NodeError> {
        let state: State = match shard_store::node_meta_get(&*kv, STATE_KEY)? {
            Some(b) => postcard::from_bytes(&b).map_err(|e| crate::error::StorageError::Corrupt { what: "metadata state", detail: e.to_string() })?,
            None => State::default(),
        };
        let map = ClusterMap::decode(state.map.as_slice()).map_err(|e| crate::error::StorageError::Corrupt { what: "cluster map", detail: e.to_string() })?;
        let (tx, _) = watch::channel(map);
        Ok(MetaStateMachine { inner: Arc::new(Inner { kv, state: Mutex::new(state), tx }) })
    }

    /// The current map.
    pub fn map(&self) -> ClusterMap {
        self.inner.tx.borrow().clone()
    }

    /// Runs `f` on the current map without copying it (hot paths).
    pub fn with_map<T>(&self, f: impl FnOnce(&ClusterMap) -> T) -> T {
        f(&self.inner.tx.borrow())
    }

    /// Notified on every applied change of the map.
    pub fn subscribe(&self) -> watch::Receiver<ClusterMap> {
        self.inner.tx.subscribe()
    }

    fn save(&self, state: &State) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_stdvec(state).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        shard_store::node_meta_put(&*self.inner.kv, STATE_KEY, bytes).map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    fn publish(&self, map: ClusterMap) {
        self.inner.tx.send_if_modified(|m| {
            let changed = *m != map;
            *m = map;
            changed
        });
    }

    fn snapshot_of(state: &State) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = postcard::to_stdvec(state).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let id = format!("meta-{}", state.applied.map_or("none".into(), |l| l.to_string()));
        let meta = SnapshotMeta { last_log_id: state.applied, last_membership: state.membership.clone(), snapshot_id: id };
        Ok(Snapshot { meta, snapshot: SnapshotData::memory(bytes) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        crate::metrics::SNAPSHOT_BUILDS.with_label_values(&["meta"]).inc();
        Self::snapshot_of(&self.inner.state.lock())
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let s = self.inner.state.lock();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.inner.state.lock().clone();
        let mut map = ClusterMap::decode(state.map.as_slice()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let mut replies = Vec::new();
        for e in entries {
            state.applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Normal(cmd) => match postcard::from_bytes::<MetaCommand>(&cmd.write) {
                    Ok(cmd) => match apply_command(&mut map, cmd, e.log_id.index) {
                        Ok(affected) => Reply { affected, error: None, parts: vec![] },
                        Err(why) => Reply { affected: 0, error: Some(why), parts: vec![] },
                    },
                    Err(err) => Reply { affected: 0, error: Some(format!("undecodable metadata command: {err}")), parts: vec![] },
                },
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(e.log_id), m);
                    Reply::default()
                }
                EntryPayload::Blank => Reply::default(),
            };
            replies.push(reply);
        }
        state.map = map.encode_to_vec();
        self.save(&state)?;
        *self.inner.state.lock() = state;
        self.publish(map);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        Ok(SnapshotData::memory(Vec::new()))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, snapshot: Box<SnapshotData>) -> Result<(), StorageError<NodeId>> {
        let bad = |e: &dyn std::fmt::Display| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string())));
        let bytes = snapshot.into_bytes().await.map_err(|e| bad(&e))?;
        crate::metrics::SNAPSHOT_INSTALLS.with_label_values(&["meta"]).inc();
        crate::metrics::SNAPSHOT_INSTALL_BYTES.with_label_values(&["meta"]).inc_by(bytes.len() as u64);
        let mut state: State = postcard::from_bytes(&bytes).map_err(|e| bad(&e))?;
        let map = ClusterMap::decode(state.map.as_slice()).map_err(|e| bad(&e))?;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.save(&state)?;
        *self.inner.state.lock() = state;
        self.publish(map);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let s = self.inner.state.lock();
        if s.applied.is_none() {
            return Ok(None);
        }
        Self::snapshot_of(&s).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::v1::CollectionConfig;

    fn entry(name: &str) -> Vec<u8> {
        CollectionEntry { config: Some(CollectionConfig { name: name.into(), ..Default::default() }), ..Default::default() }.encode_to_vec()
    }

    /// A schema change records its log index as the collection's schema
    /// version; the creation schema stays for replicas that start empty.
    #[test]
    fn schema_changes_are_versioned_by_log_index() {
        use shoal_proto::v1::{Metric, NamedVectorConfig};
        let mut m = ClusterMap::default();
        let v = |name: &str, dim| NamedVectorConfig { name: name.into(), dimension: dim, metric: Metric::Dot as i32, ..Default::default() };
        let cfg = shoal_proto::validate::collection_config(&CollectionConfig { name: "c".into(), dimension: 2, metric: Metric::Cosine as i32, vectors: vec![v("a", 3)], ..Default::default() }).unwrap();
        let e = CollectionEntry { config: Some(cfg.clone()), ..Default::default() };
        apply_command(&mut m, MetaCommand::CreateCollection { entry: e.encode_to_vec() }, 5).unwrap();
        assert_eq!(m.collections[0].schema_version, 0);
        let initial = m.collections[0].initial_schema.clone().expect("recorded at creation");
        assert_eq!(initial.vectors, cfg.vectors);
        let change = |vs: Vec<NamedVectorConfig>| MetaCommand::SetVectors { collection: "c".into(), uid: 5, vectors: CollectionConfig { vectors: vs, ..Default::default() }.encode_to_vec() };
        let b = shoal_proto::validate::named_vector_config("b", &v("b", 4)).unwrap();
        assert_eq!(apply_command(&mut m, change(vec![b.clone()]), 9), Ok(1));
        assert_eq!(m.collections[0].schema_version, 9);
        assert_eq!(m.collections[0].config.as_ref().unwrap().vectors, vec![b.clone()]);
        assert_eq!(m.collections[0].initial_schema, Some(initial), "the creation schema stays");
        assert_eq!(apply_command(&mut m, change(vec![b]), 12), Ok(0), "the same vectors change nothing");
        assert_eq!(m.collections[0].schema_version, 9);
        // Invalid at apply (a dimension out of range): refused everywhere.
        assert!(apply_command(&mut m, change(vec![v("x", 0)]), 13).is_err());
        assert_eq!(m.collections[0].schema_version, 9);
    }

    #[test]
    fn commands_change_the_map_and_its_epoch_deterministically() {
        let mut m = ClusterMap::default();
        assert_eq!(apply_command(&mut m, MetaCommand::RegisterNode { id: 1, address: "a:1".into() }, 1), Ok(1));
        assert_eq!(apply_command(&mut m, MetaCommand::RegisterNode { id: 1, address: "a:1".into() }, 2), Ok(0), "re-registering is a no-op");
        assert_eq!(m.epoch, 1);
        assert_eq!(apply_command(&mut m, MetaCommand::RegisterNode { id: 1, address: "b:1".into() }, 3), Ok(1));
        assert_eq!(m.nodes, vec![NodeEntry { id: 1, address: "b:1".into(), ..Default::default() }]);
        assert_eq!(apply_command(&mut m, MetaCommand::CreateCollection { entry: entry("c") }, 7), Ok(1));
        assert_eq!(m.collections[0].uid, 7, "uid is the creating log index");
        assert_eq!(apply_command(&mut m, MetaCommand::CreateCollection { entry: entry("c") }, 8), Err(EXISTS.into()));
        // A name that would leave the data directory, from a leader that
        // skipped its checks: refused at apply on every replica.
        let epoch = m.epoch;
        for bad in ["../../etc", "a/b", ""] {
            let r = apply_command(&mut m, MetaCommand::CreateCollection { entry: entry(bad) }, 8);
            assert!(r.as_ref().is_err_and(|e| e.contains("invalid collection name")), "{bad:?}: {r:?}");
        }
        assert_eq!((m.epoch, m.collections.len()), (epoch, 1), "refused entries change nothing");
        assert_eq!(apply_command(&mut m, MetaCommand::DeleteCollection { name: "c".into() }, 9), Ok(1));
        assert_eq!(apply_command(&mut m, MetaCommand::DeleteCollection { name: "c".into() }, 10), Err(NOT_FOUND.into()));
        assert_eq!(m.epoch, 4);
        assert!(m.collections.is_empty());
    }

    #[test]
    fn a_new_incarnation_counts_a_rejoin_and_moves_since() {
        let mut m = ClusterMap::default();
        let reg = |incarnation| MetaCommand::Register { id: 1, address: "a:1".into(), incarnation };
        assert_eq!(apply_command(&mut m, reg(7), 1), Err(NOT_FOUND.into()), "registered through RegisterNode first");
        apply_command(&mut m, MetaCommand::RegisterNode { id: 1, address: "a:1".into() }, 2).unwrap();
        let epoch = m.epoch;
        assert_eq!(apply_command(&mut m, reg(7), 3), Ok(0));
        assert_eq!((m.nodes[0].incarnation, m.nodes[0].since, m.nodes[0].rejoins), (7, 3, 0));
        assert_eq!(apply_command(&mut m, reg(7), 5), Ok(0), "the same incarnation again is a no-op");
        assert_eq!((m.nodes[0].incarnation, m.nodes[0].since), (7, 3));
        assert_eq!(apply_command(&mut m, reg(9), 8), Ok(0));
        assert_eq!((m.nodes[0].incarnation, m.nodes[0].since, m.nodes[0].rejoins), (9, 8, 1), "a lost disk is counted");
        assert_eq!(m.epoch, epoch, "incarnations move no epoch (older versions skip them)");
        // A node registered before incarnations existed gets one without a
        // rejoin being counted.
        apply_command(&mut m, MetaCommand::RegisterNode { id: 2, address: "b:1".into() }, 9).unwrap();
        apply_command(&mut m, MetaCommand::Register { id: 2, address: "b:1".into(), incarnation: 4 }, 10).unwrap();
        assert_eq!((m.nodes[1].incarnation, m.nodes[1].since, m.nodes[1].rejoins), (4, 10, 0));
        // Entries written before `Register` existed still decode (variant
        // 0, id 1, address "x"), and the new variant takes the next tag.
        assert_eq!(postcard::from_bytes::<MetaCommand>(&[0, 1, 1, b'x']).unwrap(), MetaCommand::RegisterNode { id: 1, address: "x".into() });
        assert_eq!(postcard::to_stdvec(&MetaCommand::Register { id: 1, address: "x".into(), incarnation: 2 }).unwrap(), vec![10, 1, 1, b'x', 2]);
    }

    #[test]
    fn operations_and_placements_apply_deterministically() {
        use shoal_proto::internal::v1::{Operation, ShardPlacement};
        let mut m = ClusterMap::default();
        apply_command(&mut m, MetaCommand::RegisterNode { id: 1, address: "a:1".into() }, 1).unwrap();
        apply_command(&mut m, MetaCommand::RegisterNode { id: 2, address: "b:1".into() }, 2).unwrap();
        let e = CollectionEntry {
            config: Some(shoal_proto::v1::CollectionConfig { name: "c".into(), ..Default::default() }),
            shards: vec![ShardPlacement { replicas: vec![1], ..Default::default() }],
            uid: 0,
            ..Default::default()
        };
        apply_command(&mut m, MetaCommand::CreateCollection { entry: e.encode_to_vec() }, 3).unwrap();
        let req = SubmitOperationsRequest { operations: vec![Operation::default(), Operation::default()], batch: "b".into(), parallel: 2 };
        assert_eq!(apply_command(&mut m, MetaCommand::SubmitOps { request: req.encode_to_vec() }, 4), Ok(1), "the reply is the first id");
        assert_eq!(apply_command(&mut m, MetaCommand::SubmitOps { request: req.encode_to_vec() }, 5), Ok(3));
        assert!(m.operations.iter().all(|o| o.state == OperationState::Pending as i32 && o.batch == "b" && o.parallel == 2));
        // Placement changes count, and a stale uid is refused.
        let place = |uid, replicas: Vec<u64>, learners: Vec<u64>| MetaCommand::SetPlacement { collection: "c".into(), uid, shard_id: 0, replicas, learners };
        assert_eq!(apply_command(&mut m, place(3, vec![1], vec![2]), 6), Ok(1));
        assert_eq!(apply_command(&mut m, place(3, vec![1], vec![2]), 7), Ok(0), "the same placement again is a no-op");
        assert_eq!(apply_command(&mut m, place(99, vec![2], vec![]), 8), Err(NOT_FOUND.into()));
        assert_eq!(m.collections[0].shards[0].changes, 1);
        assert_eq!(apply_command(&mut m, MetaCommand::RemoveNode { id: 2 }, 9), Err(IN_USE.into()), "a learner's node stays");
        apply_command(&mut m, place(3, vec![1], vec![]), 10).unwrap();
        assert_eq!(apply_command(&mut m, MetaCommand::RemoveNode { id: 2 }, 11), Ok(1));
        assert_eq!(m.nodes.len(), 1);
        // Finishing twice changes nothing; old finished ones are pruned.
        assert_eq!(apply_command(&mut m, MetaCommand::FinishOp { id: 1, error: Some("no".into()) }, 12), Ok(1));
        assert_eq!(apply_command(&mut m, MetaCommand::FinishOp { id: 1, error: None }, 13), Ok(0));
        assert_eq!(m.operations[0].state, OperationState::Failed as i32);
        let many = SubmitOperationsRequest { operations: vec![Operation::default(); FINISHED_KEPT + 5], batch: String::new(), ..Default::default() };
        let first = apply_command(&mut m, MetaCommand::SubmitOps { request: many.encode_to_vec() }, 14).unwrap();
        for id in first..first + FINISHED_KEPT as u64 + 5 {
            apply_command(&mut m, MetaCommand::FinishOp { id, error: None }, 15).unwrap();
        }
        let finished = m.operations.iter().filter(|o| o.state != OperationState::Pending as i32).count();
        assert_eq!(finished, FINISHED_KEPT);
        assert_eq!(m.operations.iter().filter(|o| o.state == OperationState::Pending as i32).map(|o| o.id).collect::<Vec<_>>(), vec![2, 3, 4], "pending ones stay");
    }

    /// openraft's own storage suite, metadata state machine paired with the
    /// log store.
    #[test]
    fn meta_state_machine_passes_openraft_suite() {
        use crate::raft::log_store::LogStore;
        use crate::storage::memory::MemoryEngine;
        struct Builder;
        impl openraft::testing::StoreBuilder<TypeConfig, LogStore, MetaStateMachine, ()> for Builder {
            async fn build(&self) -> Result<((), LogStore, MetaStateMachine), StorageError<NodeId>> {
                let kv: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
                let sm = MetaStateMachine::open(kv.clone()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                Ok(((), LogStore::new(kv, META_GROUP), sm))
            }
        }
        openraft::testing::Suite::test_all(Builder).unwrap();
    }

    #[test]
    fn splits_place_then_route_the_child() {
        use shoal_proto::internal::v1::{Operation, ShardPlacement, SplitShard};
        let mut m = ClusterMap::default();
        let e = CollectionEntry {
            config: Some(shoal_proto::v1::CollectionConfig { name: "c".into(), shard_count: 1, ..Default::default() }),
            shards: vec![ShardPlacement { shard_id: 0, range_start: 0, range_end: u64::MAX, replicas: vec![1, 2], ..Default::default() }],
            uid: 0,
            ..Default::default()
        };
        apply_command(&mut m, MetaCommand::CreateCollection { entry: e.encode_to_vec() }, 3).unwrap();
        let op = Operation { kind: Some(Kind::Split(SplitShard { collection: "c".into(), shard_id: 0, ..Default::default() })), ..Default::default() };
        apply_command(&mut m, MetaCommand::SubmitOps { request: SubmitOperationsRequest { operations: vec![op], batch: String::new(), ..Default::default() }.encode_to_vec() }, 4).unwrap();
        let prepare = |mid| MetaCommand::PrepareSplit { op: 1, collection: "c".into(), uid: 3, parent: 0, child: 1, mid };
        assert!(apply_command(&mut m, prepare(0), 5).unwrap_err().contains("cannot split"), "mid at the range start");
        let epoch = m.epoch;
        assert_eq!(apply_command(&mut m, prepare(1 << 63), 6), Ok(1));
        assert_eq!(apply_command(&mut m, prepare(1 << 63), 7), Ok(0), "retried by a new driver");
        assert_eq!(apply_command(&mut m, prepare(1 << 62), 8), Err(EXISTS.into()), "the child id is taken");
        // A second driver (after a failover) cannot place a second child.
        let other = MetaCommand::PrepareSplit { op: 1, collection: "c".into(), uid: 3, parent: 0, child: 2, mid: 1 << 63 };
        assert!(apply_command(&mut m, other, 8).unwrap_err().contains("already being split into shard 1"));
        assert_eq!(m.epoch, epoch + 1);
        let Some(Kind::Split(sp)) = &m.operations[0].kind else { panic!() };
        assert_eq!((sp.child_shard_id, sp.mid), (1, 1 << 63), "the operation records its choice");
        let child = &m.collections[0].shards[1];
        assert!(child.splitting && child.split_child && child.split_from == 0 && child.changes == 1);
        assert_eq!((child.range_start, child.range_end, child.replicas.clone()), (1 << 63, u64::MAX, vec![1, 2]));
        assert_eq!(m.collections[0].shards[0].range_end, u64::MAX, "the parent keeps its range until the commit");
        let commit = MetaCommand::CommitSplit { collection: "c".into(), uid: 3, parent: 0, child: 1 };
        assert_eq!(apply_command(&mut m, commit.clone(), 9), Ok(1));
        assert_eq!(apply_command(&mut m, commit, 10), Ok(0));
        let c = &m.collections[0];
        assert_eq!((c.shards[0].range_end, c.shards[1].splitting, c.config.as_ref().unwrap().shard_count), ((1 << 63) - 1, false, 2));
    }
}
