//! Raft log storage for every group on a node, on the node's [`KvEngine`].
//!
//! Each group (a shard replica, or the metadata group) has a key prefix
//! `0xfe ++ u16 BE length ++ group name`. The leading `0xfe` keeps group
//! keys apart from shard records (whose prefix starts with a short name's
//! length, so a byte below `0xfe`) and from node metadata (`0xff 0xff`).
//! Records:
//! - `raft_log` CF: `prefix ++ index u64 BE` -> postcard-encoded entry, so a
//!   group's log is one contiguous, index-ordered key range;
//! - `meta` CF: `prefix ++ "raft/vote"`, `"raft/committed"`,
//!   `"raft/purged"` -> postcard-encoded `Vote` / `LogId`.
//!
//! Durability: `append` and `save_vote` write one batch with the WAL synced
//! before openraft is told the write happened (the `LogFlushed` callback
//! fires after the synced write returns). `purge` records the purged id and
//! deletes the entries in one batch, so a crash never leaves a hole between
//! the purged id and the first entry.
// openraft's trait methods return `StorageError` (224 bytes); helpers return
// the same type so `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Entry, NodeId, TypeConfig};
use crate::storage::{prefix_end, Cf, KvEngine, KvOp};

/// First byte of every Raft group key.
const GROUP_TAG: u8 = 0xfe;
const VOTE: &str = "raft/vote";
const COMMITTED: &str = "raft/committed";
const PURGED: &str = "raft/purged";

type PurgedId = Option<LogId<NodeId>>;
type LastId = Option<LogId<NodeId>>;

/// The log of one Raft group. Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn KvEngine>,
    prefix: Vec<u8>,
    /// Synced appends so far (each is one WAL fsync, however many entries
    /// it carries).
    appends: Arc<std::sync::atomic::AtomicU64>,
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    postcard::to_stdvec(v).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned>(b: &[u8], what: ErrorSubject<NodeId>) -> Result<T, StorageError<NodeId>> {
    postcard::from_bytes(b).map_err(|e| io_err(what, ErrorVerb::Read, e))
}

impl LogStore {
    /// The log of group `group` (for example `"coll/3"` or `"meta"`).
    pub fn new(engine: Arc<dyn KvEngine>, group: &str) -> Self {
        let mut prefix = Vec::with_capacity(group.len() + 3);
        prefix.push(GROUP_TAG);
        prefix.extend_from_slice(&(group.len() as u16).to_be_bytes());
        prefix.extend_from_slice(group.as_bytes());
        LogStore { engine, prefix, appends: Arc::default() }
    }

    /// Synced appends since this store was opened: with concurrent writers
    /// openraft hands several entries to one append, so this grows slower
    /// than the entry count.
    pub fn appends(&self) -> u64 {
        self.appends.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        [&self.prefix[..], &index.to_be_bytes()].concat()
    }

    fn meta_key(&self, name: &str) -> Vec<u8> {
        [&self.prefix[..], name.as_bytes()].concat()
    }

    fn get_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageError<NodeId>> {
        match self.engine.get(Cf::Meta, &self.meta_key(name)).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(b) => decode(&b, ErrorSubject::Store).map(Some),
        }
    }

    fn write(&self, ops: Vec<KvOp>, subject: ErrorSubject<NodeId>) -> Result<(), StorageError<NodeId>> {
        // A synced write blocks on fsync; openraft calls this from the
        // group's task. On a multi-threaded runtime, tell tokio so its other
        // tasks (heartbeats of other groups, requests) move to another
        // worker meanwhile. The write still completes before this returns,
        // so log order and read-your-append hold as before.
        let run = || self.engine.write(ops, true).map_err(|e| io_err(subject, ErrorVerb::Write, e));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            _ => run(),
        }
    }

    /// Log entries with keys in `[from, to)`, stopping before the entry
    /// that would pass `budget` bytes (at least one is returned).
    fn read(&self, from: &[u8], to: &[u8], budget: usize) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let mut out = Vec::new();
        let mut err = None;
        let mut bytes = 0usize;
        self.engine
            .scan(Cf::RaftLog, from, to, &mut |_, v| {
                if !out.is_empty() && bytes.saturating_add(v.len()) > budget {
                    return false;
                }
                bytes += v.len();
                match decode::<Entry>(v, ErrorSubject::Logs) {
                    Ok(e) => {
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The purged log id and the last log id (the purged one when the log
    /// is empty).
    fn log_state(&self) -> Result<(PurgedId, LastId), StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let last = self
            .engine
            .last(Cf::RaftLog, &self.prefix, &prefix_end(&self.prefix))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|(_, v)| decode::<Entry>(&v, ErrorSubject::Logs).map(|e| e.log_id))
            .transpose()?;
        Ok((purged, last.or(purged)))
    }

    /// The id of the last entry in the log (pre-votes compare it).
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.log_state()?.1)
    }

    /// Deletes every record of the group (log and Raft metadata).
    pub fn destroy(&self) -> Result<(), StorageError<NodeId>> {
        let end = prefix_end(&self.prefix);
        let ops = vec![
            KvOp::DeleteRange(Cf::RaftLog, self.prefix.clone(), end.clone()),
            KvOp::Delete(Cf::Meta, self.meta_key(VOTE)),
            KvOp::Delete(Cf::Meta, self.meta_key(COMMITTED)),
            KvOp::Delete(Cf::Meta, self.meta_key(PURGED)),
        ];
        self.write(ops, ErrorSubject::Logs)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) if i == u64::MAX => prefix_end(&self.prefix),
            Bound::Included(&i) => self.entry_key(i + 1),
            Bound::Excluded(&i) => self.entry_key(i),
            Bound::Unbounded => prefix_end(&self.prefix),
        };
        self.read(&self.entry_key(start), &end, usize::MAX)
    }

    /// What replication reads for one AppendEntries call (openraft 0.9
    /// reads through this only): entries from `start` until they pass
    /// `MAX_APPEND_BYTES` (at least one), so a call to a lagging follower
    /// stays under the message limit and within a heartbeat.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read(&self.entry_key(start), &self.entry_key(end), shoal_proto::limits::MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let (purged, last) = self.log_state()?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(vec![KvOp::Put(Cf::Meta, self.meta_key(VOTE), encode(vote)?)], ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let op = match committed {
            Some(c) => KvOp::Put(Cf::Meta, self.meta_key(COMMITTED), encode(&c)?),
            None => KvOp::Delete(Cf::Meta, self.meta_key(COMMITTED)),
        };
        // Not synced: losing it only means re-learning it from the leader.
        self.engine.write(vec![op], false).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.get_meta(COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut ops = Vec::new();
        for e in entries {
            ops.push(KvOp::Put(Cf::RaftLog, self.entry_key(e.log_id.index), encode(&e)?));
        }
        // Synced before openraft hears the entries are durable.
        let res = self.write(ops, ErrorSubject::Logs);
        self.appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        callback.log_io_completed(res.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let op = KvOp::DeleteRange(Cf::RaftLog, self.entry_key(log_id.index), prefix_end(&self.prefix));
        self.write(vec![op], ErrorSubject::Logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let ops = vec![
            KvOp::Put(Cf::Meta, self.meta_key(PURGED), encode(&log_id)?),
            KvOp::DeleteRange(Cf::RaftLog, self.entry_key(0), self.entry_key(log_id.index.saturating_add(1))),
        ];
        self.write(ops, ErrorSubject::Logs)
    }
}
