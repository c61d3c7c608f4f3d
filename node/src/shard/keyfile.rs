//! A shard's in-memory state at open, rebuilt from the key checkpoint
//! ([`read`], [`restore`]) or, when none can stand in, by the scan of every
//! stored point ([`scan_points`]).
//!
//! The key checkpoint holds the shard's live offsets and their point ids as
//! of its last index save, so a restart need not read every stored point.
//!
//! Without it, [`Shard::open`] scans the `points` column family and decodes
//! every point (vector included) to rebuild the offset -> id table, which
//! at a million 768-dimension points is gigabytes of reads before the shard
//! serves. `save_index` writes this file beside the HNSW file, under the
//! writer lock, so it matches storage at the saved write sequence exactly.
//! `open` uses it only when the graph it loaded is the one saved with it
//! (same checksum) and the write journal (journal.rs) holds every write
//! since its sequence, which it replays (a crash after later writes);
//! anything else (a snapshot install, a split child, a journal from before
//! it existed, damage) falls back to the full scan. The shard's other in-memory indexes that
//! have no file of their own (text, sparse, named vectors) also need the
//! scan, so shards with them always take it.
//!
//! Layout (little-endian): `SHKEYS01`, write sequence `u64`, graph checksum
//! `u64`, live-bitmap length `u64`, the bitmap (roaring's portable format),
//! then each live offset's point id in ascending offset order (the
//! `PointKey` byte form: a tag and 8 or 16 bytes), and an xxh3-64 of all
//! the bytes before it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use roaring::RoaringBitmap;
use shoal_proto::PointKey;

use super::keys::KeyTable;
use super::{named, State};
use crate::error::{IndexError, Result};
use crate::index::hnsw::HnswIndex;
use crate::index::VectorIndex;
use crate::storage::ShardStore;

const MAGIC: &[u8; 8] = b"SHKEYS01";

/// The checkpoint beside the HNSW file `index_path`.
pub fn path(index_path: &Path) -> PathBuf {
    index_path.with_extension("keys")
}

