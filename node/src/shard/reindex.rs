//! Live schema changes: a shard re-indexes its points for a new list of
//! payload index specs, and adds or drops named vectors (a collection's
//! indexes or vectors changed through the cluster map).
//!
//! A change reaches a shard as a control entry of its Raft log
//! (`PayloadIndexesControl`, which carries the whole [`Schema`]), proposed
//! by the shard's leader when the cluster map's schema differs from its
//! own: every replica switches at the same log position, so writes after
//! it are validated and filtered alike everywhere. The schema a shard's
//! stored entries and vectors were built for is a shard metadata record
//! ([`SPECS`]), written with them; a shard opens with the schema of its
//! record, and snapshots carry it.
use prost::Message;
use shoal_proto::internal::v1::{CollectionEntry, ShardSchema};
use shoal_proto::v1::{CollectionConfig, NamedVectorConfig, PayloadIndexSpec};

use super::{Shard, State};
use crate::error::{Result, StorageError};
use crate::filter::PayloadIndex;
use crate::storage::{ShardStore, StoreBatch};

/// Shard metadata record: the [`Schema`] the stored index entries and
/// vectors were built for (a protobuf `CollectionConfig` holding only
/// `payload_indexes` and `vectors`).
pub const SPECS: &str = "payload_index_specs";

/// Bytes of stripped points a schema change writes at a time.
const STRIP_BATCH_BYTES: usize = 32 << 20;

/// The parts of a collection's config that change on a live collection,
/// and which change of the cluster map they are (`version`, the map
/// entry's `schema_version`; 0 at creation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub specs: Vec<PayloadIndexSpec>,
    pub vectors: Vec<NamedVectorConfig>,
    pub version: u64,
}

impl Schema {
    /// The schema of a config, as of `version` 0.
    pub fn of(c: &CollectionConfig) -> Self {
        Schema { specs: c.payload_indexes.clone(), vectors: c.vectors.clone(), version: 0 }
    }

    /// The schema a cluster map entry gives its collection now.
    pub fn current(e: &CollectionEntry) -> Option<Self> {
        let c = e.config.as_ref()?;
        Some(Schema { specs: c.payload_indexes.clone(), vectors: c.vectors.clone(), version: e.schema_version })
    }

    /// The schema the collection was created with (an entry older than
    /// the field: its current one).
    pub fn initial(e: &CollectionEntry) -> Option<Self> {
        match &e.initial_schema {
            Some(s) => Some(Schema { specs: s.payload_indexes.clone(), vectors: s.vectors.clone(), version: 0 }),
            None => Self::current(e),
        }
    }

    /// A protobuf `ShardSchema`.
    pub fn encode(&self) -> Vec<u8> {
        ShardSchema { payload_indexes: self.specs.clone(), vectors: self.vectors.clone(), version: self.version }.encode_to_vec()
    }

    /// Decodes a `ShardSchema` (or an older record: a `CollectionConfig`
    /// holding only payload indexes, as version 0).
    pub fn decode(b: &[u8]) -> std::result::Result<Self, prost::DecodeError> {
        ShardSchema::decode(b).map(|s| Schema { specs: s.payload_indexes, vectors: s.vectors, version: s.version })
    }

    /// `c` with this schema.
    pub fn apply_to(&self, c: &CollectionConfig) -> CollectionConfig {
        CollectionConfig { payload_indexes: self.specs.clone(), vectors: self.vectors.clone(), ..c.clone() }
    }

    /// Whether a control entry carrying `self` changes a shard at `current`:
    /// a versioned schema only if newer; an unversioned one (written by a
    /// node from before named vectors) only its payload indexes.
    pub fn successor_of(&self, current: &Schema) -> Option<Schema> {
        if self.version == 0 {
            let next = Schema { specs: self.specs.clone(), ..current.clone() };
            return (next != *current).then_some(next);
        }
        (self.version > current.version).then(|| self.clone())
    }
}

/// The schema recorded for `store`; `None` for a shard written before the
/// record existed (its entries match its config).
pub(super) fn stored_schema(store: &ShardStore) -> Result<Option<Schema>> {
    match store.meta_get(SPECS)? {
        None => Ok(None),
        Some(b) => Ok(Some(Schema::decode(&b).map_err(|e| StorageError::Corrupt { what: "payload index specs", detail: e.to_string() })?)),
    }
}

impl Shard {
    /// The payload index specs this shard indexes now.
    pub fn payload_index_specs(&self) -> Vec<PayloadIndexSpec> {
        self.index_specs.read().clone()
    }

