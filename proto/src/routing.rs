//! Hash-range shard maps.
//!
//! The 64-bit hash space `[0, 2^64)` is split into contiguous, inclusive
//! ranges, one per shard. A point belongs to the shard whose range holds
//! [`PointKey::route_hash`](crate::PointKey::route_hash) of its id.
//!
//! A new collection with `n` shards uses [`uniform_ranges`]: range `i` is
//! `[floor(i * 2^64 / n), floor((i + 1) * 2^64 / n) - 1]`. Later resharding
//! splits a range in two, which is why lookups go through [`ShardMap`]
//! (binary search over arbitrary ranges) rather than a modulo.
use crate::PointKey;

/// One shard's inclusive hash range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub shard_id: u32,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("shard map is empty")]
    Empty,
    #[error("shard ranges do not cover the hash space contiguously at 0x{0:016x}")]
    Gap(u64),
    #[error("shard range {0} is inverted")]
    Inverted(u32),
}

/// Splits the hash space into `n >= 1` equal contiguous ranges.
pub fn uniform_ranges(n: u32) -> Vec<(u64, u64)> {
    let n = n.max(1) as u128;
    let space: u128 = 1u128 << 64;
    (0..n)
        .map(|i| {
            let start = (i * space / n) as u64;
            let end = ((i + 1) * space / n - 1) as u64;
            (start, end)
        })
        .collect()
}

/// A validated, sorted shard map for one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    ranges: Vec<ShardRange>,
}

impl ShardMap {
    /// Builds a map from ranges in any order; they must tile `[0, 2^64)`.
    pub fn new(mut ranges: Vec<ShardRange>) -> Result<Self, RoutingError> {
        if ranges.is_empty() {
            return Err(RoutingError::Empty);
        }
        ranges.sort_by_key(|r| r.start);
        let mut next: u128 = 0;
        for r in &ranges {
            if r.end < r.start {
                return Err(RoutingError::Inverted(r.shard_id));
            }
            if r.start as u128 != next {
                return Err(RoutingError::Gap(next as u64));
            }
            next = r.end as u128 + 1;
        }
        if next != 1u128 << 64 {
            return Err(RoutingError::Gap(next as u64));
        }
        Ok(ShardMap { ranges })
    }

    /// The uniform map of a new collection with `n` shards (ids 0..n).
    pub fn uniform(n: u32) -> Self {
        let ranges = uniform_ranges(n)
            .into_iter()
            .enumerate()
            .map(|(i, (start, end))| ShardRange { shard_id: i as u32, start, end })
            .collect();
        ShardMap::new(ranges).expect("uniform ranges tile the hash space")
    }

    pub fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }

    /// The shard whose range holds `hash`.
    pub fn shard_for_hash(&self, hash: u64) -> u32 {
        let i = self.ranges.partition_point(|r| r.end < hash);
        self.ranges[i].shard_id
    }

    /// The shard that owns `key`.
    pub fn shard_for(&self, key: &PointKey) -> u32 {
        self.shard_for_hash(key.route_hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ranges_tile_the_space() {
        for n in [1, 2, 3, 7, 64, 1024] {
            let r = uniform_ranges(n);
            assert_eq!(r.len(), n as usize);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().unwrap().1, u64::MAX);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
        assert_eq!(uniform_ranges(4)[1], (0x4000_0000_0000_0000, 0x7fff_ffff_ffff_ffff));
    }

    /// Fixed routing vectors: the shard of these ids in a 1-, 3- and 8-shard
    /// collection must never change.
    #[test]
    fn routing_fixed_vectors() {
        let ids: Vec<PointKey> = (0..8u64).map(PointKey::Num).chain([PointKey::Uuid(0x67e55044_10b1_426f_9247_bb680e5fe0c8)]).collect();
        let got = |n: u32| -> Vec<u32> {
            let m = ShardMap::uniform(n);
            ids.iter().map(|k| m.shard_for(k)).collect()
        };
        assert_eq!(got(1), vec![0; 9]);
        assert_eq!(got(3), ROUTE_3);
        assert_eq!(got(8), ROUTE_8);
    }
    const ROUTE_3: [u32; 9] = [2, 0, 0, 0, 2, 1, 1, 1, 2];
    const ROUTE_8: [u32; 9] = [6, 1, 1, 2, 6, 4, 3, 4, 6];

    #[test]
    fn boundaries() {
        let m = ShardMap::uniform(4);
        assert_eq!(m.shard_for_hash(0), 0);
        assert_eq!(m.shard_for_hash(0x3fff_ffff_ffff_ffff), 0);
        assert_eq!(m.shard_for_hash(0x4000_0000_0000_0000), 1);
        assert_eq!(m.shard_for_hash(u64::MAX), 3);
    }

    #[test]
    fn rejects_bad_maps() {
        assert_eq!(ShardMap::new(vec![]), Err(RoutingError::Empty));
        let gap = vec![ShardRange { shard_id: 0, start: 0, end: 10 }, ShardRange { shard_id: 1, start: 12, end: u64::MAX }];
        assert_eq!(ShardMap::new(gap), Err(RoutingError::Gap(11)));
        let short = vec![ShardRange { shard_id: 0, start: 0, end: 10 }];
        assert_eq!(ShardMap::new(short), Err(RoutingError::Gap(11)));
    }

    #[test]
    fn split_range_map_routes_by_range() {
        // A map after shard 0 of 2 was split: 0a = [0, 2^62), 0b = [2^62, 2^63).
        let m = ShardMap::new(vec![
            ShardRange { shard_id: 1, start: 1 << 63, end: u64::MAX },
            ShardRange { shard_id: 0, start: 0, end: (1 << 62) - 1 },
            ShardRange { shard_id: 2, start: 1 << 62, end: (1 << 63) - 1 },
        ])
        .unwrap();
        assert_eq!(m.shard_for_hash(5), 0);
        assert_eq!(m.shard_for_hash(1 << 62), 2);
        assert_eq!(m.shard_for_hash(1 << 63), 1);
    }

    proptest::proptest! {
        #[test]
        fn every_hash_lands_in_its_range(h: u64, n in 1u32..200) {
            let m = ShardMap::uniform(n);
            let s = m.shard_for_hash(h);
            let r = m.ranges().iter().find(|r| r.shard_id == s).unwrap();
            proptest::prop_assert!(r.start <= h && h <= r.end);
            // Uniform maps agree with the closed form.
            proptest::prop_assert_eq!(s as u128, (h as u128 * n as u128) >> 64);
        }
    }
}
