//! Shard-scoped records over a [`KvEngine`]: points, payload index entries
//! and shard metadata, all under the shard's key prefix.
use std::sync::Arc;

use shoal_proto::v1::{PointId, Struct};
use shoal_proto::PointKey;

use super::{prefix_end, Cf, KvEngine, KvOp};
use crate::error::StorageError;

/// A point as stored in the `points` column family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredPoint {
    #[prost(message, optional, tag = "1")]
    pub id: Option<PointId>,
    /// Original f32 vector (normalised for cosine collections).
    #[prost(float, repeated, tag = "2")]
    pub vector: Vec<f32>,
    #[prost(message, optional, tag = "3")]
    pub payload: Option<Struct>,
    /// Internal id of this version of the point in the vector and payload
    /// indexes. Every upsert gets a fresh offset, so an index file saved at
    /// any time can be reconciled with storage exactly (see `shard.rs`).
    #[prost(uint32, tag = "4")]
    pub offset: u32,
    /// Named sparse vectors (absent in points written before they existed).
    #[prost(btree_map = "string, message", tag = "5")]
    pub sparse: std::collections::BTreeMap<String, shoal_proto::v1::SparseVector>,
    /// Named dense vectors and multi-vectors (cosine ones normalised).
    #[prost(btree_map = "string, message", tag = "6")]
    pub vectors: std::collections::BTreeMap<String, shoal_proto::v1::NamedVector>,
}

/// A value in a payload index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    Keyword(String),
    Number(f64),
    Bool(bool),
}

/// One payload index entry: point version `offset` has `value` in `field`.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub field: String,
    pub value: IndexValue,
    pub offset: u32,
}

const TAG_KEYWORD: u8 = 1;
const TAG_NUMBER: u8 = 2;
const TAG_BOOL: u8 = 3;

/// Order-preserving encoding of an f64 (total order, -0.0 == 0.0 folded).
fn f64_key(x: f64) -> [u8; 8] {
    let x = if x == 0.0 { 0.0 } else { x };
    let b = x.to_bits();
    let o = if b >> 63 == 1 { !b } else { b | (1 << 63) };
    o.to_be_bytes()
}

fn f64_from_key(k: [u8; 8]) -> f64 {
    let o = u64::from_be_bytes(k);
    let b = if o >> 63 == 1 { o & !(1 << 63) } else { !o };
    f64::from_bits(b)
}

impl IndexEntry {
    pub(crate) fn encode(&self, prefix: &[u8]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(self.field.as_bytes());
        k.push(0);
        match &self.value {
            IndexValue::Keyword(s) => {
                k.push(TAG_KEYWORD);
                k.extend_from_slice(s.as_bytes());
            }
            IndexValue::Number(x) => {
                k.push(TAG_NUMBER);
                k.extend_from_slice(&f64_key(*x));
            }
            IndexValue::Bool(b) => {
                k.push(TAG_BOOL);
                k.push(*b as u8);
            }
        }
        k.extend_from_slice(&self.offset.to_be_bytes());
        k
    }

    pub(crate) fn decode(rest: &[u8]) -> Result<Self, StorageError> {
        let bad = || StorageError::Corrupt { what: "payload index key", detail: format!("{rest:?}") };
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
        if rest.len() < nul + 2 + 4 {
            return Err(bad());
        }
        let field = String::from_utf8(rest[..nul].to_vec()).map_err(|_| bad())?;
        let (body, off) = rest[nul + 2..].split_at(rest.len() - nul - 2 - 4);
        let offset = u32::from_be_bytes(off.try_into().unwrap());
        let value = match rest[nul + 1] {
            TAG_KEYWORD => IndexValue::Keyword(String::from_utf8(body.to_vec()).map_err(|_| bad())?),
            TAG_NUMBER => IndexValue::Number(f64_from_key(body.try_into().map_err(|_| bad())?)),
            TAG_BOOL if body.len() == 1 => IndexValue::Bool(body[0] == 1),
            _ => return Err(bad()),
        };
        Ok(IndexEntry { field, value, offset })
    }
}

