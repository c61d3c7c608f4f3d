//! Sparse vectors: one inverted index per declared sparse vector of a
//! shard, scored by exact dot product.
//!
//! A posting list per dimension holds (offset, value) pairs; each version
//! of a point keeps its dimensions so that retiring it removes exactly its
//! postings. Scoring walks the query's dimensions and accumulates per
//! offset (a dense accumulator when the postings touched are many relative
//! to the shard, a hash map otherwise), then keeps the top k. Exact top-k
//! only: a pruned walk (WAND, MaxScore) is for when it measures faster.
use std::collections::HashMap;

use roaring::RoaringBitmap;
use shoal_proto::v1::SparseVector;

/// The inverted index of one named sparse vector in one shard.
#[derive(Default)]
pub struct SparseIndex {
    postings: HashMap<u32, Vec<(u32, f32)>>,
    /// Dimensions of each indexed version.
    docs: HashMap<u32, Vec<u32>>,
}

impl SparseIndex {
    /// Indexes version `offset`'s vector (a validated one: unique indices).
    pub fn insert(&mut self, offset: u32, v: &SparseVector) {
        if v.indices.is_empty() {
            return;
        }
        for (&d, &x) in v.indices.iter().zip(&v.values) {
            self.postings.entry(d).or_default().push((offset, x));
        }
        self.docs.insert(offset, v.indices.clone());
    }

    /// Removes version `offset` (no-op if it is not indexed).
    pub fn remove(&mut self, offset: u32) {
        let Some(dims) = self.docs.remove(&offset) else { return };
        for d in dims {
            if let Some(list) = self.postings.get_mut(&d) {
                if let Some(at) = list.iter().position(|(o, _)| *o == offset) {
                    list.swap_remove(at);
                }
                if list.is_empty() {
                    self.postings.remove(&d);
                }
            }
        }
    }

    /// Versions indexed (points holding this sparse vector), and the
    /// document frequency of each of `dims`; versions in `hidden` left out.
    pub fn stats(&self, dims: &[u32], hidden: Option<&RoaringBitmap>) -> (u64, Vec<u64>) {
        let shown = |o: &u32| hidden.is_none_or(|h| !h.contains(*o));
        let docs = match hidden {
            None => self.docs.len() as u64,
            Some(_) => self.docs.keys().filter(|o| shown(o)).count() as u64,
        };
        let df = dims.iter().map(|d| self.postings.get(d).map_or(0, |l| l.iter().filter(|(o, _)| shown(o)).count() as u64)).collect();
        (docs, df)
    }

