//! The numeric payload index of one field (numbers, datetimes, geo cells):
//! a bitmap of point versions per distinct value, and the same versions
//! grouped in blocks of consecutive values.
//!
//! A range over a field with many distinct values (sizes, prices,
//! timestamps, geo cells) would otherwise union one bitmap per value in it:
//! thousands of small unions per search, and one per point for a timestamp
//! field. With blocks it unions the blocks wholly inside the range and, at
//! its two ends, the values of at most two blocks. A block holds about
//! [`BLOCK`] to `2 * BLOCK` entries; it splits at its median value when it
//! grows past that, and goes away when it empties.
//!
//! The blocks hold each version's offset once per block, not once per
//! value: removing one `(value, offset)` entry removes the offset from its
//! block. That is right because a version's entries are only ever removed
//! all together (a version is immutable; it retires as a whole), which
//! `PayloadIndex` relies on and the shard upholds.
use std::collections::BTreeMap;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

use roaring::{MultiOps, RoaringBitmap};

use super::OrdF64;

/// Target entries per block (split past twice this).
pub const BLOCK: u64 = 256;

#[derive(Default)]
struct Block {
    offsets: RoaringBitmap,
    /// `(value, offset)` entries whose value lies in the block.
    entries: u64,
}

#[derive(Default)]
pub struct Numeric {
    values: BTreeMap<OrdF64, RoaringBitmap>,
    /// Keyed by the lowest value the block covers; a block covers values
    /// up to the next block's key.
    blocks: BTreeMap<OrdF64, Block>,
}

impl Numeric {
    pub fn insert(&mut self, x: f64, offset: u32) {
        let x = fold(x);
        if !self.values.entry(x).or_default().insert(offset) {
            return;
        }
        let key = match self.blocks.range(..=x).next_back() {
            // A block sealed around one heavy value takes no other value:
            // `x` (above it) starts a block of its own.
            Some((k, _)) if *k != x && self.sealed(*k) => None,
            Some((k, _)) => Some(*k),
            // Below every block (or none yet): the first block now starts
            // at `x`, unless it is sealed (then `x` starts its own).
            None => match self.blocks.first_key_value() {
                Some((k, _)) if !self.sealed(*k) => {
                    let k = *k;
                    let first = self.blocks.remove(&k).expect("first block");
                    self.blocks.insert(x, first);
                    Some(x)
                }
                _ => None,
            },
        };
        let Some(key) = key else {
            self.blocks.insert(x, Block { offsets: RoaringBitmap::from_iter([offset]), entries: 1 });
            return;
        };
        let b = self.blocks.get_mut(&key).expect("block just found");
        b.offsets.insert(offset);
        b.entries += 1;
        if b.entries > 2 * BLOCK {
            self.split(key);
        }
    }

    /// Whether the block at `key` is past its size and holds one value
    /// only: splitting it again would copy that value's bitmap for
    /// nothing, so other values go to blocks of their own.
    fn sealed(&self, key: OrdF64) -> bool {
        self.blocks[&key].entries > 2 * BLOCK && self.values.range((Excluded(key), Unbounded)).next().is_none_or(|(v, _)| self.blocks.range((Excluded(key), Included(*v))).next().is_some())
    }

    pub fn remove(&mut self, x: f64, offset: u32) {
        let x = fold(x);
        let Some(v) = self.values.get_mut(&x) else { return };
        if !v.remove(offset) {
            return;
        }
        if v.is_empty() {
            self.values.remove(&x);
        }
        let Some((key, b)) = self.blocks.range_mut(..=x).next_back() else { return };
        b.offsets.remove(offset);
        b.entries -= 1;
        if b.entries == 0 {
            let key = *key;
            self.blocks.remove(&key);
        }
    }

    /// Splits the block at `key` where its entries divide most evenly,
    /// if it has two values (a block of one value stays whole).
    fn split(&mut self, key: OrdF64) {
        let end = self.blocks.range((Excluded(key), Unbounded)).next().map_or(Unbounded, |(k, _)| Excluded(*k));
        let total = self.blocks[&key].entries;
        let (mut seen, mut best) = (0u64, None::<(OrdF64, u64)>);
        for (v, b) in self.values.range((Included(key), end)) {
            if *v > key && seen > 0 && best.is_none_or(|(_, below)| seen.abs_diff(total / 2) < below.abs_diff(total / 2)) {
                best = Some((*v, seen));
            }
            seen += b.len();
        }
        let Some((at, below)) = best else { return };
        let lower = self.values.range((Included(key), Excluded(at))).map(|(_, b)| b).union();
        let upper = self.values.range((Included(at), end)).map(|(_, b)| b).union();
        self.blocks.insert(key, Block { offsets: lower, entries: below });
        self.blocks.insert(at, Block { offsets: upper, entries: total - below });
    }