/// An atomic group of shard writes.
#[derive(Debug, Default)]
pub struct StoreBatch {
    pub put_points: Vec<StoredPoint>,
    pub delete_points: Vec<PointKey>,
    pub put_index: Vec<IndexEntry>,
    pub delete_index: Vec<IndexEntry>,
    pub put_meta: Vec<(&'static str, Vec<u8>)>,
    /// Request-id records (`crate::shard::requests`): id -> encoded result.
    pub put_requests: Vec<([u8; 16], Vec<u8>)>,
    pub delete_requests: Vec<[u8; 16]>,
    /// The write journal record of the write sequence this batch makes
    /// (`crate::shard::keyfile`): sequence -> encoded changes.
    pub put_journal: Option<(u64, Vec<u8>)>,
}

const REQUEST_TAG: &[u8] = b"rq/";
/// Write journal records live in the meta column family under
/// `prefix ++ "jn/" ++ sequence (u64 BE)`, in sequence order.
const JOURNAL_TAG: &[u8] = b"jn/";

/// Handle to one shard's records.
#[derive(Clone)]
pub struct ShardStore {
    engine: Arc<dyn KvEngine>,
    prefix: Vec<u8>,
}

/// Node-level metadata keys live under this prefix, which no shard prefix
/// can start with (shard prefixes start with a u16 length < 0xff00).
const NODE_PREFIX: &[u8] = b"\xff\xffnode/";

pub fn node_meta_get(engine: &dyn KvEngine, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
    engine.get(Cf::Meta, &[NODE_PREFIX, name.as_bytes()].concat())
}

pub fn node_meta_put(engine: &dyn KvEngine, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
    engine.write(vec![KvOp::Put(Cf::Meta, [NODE_PREFIX, name.as_bytes()].concat(), value)], true)
}

/// Names of the node-level metadata keys starting with `prefix`.
pub fn node_meta_names(engine: &dyn KvEngine, prefix: &str) -> Result<Vec<String>, StorageError> {
    let start = [NODE_PREFIX, prefix.as_bytes()].concat();
    let end = super::prefix_end(&start);
    let mut out = vec![];
    engine.scan(Cf::Meta, &start, &end, &mut |k, _| {
        if let Ok(name) = std::str::from_utf8(&k[NODE_PREFIX.len()..]) {
            out.push(name.to_string());
        }
        true
    })?;
    Ok(out)
}

pub fn node_meta_delete(engine: &dyn KvEngine, name: &str) -> Result<(), StorageError> {
    engine.write(vec![KvOp::Delete(Cf::Meta, [NODE_PREFIX, name.as_bytes()].concat())], true)
}

impl ShardStore {
    pub fn new(engine: Arc<dyn KvEngine>, collection: &str, shard: u32) -> Self {
        let mut prefix = Vec::with_capacity(collection.len() + 6);
        prefix.extend_from_slice(&(collection.len() as u16).to_be_bytes());
        prefix.extend_from_slice(collection.as_bytes());
        prefix.extend_from_slice(&shard.to_be_bytes());
        ShardStore { engine, prefix }
    }

    /// The engine this store writes to.
    pub fn engine(&self) -> Arc<dyn KvEngine> {
        self.engine.clone()
    }

    /// The same shard's records in storage generation `generation`: 0 is
    /// this store; generation g > 0 lives under the collection name
    /// `name ++ 0x00 ++ g` (collection names cannot hold NUL), so a Raft
    /// snapshot can be staged beside the live records and swapped in by
    /// flipping one pointer (see `raft::state_machine`).
    pub fn with_generation(&self, generation: u64) -> ShardStore {
        if generation == 0 {
            return self.clone();
        }
        let len = u16::from_be_bytes([self.prefix[0], self.prefix[1]]) as usize;
        let (name, shard) = (&self.prefix[2..2 + len], &self.prefix[2 + len..]);
        let staged = [name, b"\0", generation.to_string().as_bytes()].concat();
        let mut prefix = Vec::with_capacity(staged.len() + 6);
        prefix.extend_from_slice(&(staged.len() as u16).to_be_bytes());
        prefix.extend_from_slice(&staged);
        prefix.extend_from_slice(shard);
        ShardStore { engine: self.engine.clone(), prefix }
    }

    fn key(&self, rest: &[u8]) -> Vec<u8> {
        [&self.prefix[..], rest].concat()
    }

    pub fn get(&self, id: &PointKey) -> Result<Option<StoredPoint>, StorageError> {
        match self.engine.get(Cf::Points, &self.key(&id.to_bytes()))? {
            None => Ok(None),
            Some(b) => decode_point(&b).map(Some),
        }
    }