/// Writes the checkpoint of `live`/`keys` at write sequence `seq`, for the
/// graph whose sidecar checksum is `graph`. Returns false (writing
/// nothing) if a live offset has no id, which would be a bug elsewhere;
/// the next open then scans.
pub fn write(path: &Path, seq: u64, graph: u64, live: &RoaringBitmap, keys: &KeyTable) -> std::io::Result<bool> {
    let mut out = Vec::with_capacity(32 + live.serialized_size() + live.len() as usize * 9);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&graph.to_le_bytes());
    out.extend_from_slice(&(live.serialized_size() as u64).to_le_bytes());
    live.serialize_into(&mut out)?;
    for off in live {
        let Some(k) = keys.get(off) else {
            tracing::error!(offset = off, "live offset without a point id; key checkpoint not written");
            let _ = std::fs::remove_file(path);
            return Ok(false);
        };
        out.extend_from_slice(&k.to_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    crate::storage::write_durable(path, &out)?;
    Ok(true)
}

/// Reads the checkpoint if it is intact and was written at or before
/// `seq` (storage's write sequence) for the graph with checksum `graph`;
/// returns its sequence with the live set and keys, `None` otherwise (the
/// caller scans). Every offset must be below `next_offset` (storage's
/// counter), so a damaged or crafted file cannot make the key table
/// allocate past what storage could hold.
pub fn read(path: &Path, seq: u64, graph: u64, next_offset: u32) -> Option<(u64, RoaringBitmap, KeyTable)> {
    let bytes = std::fs::read(path).ok()?;
    let stale = |why: &str| {
        tracing::info!(path = %path.display(), why, "key checkpoint not used; scanning the stored points");
        None
    };
    if bytes.len() < 40 || &bytes[..8] != MAGIC {
        return stale("malformed");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
        return stale("checksum mismatch");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let at = u64_at(8);
    if at > seq {
        return stale("written at a later write sequence than storage's");
    }
    if u64_at(16) != graph {
        return stale("written for another graph");
    }
    let len = usize::try_from(u64_at(24)).ok()?;
    let rest = &body[32..];
    if len > rest.len() {
        return stale("malformed");
    }
    let Ok(live) = RoaringBitmap::deserialize_from(&rest[..len]) else {
        return stale("malformed live set");
    };
    let mut ids = &rest[len..];
    if live.max().is_some_and(|m| m >= next_offset) || (live.len() as usize).saturating_mul(9) > ids.len() {
        return stale("offsets beyond storage's counter, or fewer ids than offsets");
    }
    let mut last: Option<u32> = None;
    let mut keys = KeyTable::default();
    let num_tag = PointKey::Num(0).to_bytes()[0];
    for off in &live {
        if last.is_some_and(|l| off <= l) {
            return stale("malformed live set");
        }
        last = Some(off);
        let n = match ids.first() {
            Some(&t) if t == num_tag => 9,
            Some(_) => 17,
            None => return stale("truncated"),
        };
        let Some(k) = ids.get(..n).and_then(|b| PointKey::from_bytes(b).ok()) else {
            return stale("malformed point id");
        };
        keys.insert(off, k);
        ids = &ids[n..];
    }
    if !ids.is_empty() {
        return stale("trailing bytes");
    }
    Some((at, live, keys))
}

/// What [`restore`] did: points the graph lacked, added from storage (or
/// left for the indexer, `deferred`), and vector-file slots rewritten
/// because their checksum failed.
pub struct Restored {
    pub added: usize,
    pub repaired: usize,
    pub deferred: BTreeMap<u32, Vec<f32>>,
}

/// The f32 bytes of the versions graphs lack at open that go to their
/// shards' pending sets (searched exactly, indexed in the background by the
/// node's indexer) instead of into the graphs before the shards serve, for
/// the whole process at any one time: 256 MiB, about 87,000 vectors of 768
/// dimensions, more than a minute of writes since the last save. What
/// passes it is added to the graph during the open, as before.
/// docs/limits.md lists it.
///
/// Deferred versions are searched while the indexer adds them, so the
/// graph's exact search guards against a node counted before its vector
/// is stored (`HnswIndex`'s `inserting` lock).
pub const DEFER_AT_OPEN_BYTES: usize = 256 << 20;

/// Bytes deferred at open, process-wide, not yet indexed ([`release`]).
static DEFERRED: AtomicUsize = AtomicUsize::new(0);

/// Takes `bytes` of [`DEFER_AT_OPEN_BYTES`] if that much is left.
fn reserve(bytes: usize) -> bool {
    DEFERRED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| cur.checked_add(bytes).filter(|n| *n <= DEFER_AT_OPEN_BYTES)).is_ok()
}

/// Gives back `bytes` a shard deferred at open (indexed, retired, or the
/// shard closed).
pub fn release(bytes: usize) {
    let _ = DEFERRED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| Some(cur.saturating_sub(bytes)));
}

/// Brings a loaded graph in line with a checkpoint read by [`read`]: every
/// live offset the graph holds is kept (a quantized graph's vector-file
/// slot checked, and rewritten from storage if damaged), and the live
/// offsets it lacks (indexed after the graph was saved) are read from
/// storage by id and added. `None` if storage disagrees with the
/// checkpoint (the caller scans instead; what was added stays valid).
pub fn restore(store: &ShardStore, index: &HnswIndex, live: &RoaringBitmap, keys: &KeyTable) -> Result<Option<Restored>> {
    let mut done = Restored { added: 0, repaired: 0, deferred: BTreeMap::new() };
    let mut pending = Pending::new(index);
    for off in live {
        let held = index.contains(off as u64);
        if held && index.keep_checked(off as u64)? {
            continue;
        }
        let Some(key) = keys.get(off) else {
            return Ok(None);
        };
        let point = match store.get(&key)? {
            Some(p) if p.offset == off => p,
            _ => {
                tracing::warn!(offset = off, "key checkpoint disagrees with storage; scanning the stored points");
                return Ok(None);
            }
        };
        if held {
            done.repaired += usize::from(index.keep_loaded(off as u64, &point.vector)?);
        } else {
            pending.push(off as u64, point.vector)?;
            done.added += 1;
        }
    }
    pending.flush()?;
    done.deferred = pending.take_deferred();
    Ok(Some(done))
}

