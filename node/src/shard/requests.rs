//! Request ids: a write retried by a coordinator applies once.
//!
//! A coordinator stamps every shard write with a random 16-byte id and
//! keeps it across its retries. A retry after a timeout may find the first
//! attempt already committed; applying it again would undo a newer write
//! in between (a reader sees a, b, then a again) or let a retried
//! delete-by-filter remove a point acknowledged since. So the shard keeps
//! the ids of its most recent [`MAX_REQUESTS`] applied writes, each with
//! the log index and the number of points it affected, and applying an id
//! it holds changes nothing and answers what the first apply answered.
//!
//! The table is part of the replicated state: every record is written in
//! the same RocksDB batch as the write's own effects (so a crash cannot
//! keep one without the other), the oldest ids are dropped in log order
//! (the same ones on every replica), it is reloaded at open, and Raft
//! snapshots carry it. Writes rejected by validation are not recorded: a
//! retry is validated again.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::Shard;
use crate::error::Result;
use crate::error::StorageError;

/// Request ids kept per shard (about 40 bytes each on disk, 100 in
/// memory). Changing it changes what replicas de-duplicate: all replicas
/// of a group must run the same value.
pub const MAX_REQUESTS: usize = 50_000;

pub type RequestId = [u8; 16];

/// What the first apply of a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Log index of the entry that applied it (0 outside Raft).
    pub index: u64,
    pub affected: u64,
}

/// The recent request ids of one shard.
#[derive(Debug, Default)]
pub struct RequestTable {
    by_id: HashMap<RequestId, Done>,
    /// (log index, id) in apply order: the oldest go first.
    order: BTreeMap<(u64, RequestId), ()>,
}

impl RequestTable {
    pub fn get(&self, id: &RequestId) -> Option<Done> {
        self.by_id.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The ids to drop so that one more fits.
    fn evictions(&self) -> Vec<RequestId> {
        let over = (self.by_id.len() + 1).saturating_sub(MAX_REQUESTS);
        self.order.keys().take(over).map(|(_, id)| *id).collect()
    }

    fn insert(&mut self, id: RequestId, done: Done) {
        if let Some(old) = self.by_id.insert(id, done) {
            self.order.remove(&(old.index, id));
        }
        self.order.insert((done.index, id), ());
    }

    fn remove(&mut self, id: &RequestId) {
        if let Some(old) = self.by_id.remove(id) {
            self.order.remove(&(old.index, *id));
        }
    }

    /// Every id with what it did, oldest first (snapshots).
    pub fn entries(&self) -> Vec<(RequestId, Done)> {
        self.order.keys().map(|(_, id)| (*id, self.by_id[id])).collect()
    }

    /// A table from stored or shipped records.
    pub fn from_entries(entries: impl IntoIterator<Item = (RequestId, Done)>) -> Self {
        let mut t = RequestTable::default();
        for (id, done) in entries {
            t.insert(id, done);
        }
        t
    }
}

pub(crate) fn encode_done(d: &Done) -> Vec<u8> {
    postcard::to_stdvec(d).expect("two integers encode")
}

pub(crate) fn decode_done(b: &[u8]) -> std::result::Result<Done, StorageError> {
    postcard::from_bytes(b).map_err(|e| StorageError::Corrupt { what: "request id record", detail: e.to_string() })
}

/// A request id as it arrives in a `ShardWriteRequest`: empty (none) or
/// 16 bytes (anything else was refused by validation).
pub fn request_id(bytes: &[u8]) -> Option<RequestId> {
    bytes.try_into().ok()
}

/// The records a write adds to its batch: the new id (once `affected` is
/// known) and the ids it pushes out.
pub(crate) struct Pending {
    pub id: RequestId,
    pub index: u64,
    pub evicted: Vec<RequestId>,
}

impl Shard {
    /// What the first apply of `id` did, if the shard still holds it.
    pub fn request_done(&self, id: &RequestId) -> Option<Done> {
        self.requests.lock().get(id)
    }

    /// Request ids held now.
    pub fn requests_held(&self) -> usize {
        self.requests.lock().len()
    }

    /// Prepares the records of request `id` applied at log `index`
    /// (called under the writer lock).
    pub(crate) fn pending_request(&self, request: Option<(RequestId, u64)>) -> Option<Pending> {
        let (id, index) = request?;
        Some(Pending { id, index, evicted: self.requests.lock().evictions() })
    }

    /// Takes a written request into the table (under the writer lock,
    /// after its batch is durable).
    pub(crate) fn note_request(&self, p: Option<Pending>, affected: u64) {
        if let Some(p) = p {
            let mut t = self.requests.lock();
            for id in &p.evicted {
                t.remove(id);
            }
            t.insert(p.id, Done { index: p.index, affected });
        }
    }

    /// Loads the stored table (at open).
    pub(crate) fn load_requests(store: &crate::storage::ShardStore) -> Result<RequestTable> {
        let mut entries = Vec::new();
        let mut bad = None;
        store.scan_requests(&mut |id, v| match decode_done(v) {
            Ok(d) => {
                entries.push((id, d));
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        })?;
        if let Some(e) = bad {
            return Err(e.into());
        }
        Ok(RequestTable::from_entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_ids_go_first_and_only_past_the_cap() {
        let mut t = RequestTable::default();
        for i in 0..MAX_REQUESTS as u64 {
            assert!(t.evictions().is_empty() || i as usize >= MAX_REQUESTS);
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            t.insert(id, Done { index: 1000 + i, affected: 1 });
        }
        assert_eq!(t.len(), MAX_REQUESTS);
        let out = t.evictions();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][..8], 0u64.to_be_bytes(), "the oldest entry is dropped");
        let round = RequestTable::from_entries(t.entries());
        assert_eq!(round.entries(), t.entries());
    }
}
