//! [`RowStore`]s over where a shard keeps its vectors: a full-precision
//! graph (usearch's own copy, read with `get`), a quantized graph's vector
//! file, and the pending set of versions not yet in a graph.
use std::collections::BTreeMap;

use super::RowStore;
use crate::index::vecfile::Reader;

/// The vectors a full-precision usearch graph holds, by key. usearch's
/// `get` maps a key only once its vector is stored (the vendored patch,
/// node/vendor/usearch/SHOAL.md), so this is safe beside inserts.
pub struct GraphRows<'a> {
    pub index: &'a usearch::Index,
    pub dim: usize,
}

impl RowStore for GraphRows<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        out.len() == self.dim && matches!(self.index.get(key, out), Ok(n) if n > 0)
    }
}

/// The full vectors of a quantized graph, by offset.
pub struct FileRows<'a> {
    pub reader: Reader<'a>,
    pub dim: usize,
}

impl RowStore for FileRows<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        match self.reader.get(key) {
            Some(v) if v.len() == out.len() => {
                out.copy_from_slice(v);
                true
            }
            _ => false,
        }
    }
}

/// Versions waiting for the graph (a shard's pending set), by offset.
pub struct MapRows<'a> {
    pub rows: &'a BTreeMap<u32, Vec<f32>>,
    pub dim: usize,
}

impl RowStore for MapRows<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        match u32::try_from(key).ok().and_then(|k| self.rows.get(&k)) {
            Some(v) if v.len() == out.len() => {
                out.copy_from_slice(v);
                true
            }
            _ => false,
        }
    }
}