    /// Versions with a value in `(lo, hi)`.
    pub fn range(&self, lo: Bound<OrdF64>, hi: Bound<OrdF64>) -> RoaringBitmap {
        let admits_lo = |v: OrdF64| match lo {
            Included(a) => v >= a,
            Excluded(a) => v > a,
            Unbounded => true,
        };
        let admits_hi = |v: OrdF64| match hi {
            Included(a) => v <= a,
            Excluded(a) => v < a,
            Unbounded => true,
        };
        // The first block that can hold a value in range: the one covering
        // `lo`, or the first.
        let start = match lo {
            Included(a) | Excluded(a) => self.blocks.range(..=a).next_back().map(|(k, _)| *k),
            Unbounded => None,
        };
        let from = start.map_or(Unbounded, Included);
        let mut parts: Vec<&RoaringBitmap> = vec![];
        let mut it = self.blocks.range((from, Unbounded)).peekable();
        while let Some((key, block)) = it.next() {
            let end = it.peek().map_or(Unbounded, |(k, _)| Excluded(**k));
            let in_block = || self.values.range((Included(*key), end));
            let (Some((min, _)), Some((max, _))) = (in_block().next(), in_block().next_back()) else { continue };
            if !admits_hi(*min) {
                break;
            }
            if admits_lo(*min) && admits_hi(*max) {
                parts.push(&block.offsets);
            } else {
                // An end of the range: the block's values within it.
                let a = match lo {
                    Included(x) if x > *key => Included(x),
                    Excluded(x) if x >= *key => Excluded(x),
                    _ => Included(*key),
                };
                let b = match (hi, end) {
                    (h, Unbounded) => h,
                    (Unbounded, e) => e,
                    (Included(h) | Excluded(h), Excluded(e)) if h > e => end,
                    (Included(h), Excluded(e)) if h == e => end,
                    (h, _) => h,
                };
                if !is_empty(a, b) {
                    parts.extend(self.values.range((a, b)).map(|(_, b)| b));
                }
            }
        }
        parts.into_iter().union()
    }

    /// Rough bytes used, for status output.
    pub fn memory_bytes(&self) -> usize {
        self.values.values().map(|b| 8 + b.serialized_size()).sum::<usize>() + self.blocks.values().map(|b| 16 + b.offsets.serialized_size()).sum::<usize>()
    }

