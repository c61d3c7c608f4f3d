//! The write journal: which offsets each write sequence made live (and for
//! which point id) and which it retired, so a restart after a crash brings
//! the last key checkpoint (keyfile.rs) up to storage's sequence instead of
//! scanning every stored point.
//!
//! Every shard write that changes the live set stores one record, keyed by
//! the sequence it makes, in the same atomic batch as its points
//! ([`ShardStore::scan_journal`]), so the records and the points can never
//! disagree. A save trims the records its key checkpoint covers. At open,
//! [`replay`] applies the records after the checkpoint's sequence, in
//! order; if one is missing (a journal from before this format, or a trim
//! that raced a crash and lost nothing it needed) or does not fit the
//! table it would change, the caller falls back to the scan.
//!
//! A record costs about 13 to 21 bytes per point written, lives at most
//! one save interval (`--index-save-interval`, 60 s by default), and is
//! read only at open.
//!
//! Layout (little-endian): `u32` count of added versions, then each as its
//! `u32` offset and the `PointKey` byte form (a tag and 8 or 16 bytes);
//! `u32` count of retired offsets, then each `u32`.
use roaring::RoaringBitmap;
use shoal_proto::PointKey;

use super::keys::KeyTable;
use crate::storage::ShardStore;

/// The record of one write: versions made live, offsets retired.
pub fn encode(added: &[(PointKey, u32)], retired: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + added.len() * 21 + retired.len() * 4);
    out.extend_from_slice(&(added.len() as u32).to_le_bytes());
    for (k, off) in added {
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&k.to_bytes());
    }
    out.extend_from_slice(&(retired.len() as u32).to_le_bytes());
    for off in retired {
        out.extend_from_slice(&off.to_le_bytes());
    }
    out
}

/// A decoded record.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub added: Vec<(PointKey, u32)>,
    pub retired: Vec<u32>,
}

/// Decodes [`encode`]'s bytes; `None` if malformed. Counts are checked
/// against the bytes present before anything is allocated.
pub fn decode(mut b: &[u8]) -> Option<Record> {
    fn u32_of(b: &mut &[u8]) -> Option<u32> {
        let (head, rest) = b.split_first_chunk::<4>()?;
        *b = rest;
        Some(u32::from_le_bytes(*head))
    }
    let n = u32_of(&mut b)? as usize;
    if n.saturating_mul(13) > b.len() {
        return None;
    }
    let mut added = Vec::with_capacity(n);
    let num_tag = PointKey::Num(0).to_bytes()[0];
    for _ in 0..n {
        let off = u32_of(&mut b)?;
        let len = if *b.first()? == num_tag { 9 } else { 17 };
        let key = PointKey::from_bytes(b.get(..len)?).ok()?;
        b = &b[len..];
        added.push((key, off));
    }
    let n = u32_of(&mut b)? as usize;
    if n.checked_mul(4)? != b.len() {
        return None;
    }
    let retired = b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Some(Record { added, retired })
}

/// Applies the journal records after `from` through `to` (storage's write
/// sequence) to a checkpoint's `live` set and `keys`, in the order the
/// writes ran them (new versions live, then old ones retired), and checks
/// the result's size against `live_count`, the count the last write stored
/// beside its points (when it did). Returns `None`, leaving both
/// half-applied, when a record is missing, unreadable or malformed, names
/// an offset at or past `next_offset`, adds an offset already live or
/// retires one that is not, or the count differs: the caller then scans.
pub fn replay(store: &ShardStore, from: u64, to: u64, next_offset: u32, live_count: Option<&[u8]>, live: &mut RoaringBitmap, keys: &mut KeyTable) -> Option<u64> {
    let applied = apply(store, from, to, next_offset, live, keys)?;
    let want = live_count.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
    if want.is_some_and(|n| n != live.len()) {
        tracing::warn!(from, to, live = live.len(), stored = want, "write journal replay disagrees with the stored live count; scanning the stored points");
        return None;
    }
    Some(applied)
}

fn apply(store: &ShardStore, from: u64, to: u64, next_offset: u32, live: &mut RoaringBitmap, keys: &mut KeyTable) -> Option<u64> {
    if from >= to {
        return Some(0);
    }
    let mut expect = from + 1;
    let mut ok = true;
    let scanned = store.scan_journal(expect, &mut |seq, bytes| {
        if seq > to {
            return false;
        }
        let fits = seq == expect
            && decode(bytes).is_some_and(|r| {
                for (k, off) in r.added {
                    if off >= next_offset || !live.insert(off) {
                        return false;
                    }
                    keys.insert(off, k);
                }
                for off in r.retired {
                    if off >= next_offset || !live.remove(off) {
                        return false;
                    }
                    keys.remove(off);
                }
                true
            });
        ok &= fits;
        expect += 1;
        fits
    });
    if let Err(e) = scanned {
        tracing::warn!(from, to, error = %e, "write journal unreadable; scanning the stored points");
        return None;
    }
    if !ok || expect != to + 1 {
        tracing::info!(from, to, reached = expect - 1, "write journal incomplete; scanning the stored points");
        return None;
    }
    Some(to - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        let added = vec![(PointKey::Num(7), 3), (PointKey::Uuid(u128::MAX - 1), 90_000), (PointKey::Num(0), 0)];
        let retired = vec![1, 2, 4_000_000];
        let b = encode(&added, &retired);
        assert_eq!(decode(&b), Some(Record { added: added.clone(), retired: retired.clone() }));
        assert_eq!(decode(&encode(&[], &[])), Some(Record { added: vec![], retired: vec![] }));
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]), None, "truncated at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), None, "trailing byte");
        // A count far beyond the bytes present allocates nothing.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert_eq!(decode(&huge), None);
        let mut bad_tag = b.clone();
        bad_tag[8] = 0xee;
        assert_eq!(decode(&bad_tag), None, "unknown point key tag");
    }
}
