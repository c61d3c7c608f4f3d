//! Live payload-index changes: a shard re-indexes its points for a new
//! list of payload index specs (a collection's indexes were added or
//! dropped through the cluster map).
//!
//! A change reaches a shard as a control entry of its Raft log
//! (`PayloadIndexesControl`), proposed by the shard's leader when the
//! cluster map's specs differ from its own: every replica switches at the
//! same log position, so writes after it are validated and filtered alike
//! everywhere. The specs a shard's stored entries were built for are a
//! shard metadata record ([`SPECS`]), written with the entries; a shard
//! opens with the specs of its record, and snapshots carry them.
use prost::Message;
use shoal_proto::v1::{CollectionConfig, PayloadIndexSpec};

use super::{Shard, State};
use crate::error::{Result, StorageError};
use crate::filter::PayloadIndex;
use crate::storage::{ShardStore, StoreBatch};

/// Shard metadata record: the payload index specs the stored index entries
/// were built for (a protobuf `CollectionConfig` holding only them).
pub const SPECS: &str = "payload_index_specs";

/// The specs recorded for `store`'s index entries; `None` for a shard
/// written before the record existed (its entries match its config).
pub(super) fn stored_specs(store: &ShardStore) -> Result<Option<Vec<PayloadIndexSpec>>> {
    match store.meta_get(SPECS)? {
        None => Ok(None),
        Some(b) => {
            let c = CollectionConfig::decode(b.as_slice()).map_err(|e| StorageError::Corrupt { what: "payload index specs", detail: e.to_string() })?;
            Ok(Some(c.payload_indexes))
        }
    }
}

pub(super) fn encode_specs(specs: &[PayloadIndexSpec]) -> Vec<u8> {
    CollectionConfig { payload_indexes: specs.to_vec(), ..Default::default() }.encode_to_vec()
}

impl Shard {
    /// The payload index specs this shard indexes now.
    pub fn payload_index_specs(&self) -> Vec<PayloadIndexSpec> {
        self.index_specs.read().clone()
    }

    /// Re-indexes every point for `specs`: builds a new payload and text
    /// index, replaces the stored entries and the record in one synced
    /// batch with `meta` (the Raft applied id), and swaps the index in.
    /// Returns false when `specs` are the current ones (`meta` is written
    /// alone then). Writes wait meanwhile (the writer lock); searches go
    /// on with the old index until the swap.
    pub fn set_payload_indexes(&self, specs: &[PayloadIndexSpec], meta: Vec<(&'static str, Vec<u8>)>) -> Result<bool> {
        if self.index_specs.read().as_slice() == specs {
            if !meta.is_empty() {
                self.put_meta(meta, super::Durability::Deferred)?;
            }
            return Ok(false);
        }
        let _w = self.writer.lock();
        let started = std::time::Instant::now();
        let mut fresh = PayloadIndex::new(specs);
        let text = fresh.has_text();
        let mut put = Vec::new();
        let mut points = 0u64;
        self.store.scan_points(None, &mut |_, p| {
            put.extend(fresh.entries_for(p.payload.as_ref(), p.offset));
            if text {
                fresh.insert_text(p.payload.as_ref(), p.offset);
            }
            points += 1;
            true
        })?;
        let mut old = Vec::new();
        self.store.scan_index(&mut |e| old.push(e))?;
        for e in &put {
            fresh.insert(e);
        }
        let entries = put.len();
        let mut put_meta = meta;
        put_meta.push((SPECS, encode_specs(specs)));
        self.store.write(StoreBatch { delete_index: old, put_index: put, put_meta, ..Default::default() }, true)?;
        {
            let mut st: parking_lot::RwLockWriteGuard<'_, State> = self.state.write();
            st.payload = fresh;
        }
        *self.index_specs.write() = specs.to_vec();
        tracing::info!(collection = %self.collection, shard = self.shard_id, points, entries, ms = started.elapsed().as_millis() as u64, indexes = specs.len(), "payload indexes rebuilt");
        Ok(true)
    }
}
