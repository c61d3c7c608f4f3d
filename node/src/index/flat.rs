//! Exact brute-force index with simsimd kernels: the oracle for recall and
//! equivalence tests, and a correct (if slow) index for tiny shards.
use std::collections::HashMap;
use std::path::Path;

use parking_lot::RwLock;

use super::{sort_hits, Allowed, Distance, Hit, Precision, VectorIndex};
use crate::error::IndexError;

enum Rows {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

struct Inner {
    keys: Vec<u64>,
    slot: HashMap<u64, usize>,
    rows: Rows,
}

pub struct FlatIndex {
    dim: usize,
    dist: Distance,
    inner: RwLock<Inner>,
}

impl FlatIndex {
    pub fn new(dim: usize, dist: Distance, precision: Precision) -> Self {
        let rows = match precision {
            Precision::F16 => Rows::F16(Vec::new()),
            _ => Rows::F32(Vec::new()),
        };
        FlatIndex { dim, dist, inner: RwLock::new(Inner { keys: vec![], slot: HashMap::new(), rows }) }
    }
}

impl VectorIndex for FlatIndex {
    fn dimension(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.inner.read().keys.len()
    }

    fn add(&self, key: u64, v: &[f32]) -> Result<(), IndexError> {
        if v.len() != self.dim {
            return Err(IndexError::Dimension { got: v.len(), want: self.dim });
        }
        let mut g = self.inner.write();
        if g.slot.contains_key(&key) {
            return Err(IndexError::Usearch(format!("duplicate key {key}")));
        }
        let at = g.keys.len();
        g.keys.push(key);
        g.slot.insert(key, at);
        match &mut g.rows {
            Rows::F32(r) => r.extend_from_slice(v),
            Rows::F16(r) => r.extend(v.iter().map(|x| half::f16::from_f32(*x))),
        }
        Ok(())
    }

    fn remove(&self, key: u64) -> Result<(), IndexError> {
        let mut g = self.inner.write();
        let Some(at) = g.slot.remove(&key) else { return Ok(()) };
        let last = g.keys.len() - 1;
        let dim = self.dim;
        g.keys.swap_remove(at);
        match &mut g.rows {
            Rows::F32(r) => swap_remove_row(r, at, last, dim),
            Rows::F16(r) => swap_remove_row(r, at, last, dim),
        }
        if at != last {
            let moved = g.keys[at];
            g.slot.insert(moved, at);
        }
        Ok(())
    }

    fn contains(&self, key: u64) -> bool {
        self.inner.read().slot.contains_key(&key)
    }

    fn search(&self, q: &[f32], k: usize, _ef: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        self.exact(q, k, allowed)
    }

    fn exact(&self, q: &[f32], k: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        if q.len() != self.dim {
            return Err(IndexError::Dimension { got: q.len(), want: self.dim });
        }
        let g = self.inner.read();
        let mut hits = Vec::new();
        match &g.rows {
            Rows::F32(r) => {
                for (i, key) in g.keys.iter().enumerate() {
                    if allowed.contains(*key) {
                        hits.push(Hit { key: *key, distance: self.dist.f32(q, &r[i * self.dim..(i + 1) * self.dim]) });
                    }
                }
            }
            Rows::F16(r) => {
                let q16: Vec<half::f16> = q.iter().map(|x| half::f16::from_f32(*x)).collect();
                for (i, key) in g.keys.iter().enumerate() {
                    if allowed.contains(*key) {
                        hits.push(Hit { key: *key, distance: self.dist.f16(&q16, &r[i * self.dim..(i + 1) * self.dim]) });
                    }
                }
            }
        }
        sort_hits(&mut hits, k);
        Ok(hits)
    }

    fn get(&self, key: u64, out: &mut [f32]) -> bool {
        let g = self.inner.read();
        let Some(&at) = g.slot.get(&key) else { return false };
        match &g.rows {
            Rows::F32(r) => out.copy_from_slice(&r[at * self.dim..(at + 1) * self.dim]),
            Rows::F16(r) => {
                for (o, x) in out.iter_mut().zip(&r[at * self.dim..(at + 1) * self.dim]) {
                    *o = x.to_f32();
                }
            }
        }
        true
    }

    fn memory_bytes(&self) -> usize {
        let g = self.inner.read();
        let rows = match &g.rows {
            Rows::F32(r) => r.capacity() * 4,
            Rows::F16(r) => r.capacity() * 2,
        };
        rows + g.keys.capacity() * 8 + g.slot.capacity() * 24
    }

    fn save(&self, _path: &Path) -> Result<(), IndexError> {
        // The flat index is rebuilt from storage; nothing to persist.
        Ok(())
    }
}

fn swap_remove_row<T: Copy>(r: &mut Vec<T>, at: usize, last: usize, dim: usize) {
    if at != last {
        let (head, tail) = r.split_at_mut(last * dim);
        head[at * dim..(at + 1) * dim].copy_from_slice(&tail[..dim]);
    }
    r.truncate(last * dim);
}
