//! In-memory [`KvEngine`]: a `BTreeMap` per column family. Writes are atomic
//! (one lock); `sync` is meaningless. For tests and ephemeral nodes.
use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{Cf, KeyValue, KvEngine, KvOp};
use crate::error::StorageError;

#[derive(Default)]
pub struct MemoryEngine {
    cfs: RwLock<[BTreeMap<Vec<u8>, Vec<u8>>; 4]>,
}

fn idx(cf: Cf) -> usize {
    cf as usize
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemoryEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.cfs.read()[idx(cf)].get(key).cloned())
    }

    fn write(&self, ops: Vec<KvOp>, _sync: bool) -> Result<(), StorageError> {
        let mut cfs = self.cfs.write();
        for op in ops {
            match op {
                KvOp::Put(cf, k, v) => {
                    cfs[idx(cf)].insert(k, v);
                }
                KvOp::Delete(cf, k) => {
                    cfs[idx(cf)].remove(&k);
                }
                KvOp::DeleteRange(cf, s, e) => {
                    let m = &mut cfs[idx(cf)];
                    let doomed: Vec<Vec<u8>> = m.range::<[u8], _>((Bound::Included(&s[..]), Bound::Excluded(&e[..]))).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StorageError> {
        let cfs = self.cfs.read();
        for (k, v) in cfs[idx(cf)].range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let cfs = self.cfs.read();
        Ok(cfs[idx(cf)].range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