/// Vectors read from storage that the graph lacks: the first
/// [`DEFER_AT_OPEN_BYTES`] are kept for the shard's pending set, the rest
/// added in batches.
struct Pending<'a> {
    index: &'a HnswIndex,
    items: Vec<(u64, Vec<f32>)>,
    deferred: BTreeMap<u32, Vec<f32>>,
    /// Whether versions may be deferred at all.
    defer: bool,
}

impl Drop for Pending<'_> {
    /// An open that failed or fell back to the scan gives back what it
    /// deferred and did not hand over.
    fn drop(&mut self) {
        release(bytes_of(&self.deferred));
    }
}

/// The f32 bytes of deferred versions.
pub fn bytes_of(deferred: &BTreeMap<u32, Vec<f32>>) -> usize {
    deferred.values().map(|v| v.len() * 4).sum()
}

impl<'a> Pending<'a> {
    const BATCH: usize = 4096;

    fn new(index: &'a HnswIndex) -> Self {
        // A quantized graph without codes yet calibrates on its first
        // insert, which should see a full sample (CALIBRATION_ROWS): its
        // versions go in here.
        let defer = !(index.params().precision.quantized() && index.calibration().is_none());
        Pending { index, items: Vec::new(), deferred: BTreeMap::new(), defer }
    }

    /// The deferred versions, for the shard's pending set; their bytes stay
    /// reserved until the shard gives them back ([`release`]).
    fn take_deferred(&mut self) -> BTreeMap<u32, Vec<f32>> {
        std::mem::take(&mut self.deferred)
    }

    fn push(&mut self, key: u64, v: Vec<f32>) -> std::result::Result<(), IndexError> {
        // Checked as the graph would check it: a stored vector of another
        // dimension (a snapshot of another collection) fails the open.
        let want = self.index.params().dim;
        if v.len() != want {
            return Err(IndexError::Dimension { got: v.len(), want });
        }
        let bytes = v.len() * 4;
        if let (true, Ok(off)) = (self.defer, u32::try_from(key)) {
            if reserve(bytes) {
                self.deferred.insert(off, v);
                return Ok(());
            }
        }
        self.items.push((key, v));
        if self.items.len() >= Self::BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), IndexError> {
        let items: Vec<(u64, &[f32])> = self.items.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        self.index.add_batch(&items)?;
        self.items.clear();
        Ok(())
    }
}