    /// Visits points in id order starting at `from` (inclusive) until `visit`
    /// returns false.
    pub fn scan_points(&self, from: Option<&PointKey>, visit: &mut dyn FnMut(PointKey, StoredPoint) -> bool) -> Result<(), StorageError> {
        let start = match from {
            Some(k) => self.key(&k.to_bytes()),
            None => self.prefix.clone(),
        };
        let end = prefix_end(&self.prefix);
        let plen = self.prefix.len();
        let mut err = None;
        self.engine.scan(Cf::Points, &start, &end, &mut |k, v| {
            match (PointKey::from_bytes(&k[plen..]), decode_point(v)) {
                (Ok(id), Ok(p)) => visit(id, p),
                (Err(e), _) => {
                    err = Some(StorageError::Corrupt { what: "point key", detail: e.to_string() });
                    false
                }
                (_, Err(e)) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    /// Visits every payload index entry of the shard.
    pub fn scan_index(&self, visit: &mut dyn FnMut(IndexEntry)) -> Result<(), StorageError> {
        let end = prefix_end(&self.prefix);
        let plen = self.prefix.len();
        let mut err = None;
        self.engine.scan(Cf::PayloadIndex, &self.prefix, &end, &mut |k, _| match IndexEntry::decode(&k[plen..]) {
            Ok(e) => {
                visit(e);
                true
            }
            Err(e) => {
                err = Some(e);
                false
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(Cf::Meta, &self.key(name.as_bytes()))
    }

    pub fn meta_u64(&self, name: &str) -> Result<u64, StorageError> {
        match self.meta_get(name)? {
            None => Ok(0),
            Some(b) => Ok(u64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| StorageError::Corrupt { what: "shard meta", detail: name.to_string() })?,
            )),
        }
    }

    /// Writes `batch` atomically; durable when `sync`.
    pub fn write(&self, batch: StoreBatch, sync: bool) -> Result<(), StorageError> {
        let mut ops = Vec::with_capacity(batch.put_points.len() * 2 + batch.delete_points.len() + batch.put_meta.len());
        for e in &batch.delete_index {
            ops.push(KvOp::Delete(Cf::PayloadIndex, e.encode(&self.prefix)));
        }
        for id in &batch.delete_points {
            ops.push(KvOp::Delete(Cf::Points, self.key(&id.to_bytes())));
        }
        for p in batch.put_points {
            let id = p.id.as_ref().ok_or(StorageError::Corrupt { what: "point", detail: "point without id".into() })?;
            let key = PointKey::try_from(id).map_err(|e| StorageError::Corrupt { what: "point id", detail: e.to_string() })?;
            ops.push(KvOp::Put(Cf::Points, self.key(&key.to_bytes()), prost::Message::encode_to_vec(&p)));
        }
        for e in &batch.put_index {
            ops.push(KvOp::Put(Cf::PayloadIndex, e.encode(&self.prefix), Vec::new()));
        }
        for (name, v) in batch.put_meta {
            ops.push(KvOp::Put(Cf::Meta, self.key(name.as_bytes()), v));
        }
        for id in &batch.delete_requests {
            ops.push(KvOp::Delete(Cf::Meta, self.request_key(id)));
        }
        for (id, v) in batch.put_requests {
            ops.push(KvOp::Put(Cf::Meta, self.request_key(&id), v));
        }
        if let Some((seq, v)) = batch.put_journal {
            ops.push(KvOp::Put(Cf::Meta, self.journal_key(seq), v));
        }
        self.engine.write(ops, sync)
    }

    fn journal_key(&self, seq: u64) -> Vec<u8> {
        [&self.prefix[..], JOURNAL_TAG, &seq.to_be_bytes()].concat()
    }

    /// Visits the write journal records from sequence `from` on, in order,
    /// until `visit` returns false.
    pub fn scan_journal(&self, from: u64, visit: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<(), StorageError> {
        let tag = [&self.prefix[..], JOURNAL_TAG].concat();
        let end = prefix_end(&tag);
        let skip = tag.len();
        let mut bad = None;
        self.engine.scan(Cf::Meta, &self.journal_key(from), &end, &mut |k, v| match <[u8; 8]>::try_from(&k[skip..]) {
            Ok(seq) => visit(u64::from_be_bytes(seq), v),
            Err(_) => {
                bad = Some(StorageError::Corrupt { what: "journal key", detail: format!("{} bytes", k.len() - skip) });
                false
            }
        })?;
        bad.map_or(Ok(()), Err)
    }

    /// Deletes the write journal records up to and including `through`.
    pub fn trim_journal(&self, through: u64) -> Result<(), StorageError> {
        let start = [&self.prefix[..], JOURNAL_TAG].concat();
        let end = match through.checked_add(1) {
            Some(n) => self.journal_key(n),
            None => prefix_end(&start),
        };
        self.engine.write(vec![KvOp::DeleteRange(Cf::Meta, start, end)], false)
    }

    /// Request-id records live in the meta column family under
    /// `prefix ++ "rq/" ++ id` (no metadata record name starts so).
    fn request_key(&self, id: &[u8; 16]) -> Vec<u8> {
        [&self.prefix[..], REQUEST_TAG, id].concat()
    }

    /// Visits every request-id record until `visit` returns false.
    pub fn scan_requests(&self, visit: &mut dyn FnMut([u8; 16], &[u8]) -> bool) -> Result<(), StorageError> {
        let start = [&self.prefix[..], REQUEST_TAG].concat();
        let end = prefix_end(&start);
        let skip = start.len();
        let mut bad = None;
        self.engine.scan(Cf::Meta, &start, &end, &mut |k, v| match <[u8; 16]>::try_from(&k[skip..]) {
            Ok(id) => visit(id, v),
            Err(_) => {
                bad = Some(StorageError::Corrupt { what: "request id key", detail: format!("{} bytes", k.len() - skip) });
                false
            }
        })?;
        bad.map_or(Ok(()), Err)
    }

    /// Deletes every record of the shard.
    pub fn destroy(&self) -> Result<(), StorageError> {
        let end = prefix_end(&self.prefix);
        // Only the shard's own column families: Raft logs are kept by their
        // group (crate::raft::log_store).
        let ops = [Cf::Points, Cf::PayloadIndex, Cf::Meta].iter().map(|cf| KvOp::DeleteRange(*cf, self.prefix.clone(), end.clone())).collect();
        self.engine.write(ops, true)
    }
}

pub(crate) fn decode_point(b: &[u8]) -> Result<StoredPoint, StorageError> {
    <StoredPoint as prost::Message>::decode(b).map_err(|e| StorageError::Corrupt { what: "point", detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_keys_sort_numerically() {
        let xs = [f64::NEG_INFINITY, -1e300, -2.5, -0.0, 0.0, 1e-300, 3.0, 1e300, f64::INFINITY];
        for w in xs.windows(2) {
            assert!(f64_key(w[0]) <= f64_key(w[1]), "{} {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(f64_from_key(f64_key(x)), if x == 0.0 { 0.0 } else { x });
        }
    }

    /// Generations of one shard, and neighbouring shards and collections,
    /// never see or delete each other's records.
    #[test]
    fn generations_are_disjoint() {
        let engine: Arc<dyn KvEngine> = Arc::new(crate::storage::memory::MemoryEngine::default());
        let g0 = ShardStore::new(engine.clone(), "c", 1);
        let (g1, g2) = (g0.with_generation(1), g0.with_generation(2));
        let others = [ShardStore::new(engine.clone(), "c", 2), ShardStore::new(engine.clone(), "c\u{0}1", 2), ShardStore::new(engine.clone(), "cc", 1)];
        let put = |s: &ShardStore, id: u64| {
            let p = StoredPoint { id: Some(id.into()), vector: vec![id as f32], payload: None, offset: id as u32, sparse: Default::default(), vectors: Default::default() };
            s.write(StoreBatch { put_points: vec![p], put_meta: vec![("m", id.to_be_bytes().to_vec())], ..Default::default() }, false).unwrap();
        };
        for (i, s) in [&g0, &g1, &g2].into_iter().chain(others.iter()).enumerate() {
            put(s, i as u64 + 1);
        }
        let ids = |s: &ShardStore| {
            let mut out = vec![];
            s.scan_points(None, &mut |_, p| {
                out.push(p.offset);
                true
            })
            .unwrap();
            out
        };
        assert_eq!((ids(&g0), ids(&g1), ids(&g2)), (vec![1], vec![2], vec![3]));
        assert_eq!(g1.meta_u64("m").unwrap(), 2);
        g1.destroy().unwrap();
        assert_eq!((ids(&g0), ids(&g1), ids(&g2)), (vec![1], vec![], vec![3]));
        assert_eq!(others.iter().map(ids).collect::<Vec<_>>(), vec![vec![4], vec![5], vec![6]]);
        assert_eq!(g0.with_generation(0).meta_u64("m").unwrap(), 1);
    }

    #[test]
    fn index_entry_roundtrip() {
        for value in [IndexValue::Keyword("a\u{0}b".into()), IndexValue::Number(-3.5), IndexValue::Bool(true), IndexValue::Keyword(String::new())] {
            let e = IndexEntry { field: "f.g".into(), value, offset: 77 };
            let k = e.encode(b"P");
            assert_eq!(IndexEntry::decode(&k[1..]).unwrap(), e);
        }
    }
}
