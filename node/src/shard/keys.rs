//! Offset -> point id table of a shard, dense and compact.
//!
//! Every stored version of a point has a `u32` offset (its HNSW key);
//! searches map the offsets they find back to point ids here. Offsets are
//! handed out sequentially, so the table is a `Vec` indexed by offset with
//! one `u64` per slot: a numeric id below 2^63 is stored inline, and the
//! rare UUID or larger numeric id lives in a side map. That is 8 bytes per
//! version instead of two hash-map entries per point. The id -> offset
//! direction is not kept in memory: RocksDB has it (each stored point
//! carries its offset), and only the write path and `has_id` filters need it.
use std::collections::HashMap;

use shoal_proto::PointKey;

const DEAD: u64 = u64::MAX;
const WIDE: u64 = u64::MAX - 1;
const INLINE_LIMIT: u64 = 1 << 63;

#[derive(Default)]
pub struct KeyTable {
    slots: Vec<u64>,
    wide: HashMap<u32, PointKey>,
}

impl KeyTable {
    pub fn insert(&mut self, off: u32, key: PointKey) {
        let i = off as usize;
        if self.slots.len() <= i {
            // Grow by a quarter, not double: the table is one slot per version.
            let want = (i + 1).max(self.slots.len() + self.slots.len() / 4);
            self.slots.reserve_exact(want - self.slots.len());
            self.slots.resize(i + 1, DEAD);
        }
        self.slots[i] = match key {
            PointKey::Num(n) if n < INLINE_LIMIT => n,
            _ => {
                self.wide.insert(off, key);
                WIDE
            }
        };
    }

    pub fn remove(&mut self, off: u32) {
        if let Some(s) = self.slots.get_mut(off as usize) {
            if *s == WIDE {
                self.wide.remove(&off);
            }
            *s = DEAD;
        }
    }

    pub fn get(&self, off: u32) -> Option<PointKey> {
        match *self.slots.get(off as usize)? {
            DEAD => None,
            WIDE => self.wide.get(&off).copied(),
            n => Some(PointKey::Num(n)),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * 8 + self.wide.capacity() * (4 + std::mem::size_of::<PointKey>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_wide_and_dead_slots() {
        let mut t = KeyTable::default();
        t.insert(0, PointKey::Num(7));
        t.insert(5, PointKey::Uuid(0xdead_beef));
        t.insert(6, PointKey::Num(u64::MAX));
        t.insert(7, PointKey::Num(INLINE_LIMIT - 1));
        assert_eq!(t.get(0), Some(PointKey::Num(7)));
        assert_eq!(t.get(1), None, "gaps are dead");
        assert_eq!(t.get(5), Some(PointKey::Uuid(0xdead_beef)));
        assert_eq!(t.get(6), Some(PointKey::Num(u64::MAX)), "ids that collide with markers go wide");
        assert_eq!(t.get(7), Some(PointKey::Num(INLINE_LIMIT - 1)));
        assert_eq!(t.get(100), None);
        t.remove(5);
        t.remove(0);
        assert_eq!(t.get(5), None);
        assert_eq!(t.get(0), None);
        assert!(t.wide.len() == 1, "removed wide ids leave the side map");
        t.remove(1000);
    }
}