/// The scan of every stored point that rebuilds a shard's in-memory state
/// at open when no key checkpoint can stand in for it (see keyfile.rs):
/// the offset -> id table, the live set, the text, sparse and named
/// indexes, and whatever the graph lacks or whose vector-file slot does not
/// hold the stored vector (`added`, `repaired`).
pub(super) fn scan_points(store: &ShardStore, index: &HnswIndex, named: &named::NamedSet, state: &mut State, text: bool, added: &mut usize, repaired: &mut usize) -> Result<BTreeMap<u32, Vec<f32>>> {
    let mut pending = Pending::new(index);
    let mut scan_err: Option<IndexError> = None;
    // Named vectors go into their graphs in batches bounded in points
    // and bytes; a multi-vector needs no graph, so only its presence
    // is kept (no copy of its rows).
    let mut named_batch: Vec<(u32, BTreeMap<String, shoal_proto::v1::NamedVector>)> = Vec::new();
    let mut named_bytes = 0usize;
    store.scan_points(None, &mut |k, p| {
        if !p.vectors.is_empty() && !named.is_empty() {
            let vs: BTreeMap<String, shoal_proto::v1::NamedVector> = p.vectors.iter().map(|(n, v)| (n.clone(), if v.rows.is_empty() { v.clone() } else { Default::default() })).collect();
            named_bytes += vs.values().map(|v| v.values.len() * 4).sum::<usize>();
            named_batch.push((p.offset, vs));
            if named_batch.len() >= 4096 || named_bytes >= 64 << 20 {
                named_bytes = 0;
                let items: Vec<(u32, &BTreeMap<String, shoal_proto::v1::NamedVector>)> = named_batch.iter().map(|(o, v)| (*o, v)).collect();
                if let Err(e) = named.add(&items) {
                    scan_err = Some(IndexError::Usearch(e.to_string()));
                    return false;
                }
                named_batch.clear();
            }
        }
        state.keys.insert(p.offset, k);
        state.live.insert(p.offset);
        if text {
            state.payload.insert_text(p.payload.as_ref(), p.offset);
        }
        for (name, v) in &p.sparse {
            if let Some(idx) = state.sparse.get_mut(name) {
                idx.insert(p.offset, v);
            }
        }
        if index.contains(p.offset as u64) {
            match index.keep_loaded(p.offset as u64, &p.vector) {
                Ok(true) => *repaired += 1,
                Ok(false) => {}
                Err(e) => {
                    scan_err = Some(e);
                    return false;
                }
            }
        } else {
            *added += 1;
            if let Err(e) = pending.push(p.offset as u64, p.vector) {
                scan_err = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = scan_err {
        return Err(e.into());
    }
    pending.flush()?;
    named.add(&named_batch.iter().map(|(o, v)| (*o, v)).collect::<Vec<_>>())?;
    Ok(pending.take_deferred())
}


#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (RoaringBitmap, KeyTable) {
        let mut live = RoaringBitmap::new();
        let mut keys = KeyTable::default();
        for (off, k) in [
            (0u32, PointKey::Num(7)),
            (3, PointKey::Uuid(0xfeed_beef_u128 << 64)),
            (4, PointKey::Num(u64::MAX)),
            (90_000, PointKey::Num(1)),
        ] {
            live.insert(off);
            keys.insert(off, k);
        }
        (live, keys)
    }

    #[test]
    fn round_trip_and_every_reason_to_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("0.usearch"));
        let (live, keys) = table();
        assert!(write(&p, 42, 9, &live, &keys).unwrap());
        let (at, l, k) = read(&p, 42, 9, 90_001).expect("fresh checkpoint reads");
        assert_eq!((at, &l), (42, &live));
        for off in &live {
            assert_eq!(k.get(off), keys.get(off), "offset {off}");
        }
        assert_eq!(read(&p, 43, 9, 90_001).map(|r| r.0), Some(42), "storage moved on since: the journal replays the rest");
        assert!(read(&p, 41, 9, 90_001).is_none(), "newer than storage (storage replaced under it)");
        assert!(read(&p, 42, 8, 90_001).is_none(), "another graph was loaded");
        assert!(read(&p, 42, 9, 90_000).is_none(), "an offset storage never handed out");
        let good = std::fs::read(&p).unwrap();
        for at in [0, 10, 35, good.len() / 2, good.len() - 12, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&p, &bad).unwrap();
            assert!(read(&p, 42, 9, 90_001).is_none(), "a flipped byte at {at} is refused");
        }
        std::fs::write(&p, &good[..good.len() - 20]).unwrap();
        assert!(read(&p, 42, 9, 90_001).is_none(), "truncated");
        std::fs::remove_file(&p).unwrap();
        assert!(read(&p, 42, 9, 90_001).is_none(), "absent");
        // A file with a valid checksum but an offset near 2^32 (crafted, or
        // written by a bug): refused before the key table grows to it.
        let mut far = RoaringBitmap::new();
        far.insert(u32::MAX - 1);
        let mut keys = KeyTable::default();
        keys.insert(0, PointKey::Num(1));
        let mut body = Vec::new();
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&(far.serialized_size() as u64).to_le_bytes());
        far.serialize_into(&mut body).unwrap();
        body.extend_from_slice(&PointKey::Num(1).to_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        std::fs::write(&p, &body).unwrap();
        assert!(read(&p, 42, 9, 90_001).is_none(), "an offset past the counter is refused");
    }

    #[test]
    fn a_live_offset_without_an_id_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("0.usearch"));
        let (mut live, keys) = table();
        assert!(write(&p, 1, 1, &live, &keys).unwrap());
        live.insert(5);
        assert!(!write(&p, 2, 1, &live, &keys).unwrap());
        assert!(!p.exists(), "the old checkpoint is gone too");
    }
}