    /// The `k` best (key, dot product) among `allowed` offsets (`None`:
    /// all), best first, ties by key (so a shard's cut agrees with a merge
    /// across shards). `bound` is one past the largest offset in use (the
    /// dense accumulator's size); `key_of` maps offsets to point keys.
    pub fn search<K: Ord + Copy>(&self, q: &SparseVector, allowed: Option<&RoaringBitmap>, k: usize, bound: u32, key_of: impl Fn(u32) -> Option<K>) -> Vec<(K, f32)> {
        let lists: Vec<(&Vec<(u32, f32)>, f32)> = q.indices.iter().zip(&q.values).filter_map(|(d, w)| self.postings.get(d).map(|l| (l, *w))).collect();
        let touched: usize = lists.iter().map(|(l, _)| l.len()).sum();
        let ok = |o: u32| allowed.is_none_or(|a| a.contains(o));
        let mut hits: Vec<(K, f32)> = if touched * 8 >= bound as usize {
            // Dense: one slot per offset, and which were touched.
            let mut acc = vec![0f32; bound as usize];
            let mut seen = RoaringBitmap::new();
            for (l, w) in &lists {
                for &(o, x) in l.iter() {
                    if (o as usize) < acc.len() && ok(o) {
                        acc[o as usize] += w * x;
                        seen.insert(o);
                    }
                }
            }
            seen.iter().filter_map(|o| key_of(o).map(|key| (key, acc[o as usize]))).collect()
        } else {
            let mut acc: HashMap<u32, f32> = HashMap::with_capacity(touched);
            for (l, w) in &lists {
                for &(o, x) in l.iter() {
                    if ok(o) {
                        *acc.entry(o).or_default() += w * x;
                    }
                }
            }
            acc.into_iter().filter_map(|(o, x)| key_of(o).map(|key| (key, x))).collect()
        };
        let by = |a: &(K, f32), b: &(K, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if hits.len() > k {
            hits.select_nth_unstable_by(k, by);
            hits.truncate(k);
        }
        hits.sort_unstable_by(by);
        hits
    }

    /// Postings a query walks (its work).
    pub fn work(&self, q: &SparseVector) -> u64 {
        q.indices.iter().filter_map(|d| self.postings.get(d)).map(|l| l.len() as u64).sum()
    }

    /// Approximate heap bytes.
    pub fn memory_bytes(&self) -> usize {
        self.postings.values().map(|l| l.capacity() * 8 + 32).sum::<usize>() + self.docs.values().map(|d| d.capacity() * 4 + 40).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn sv(pairs: &[(u32, f32)]) -> SparseVector {
        SparseVector { indices: pairs.iter().map(|p| p.0).collect(), values: pairs.iter().map(|p| p.1).collect() }
    }

    /// Exact dot products against an f64 reference, through inserts,
    /// removals and filters, with both accumulators.
    #[test]
    fn search_equals_brute_force() {
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let mut idx = SparseIndex::default();
        let mut docs: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        for o in 0..2000u32 {
            let n = r.random_range(0..12);
            let mut dims: Vec<u32> = (0..n).map(|_| r.random_range(0..300)).collect();
            dims.sort_unstable();
            dims.dedup();
            let pairs: Vec<(u32, f32)> = dims.into_iter().map(|d| (d, r.random_range(-1.0..2.0))).collect();
            idx.insert(o, &sv(&pairs));
            docs.insert(o, pairs);
        }
        for o in (0..2000u32).step_by(3) {
            idx.remove(o);
            docs.remove(&o);
        }
        idx.remove(99_999);
        let allowed: RoaringBitmap = (0..2000u32).filter(|o| o % 5 != 0).collect();
        assert_eq!(idx.stats(&[], None).0, docs.values().filter(|p| !p.is_empty()).count() as u64);
        for (qn, filter) in [(3, false), (40, false), (200, true), (3, true)] {
            let mut dims: Vec<u32> = (0..qn).map(|_| r.random_range(0..300)).collect();
            dims.sort_unstable();
            dims.dedup();
            let q: Vec<(u32, f32)> = dims.iter().map(|d| (*d, r.random_range(0.1..1.0))).collect();
            let a = filter.then_some(&allowed);
            let got = idx.search(&sv(&q), a, 10, 2000, Some);
            let mut want: Vec<(u32, f64)> = docs
                .iter()
                .filter(|(o, _)| a.is_none_or(|a| a.contains(**o)))
                .filter_map(|(o, p)| {
                    let hit: Vec<f64> = p.iter().filter_map(|(d, x)| q.iter().find(|(qd, _)| qd == d).map(|(_, w)| *w as f64 * *x as f64)).collect();
                    (!hit.is_empty()).then(|| (*o, hit.iter().sum()))
                })
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(10);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                // Tolerance: f32 accumulation of at most 12 products of
                // magnitude <= 2.
                assert!((g.1 as f64 - w.1).abs() <= 1e-5 * w.1.abs().max(1.0), "{g:?} vs {w:?}");
            }
        }
        let (_, df) = idx.stats(&[0, 150, 100_000], None);
        assert_eq!(df[2], 0);
        assert_eq!(df[1], docs.values().filter(|p| p.iter().any(|(d, _)| *d == 150)).count() as u64);
        let hidden: RoaringBitmap = (0..1000u32).collect();
        let (n, df) = idx.stats(&[150], Some(&hidden));
        assert_eq!(n, docs.iter().filter(|(o, p)| **o >= 1000 && !p.is_empty()).count() as u64);
        assert_eq!(df[0], docs.iter().filter(|(o, p)| **o >= 1000 && p.iter().any(|(d, _)| *d == 150)).count() as u64);
    }
}