    /// [`Shard::set_schema`] with new payload index specs and the named
    /// vectors unchanged.
    pub fn set_payload_indexes(&self, specs: &[PayloadIndexSpec], meta: Vec<(&'static str, Vec<u8>)>) -> Result<bool> {
        let schema = Schema { specs: specs.to_vec(), ..self.schema() };
        self.set_schema(&schema, meta)
    }

    /// The payload indexes and named vectors this shard has now.
    pub fn schema(&self) -> Schema {
        Schema { specs: self.index_specs.read().clone(), vectors: self.named.read().configs(), version: self.schema_version.load(std::sync::atomic::Ordering::Relaxed) }
    }

    /// Switches the shard to `schema`, with `meta` (the Raft applied id) in
    /// the same synced batch as everything it rewrites:
    /// * new payload specs: builds a new payload and text index and
    ///   replaces the stored entries;
    /// * a dropped named vector (or one declared anew with other settings):
    ///   its values leave every stored point and its graph goes;
    /// * an added one starts empty.
    ///
    /// Returns false when `schema` is the current one (`meta` is written
    /// alone then). Writes wait meanwhile (the writer lock); searches go on
    /// with the old indexes until the swap.
    pub fn set_schema(&self, schema: &Schema, meta: Vec<(&'static str, Vec<u8>)>) -> Result<bool> {
        if self.schema() == *schema {
            if !meta.is_empty() {
                self.put_meta(meta, super::Durability::Deferred)?;
            }
            return Ok(false);
        }
        let _w = self.writer.lock();
        let started = std::time::Instant::now();
        let specs_changed = *self.index_specs.read() != schema.specs;
        let current = self.named.read().configs();
        // Names whose stored values go: dropped, or re-declared otherwise.
        let gone: Vec<String> = current.iter().filter(|c| !schema.vectors.contains(c)).map(|c| c.name.clone()).collect();
        let mut fresh = PayloadIndex::new(&schema.specs);
        let text = fresh.has_text();
        let (mut put, mut old) = (Vec::new(), Vec::new());
        let (mut points, mut stripped) = (0u64, 0u64);
        if specs_changed || !gone.is_empty() {
            // Stripped points go out in batches of about STRIP_BATCH_BYTES,
            // not synced: a crash before the record below replays this
            // entry, and stripping again is a no-op.
            let (mut rewritten, mut bytes) = (Vec::new(), 0usize);
            let mut write_err = None;
            self.store.scan_points(None, &mut |_, mut p| {
                if specs_changed {
                    put.extend(fresh.entries_for(p.payload.as_ref(), p.offset));
                    if text {
                        fresh.insert_text(p.payload.as_ref(), p.offset);
                    }
                }
                if gone.iter().any(|g| p.vectors.contains_key(g)) {
                    p.vectors.retain(|k, _| !gone.contains(k));
                    bytes += prost::Message::encoded_len(&p);
                    rewritten.push(p);
                    stripped += 1;
                    if bytes >= STRIP_BATCH_BYTES {
                        if let Err(e) = self.store.write(StoreBatch { put_points: std::mem::take(&mut rewritten), ..Default::default() }, false) {
                            write_err = Some(e);
                            return false;
                        }
                        bytes = 0;
                    }
                }
                points += 1;
                true
            })?;
            if let Some(e) = write_err {
                return Err(e.into());
            }
            if !rewritten.is_empty() {
                self.store.write(StoreBatch { put_points: rewritten, ..Default::default() }, false)?;
            }
            if specs_changed {
                self.store.scan_index(&mut |e| old.push(e))?;
                for e in &put {
                    fresh.insert(e);
                }
            }
        }
        let entries = put.len();
        let mut put_meta = meta;
        put_meta.push((SPECS, schema.encode()));
        self.store.write(StoreBatch { delete_index: old, put_index: put, put_meta, ..Default::default() }, true)?;
        if specs_changed {
            let mut st: parking_lot::RwLockWriteGuard<'_, State> = self.state.write();
            st.payload = fresh;
            *self.index_specs.write() = schema.specs.clone();
        }
        self.named.write().reshape(&schema.vectors)?;
        self.schema_version.store(schema.version, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(collection = %self.collection, shard = self.shard_id, points, entries, stripped, version = schema.version, ms = started.elapsed().as_millis() as u64, indexes = schema.specs.len(), vectors = schema.vectors.len(), "shard schema changed");
        Ok(true)
    }
}