    #[cfg(test)]
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// -0.0 and 0.0 are one value (as in storage, which folds them).
pub(super) fn fold(x: f64) -> OrdF64 {
    OrdF64(if x == 0.0 { 0.0 } else { x })
}

/// Whether `(a, b)` holds no value; `BTreeMap::range` panics on an
/// inverted range and on equal excluded ends.
fn is_empty(a: Bound<OrdF64>, b: Bound<OrdF64>) -> bool {
    match (a, b) {
        (Included(x), Included(y)) => x > y,
        (Included(x) | Excluded(x), Excluded(y)) | (Excluded(x), Included(y)) => x >= y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The plain union over every value in range: the oracle.
    fn naive(versions: &BTreeMap<u32, Vec<f64>>, lo: Bound<OrdF64>, hi: Bound<OrdF64>) -> RoaringBitmap {
        let admits = |v: OrdF64| (match lo {
            Included(a) => v >= a,
            Excluded(a) => v > a,
            Unbounded => true,
        }) && (match hi {
            Included(a) => v <= a,
            Excluded(a) => v < a,
            Unbounded => true,
        });
        versions.iter().filter(|(_, vs)| vs.iter().any(|v| admits(OrdF64(*v)))).map(|(o, _)| *o).collect()
    }

    fn bound(kind: u8, x: f64) -> Bound<OrdF64> {
        match kind % 3 {
            0 => Included(OrdF64(x)),
            1 => Excluded(OrdF64(x)),
            _ => Unbounded,
        }
    }

    proptest! {
        /// Inserts and whole-version removals, with multi-valued versions,
        /// few or many distinct values (so blocks split, some of a single
        /// heavy value), then ranges of every bound kind.
        #[test]
        fn ranges_match_the_per_value_union(
            ops in proptest::collection::vec((0u32..3000, proptest::collection::vec(0i32..400, 1..4), any::<bool>()), 1..2500),
            spread in prop_oneof![Just(1.0f64), Just(0.01), Just(37.5)],
            queries in proptest::collection::vec((any::<u8>(), -10i32..410, any::<u8>(), -10i32..410), 1..40),
        ) {
            let mut idx = Numeric::default();
            let mut versions: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for (offset, values, remove) in ops {
                if remove {
                    if let Some(vs) = versions.remove(&offset) {
                        for v in vs {
                            idx.remove(v, offset);
                        }
                    }
                } else if let std::collections::btree_map::Entry::Vacant(e) = versions.entry(offset) {
                    let vs: Vec<f64> = values.iter().map(|v| *v as f64 * spread).collect();
                    for v in &vs {
                        idx.insert(*v, offset);
                    }
                    e.insert(vs);
                }
            }
            for (ka, a, kb, b) in queries {
                let (lo, hi) = (bound(ka, a as f64 * spread), bound(kb, b as f64 * spread));
                prop_assert_eq!(idx.range(lo, hi), naive(&versions, lo, hi), "range {:?}..{:?}", lo, hi);
            }
            let entries: u64 = idx.blocks.values().map(|b| b.entries).sum();
            prop_assert_eq!(entries, idx.values.values().map(|b| b.len()).sum::<u64>());
        }
    }

    /// A field of distinct values (a timestamp) ends up in blocks of about
    /// `BLOCK`, not one block and not one per value, and a range over most
    /// of it is answered from blocks.
    #[test]
    fn distinct_values_fill_blocks() {
        let mut idx = Numeric::default();
        for i in 0..100_000u32 {
            idx.insert(i as f64, i);
        }
        let n = idx.blocks();
        assert!(n >= 100_000 / (2 * BLOCK as usize) && n <= 100_000 / BLOCK as usize + 1, "{n} blocks");
        assert_eq!(idx.range(Included(OrdF64(10.5)), Excluded(OrdF64(90_000.0))).len(), 89_989);
    }

    /// A value held by many points seals its block: values arriving just
    /// above and below it (descending, the worst order) get blocks of their
    /// own instead of splitting, and copying, the heavy one again each time.
    #[test]
    fn a_heavy_value_seals_its_block() {
        let mut idx = Numeric::default();
        for o in 0..50_000u32 {
            idx.insert(100.0, o);
        }
        for (i, o) in (50_000..52_000u32).enumerate() {
            idx.insert(200.0 - i as f64 * 0.01, o);
            idx.insert(99.0 - i as f64 * 0.01, o + 10_000);
        }
        assert!(idx.sealed(OrdF64(100.0)), "the heavy value's block holds it alone");
        assert_eq!(idx.blocks[&OrdF64(100.0)].entries, 50_000);
        assert_eq!(idx.range(Included(OrdF64(100.0)), Included(OrdF64(100.0))).len(), 50_000);
        assert_eq!(idx.range(Excluded(OrdF64(100.0)), Unbounded).len(), 2_000);
        assert_eq!(idx.range(Unbounded, Excluded(OrdF64(100.0))).len(), 2_000);
        let entries: u64 = idx.blocks.values().map(|b| b.entries).sum();
        assert_eq!(entries, 54_000);
    }

    /// -0.0 and 0.0 are one value, as storage keeps them: an entry put as
    /// one and removed as the other leaves nothing behind.
    #[test]
    fn negative_zero_is_zero() {
        let mut idx = Numeric::default();
        idx.insert(-0.0, 1);
        idx.insert(0.0, 2);
        assert_eq!(idx.range(Included(fold(0.0)), Included(fold(-0.0))).len(), 2);
        idx.remove(0.0, 1);
        idx.remove(-0.0, 2);
        assert!(idx.range(Unbounded, Unbounded).is_empty());
        assert_eq!(idx.blocks(), 0);
    }
}
