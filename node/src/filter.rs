//! Payload filters: in-memory payload indexes and evaluation of a
//! `shoal.v1.Filter` to the bitmap of point versions (offsets) it allows.
//!
//! Indexed conditions (keyword/numeric/bool match, match-any, range on a
//! field declared in `CollectionConfig.payload_indexes`) are answered from
//! [`PayloadIndex`]; every other condition scans the shard's stored payloads
//! once and tests [`matches`] on each point. Both paths implement the same
//! semantics (documented in `common.proto`); `matches` is also the oracle in
//! tests.
use std::collections::{BTreeMap, HashMap, HashSet};

use roaring::RoaringBitmap;
use shoal_proto::payload::lookup;
use shoal_proto::v1::{condition, match_condition, value::Kind, Condition, Filter, PayloadIndexSpec, PayloadIndexType, Struct, Value};
use shoal_proto::PointKey;

use crate::storage::{IndexEntry, IndexValue};

/// f64 with a total order, for the numeric index.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// In-memory payload indexes of one shard.
#[derive(Default)]
pub struct PayloadIndex {
    specs: HashMap<String, PayloadIndexType>,
    keyword: HashMap<String, HashMap<String, RoaringBitmap>>,
    numeric: HashMap<String, BTreeMap<OrdF64, RoaringBitmap>>,
    boolean: HashMap<String, [RoaringBitmap; 2]>,
}

impl PayloadIndex {
    pub fn new(specs: &[PayloadIndexSpec]) -> Self {
        let specs = specs
            .iter()
            .filter_map(|s| PayloadIndexType::try_from(s.r#type).ok().map(|t| (s.key.clone(), t)))
            .collect();
        PayloadIndex { specs, ..Default::default() }
    }

    /// True when the collection declares no payload index (no entries ever).
    pub fn is_unindexed(&self) -> bool {
        self.specs.is_empty()
    }

    /// The index entries a payload produces for point version `offset`.
    pub fn entries_for(&self, payload: Option<&Struct>, offset: u32) -> Vec<IndexEntry> {
        let Some(payload) = payload else { return vec![] };
        let mut out = vec![];
        let mut vals = vec![];
        // Distinct values per field, found by hash: linear in the values.
        // (A quadratic scan here, inside Raft apply on every replica and
        // again at every restart, let one write of a point with a long
        // indexed list stall a whole shard.)
        let mut seen: HashSet<(u8, u64, &str)> = HashSet::new();
        for (field, ty) in &self.specs {
            vals.clear();
            seen.clear();
            lookup(payload, field, &mut vals);
            for v in &vals {
                let value = match (ty, &v.kind) {
                    (PayloadIndexType::Keyword, Some(Kind::StringValue(s))) => IndexValue::Keyword(s.clone()),
                    (PayloadIndexType::Numeric, Some(Kind::IntegerValue(i))) => IndexValue::Number(*i as f64),
                    (PayloadIndexType::Numeric, Some(Kind::DoubleValue(d))) if d.is_finite() => IndexValue::Number(*d),
                    (PayloadIndexType::Bool, Some(Kind::BoolValue(b))) => IndexValue::Bool(*b),
                    _ => continue,
                };
                let id = match (&value, &v.kind) {
                    (IndexValue::Keyword(_), Some(Kind::StringValue(s))) => (0, 0, s.as_str()),
                    // -0.0 and 0.0 are one index value (as in storage).
                    (IndexValue::Number(x), _) => (1, if *x == 0.0 { 0 } else { x.to_bits() }, ""),
                    (IndexValue::Bool(b), _) => (2, *b as u64, ""),
                    _ => continue,
                };
                if seen.insert(id) {
                    out.push(IndexEntry { field: field.clone(), value, offset });
                }
            }
        }
        out
    }

    pub fn insert(&mut self, e: &IndexEntry) {
        match &e.value {
            IndexValue::Keyword(s) => {
                self.keyword.entry(e.field.clone()).or_default().entry(s.clone()).or_default().insert(e.offset);
            }
            IndexValue::Number(x) => {
                self.numeric.entry(e.field.clone()).or_default().entry(OrdF64(*x)).or_default().insert(e.offset);
            }
            IndexValue::Bool(b) => {
                self.boolean.entry(e.field.clone()).or_default()[*b as usize].insert(e.offset);
            }
        }
    }

    pub fn remove(&mut self, e: &IndexEntry) {
        match &e.value {
            IndexValue::Keyword(s) => {
                if let Some(m) = self.keyword.get_mut(&e.field) {
                    if let Some(b) = m.get_mut(s) {
                        b.remove(e.offset);
                        if b.is_empty() {
                            m.remove(s);
                        }
                    }
                }
            }
            IndexValue::Number(x) => {
                if let Some(m) = self.numeric.get_mut(&e.field) {
                    if let Some(b) = m.get_mut(&OrdF64(*x)) {
                        b.remove(e.offset);
                        if b.is_empty() {
                            m.remove(&OrdF64(*x));
                        }
                    }
                }
            }
            IndexValue::Bool(b) => {
                if let Some(m) = self.boolean.get_mut(&e.field) {
                    m[*b as usize].remove(e.offset);
                }
            }
        }
    }

    fn ty(&self, key: &str) -> Option<PayloadIndexType> {
        self.specs.get(key).copied()
    }

    fn numbers(&self, key: &str, lo: std::ops::Bound<f64>, hi: std::ops::Bound<f64>) -> RoaringBitmap {
        use std::ops::Bound::*;
        let map = |b: std::ops::Bound<f64>| match b {
            Included(x) => Included(OrdF64(x)),
            Excluded(x) => Excluded(OrdF64(x)),
            Unbounded => Unbounded,
        };
        let (lo, hi) = (map(lo), map(hi));
        if let (Included(a) | Excluded(a), Included(b) | Excluded(b)) = (&lo, &hi) {
            if a > b {
                return RoaringBitmap::new();
            }
        }
        let mut out = RoaringBitmap::new();
        if let Some(m) = self.numeric.get(key) {
            for (_, b) in m.range((lo, hi)) {
                out |= b;
            }
        }
        out
    }

    /// Answers `c` from the indexes, or None if they cannot.
    pub fn lookup(&self, c: &Condition) -> Option<RoaringBitmap> {
        use std::ops::Bound::*;
        match c.kind.as_ref()? {
            condition::Kind::Match(m) => match (self.ty(&m.key)?, m.value.as_ref()?) {
                (PayloadIndexType::Keyword, match_condition::Value::Keyword(s)) => {
                    Some(self.keyword.get(&m.key).and_then(|x| x.get(s)).cloned().unwrap_or_default())
                }
                (PayloadIndexType::Numeric, match_condition::Value::Integer(i)) => Some(self.numbers(&m.key, Included(*i as f64), Included(*i as f64))),
                (PayloadIndexType::Bool, match_condition::Value::Boolean(b)) => {
                    Some(self.boolean.get(&m.key).map(|x| x[*b as usize].clone()).unwrap_or_default())
                }
                _ => None,
            },
            condition::Kind::MatchAny(m) => match self.ty(&m.key)? {
                PayloadIndexType::Keyword if m.integers.is_empty() => {
                    let idx = self.keyword.get(&m.key);
                    let mut out = RoaringBitmap::new();
                    for s in &m.keywords {
                        if let Some(b) = idx.and_then(|x| x.get(s)) {
                            out |= b;
                        }
                    }
                    Some(out)
                }
                PayloadIndexType::Numeric if m.keywords.is_empty() => {
                    let mut out = RoaringBitmap::new();
                    for i in &m.integers {
                        out |= self.numbers(&m.key, Included(*i as f64), Included(*i as f64));
                    }
                    Some(out)
                }
                _ => None,
            },
            condition::Kind::Range(r) if self.ty(&r.key)? == PayloadIndexType::Numeric => {
                let lo = r.gt.map(Excluded).or(r.gte.map(Included)).unwrap_or(Unbounded);
                let hi = r.lt.map(Excluded).or(r.lte.map(Included)).unwrap_or(Unbounded);
                Some(self.numbers(&r.key, lo, hi))
            }
            _ => None,
        }
    }

    /// Rough bytes used, for status output.
    pub fn memory_bytes(&self) -> usize {
        let kw: usize = self.keyword.values().flat_map(|m| m.iter()).map(|(k, b)| k.len() + b.serialized_size()).sum();
        let num: usize = self.numeric.values().flat_map(|m| m.values()).map(|b| 8 + b.serialized_size()).sum();
        kw + num
    }
}

fn value_is_integer(v: &Value, i: i64) -> bool {
    match &v.kind {
        Some(Kind::IntegerValue(x)) => *x == i,
        Some(Kind::DoubleValue(d)) => *d == i as f64 && d.fract() == 0.0,
        _ => false,
    }
}

fn number(v: &Value) -> Option<f64> {
    match &v.kind {
        Some(Kind::IntegerValue(x)) => Some(*x as f64),
        Some(Kind::DoubleValue(d)) => Some(*d),
        _ => None,
    }
}

/// Does point (`id`, `payload`) satisfy condition `c`? The reference
/// semantics of every condition.
pub fn matches(c: &Condition, id: &PointKey, payload: Option<&Struct>) -> bool {
    let empty = Struct::default();
    let payload = payload.unwrap_or(&empty);
    let mut vals = vec![];
    let mut get = |key: &str| {
        vals.clear();
        lookup(payload, key, &mut vals);
        vals.clone()
    };
    match &c.kind {
        None => false,
        Some(condition::Kind::Filter(f)) => filter_matches(f, id, Some(payload)),
        Some(condition::Kind::Match(m)) => get(&m.key).iter().any(|v| match (&m.value, &v.kind) {
            (Some(match_condition::Value::Keyword(s)), Some(Kind::StringValue(x))) => s == x,
            (Some(match_condition::Value::Integer(i)), _) => value_is_integer(v, *i),
            (Some(match_condition::Value::Boolean(b)), Some(Kind::BoolValue(x))) => b == x,
            _ => false,
        }),
        Some(condition::Kind::MatchAny(m)) => get(&m.key).iter().any(|v| match &v.kind {
            Some(Kind::StringValue(x)) => m.keywords.iter().any(|k| k == x),
            _ => m.integers.iter().any(|i| value_is_integer(v, *i)),
        }),
        Some(condition::Kind::Range(r)) => get(&r.key).iter().filter_map(|v| number(v)).any(|x| {
            r.gt.is_none_or(|b| x > b) && r.gte.is_none_or(|b| x >= b) && r.lt.is_none_or(|b| x < b) && r.lte.is_none_or(|b| x <= b)
        }),
        Some(condition::Kind::Exists(e)) => get(&e.key).iter().any(|v| !matches!(v.kind, None | Some(Kind::NullValue(_)))),
        Some(condition::Kind::IsNull(e)) => get(&e.key).iter().any(|v| matches!(v.kind, None | Some(Kind::NullValue(_)))),
        Some(condition::Kind::HasId(h)) => h.ids.iter().any(|x| PointKey::try_from(x).is_ok_and(|k| k == *id)),
    }
}

/// Reference evaluation of a whole filter on one point.
pub fn filter_matches(f: &Filter, id: &PointKey, payload: Option<&Struct>) -> bool {
    f.must.iter().all(|c| matches(c, id, payload))
        && (f.should.is_empty() || f.should.iter().any(|c| matches(c, id, payload)))
        && !f.must_not.iter().any(|c| matches(c, id, payload))
}

/// What evaluation needs from a shard besides the payload index.
pub trait FilterSource {
    /// All live point versions.
    fn universe(&self) -> &RoaringBitmap;
    fn index(&self) -> &PayloadIndex;
    /// Offset of the live version of `id`, if any.
    fn offset_of(&self, id: &PointKey) -> Option<u32>;
    /// Offsets of live points whose payload satisfies `c` (full scan).
    fn scan(&self, c: &Condition) -> RoaringBitmap;
    /// Offsets of live points satisfying each of `cs`. A source over
    /// stored points does this in one pass, whatever the number of
    /// conditions.
    fn scan_many(&self, cs: &[&Condition]) -> Vec<RoaringBitmap> {
        cs.iter().map(|c| self.scan(c)).collect()
    }
}

/// Leaf results computed before the filter's tree is combined: indexed
/// leaves from the payload index, the others from one scan.
type Leaves = HashMap<*const Condition, RoaringBitmap>;

/// Evaluates `f` to the set of allowed live offsets.
///
/// Every leaf the payload index cannot answer is evaluated in a single pass
/// over the stored points ([`FilterSource::scan_many`]): a filter of many
/// unindexed conditions once scanned the shard once per condition, holding
/// its state lock throughout.
pub fn evaluate(f: &Filter, src: &dyn FilterSource) -> RoaringBitmap {
    let mut leaves = Leaves::new();
    let mut unindexed = Vec::new();
    collect_leaves(f, src, &mut leaves, &mut unindexed);
    if !unindexed.is_empty() {
        for (c, b) in unindexed.iter().zip(src.scan_many(&unindexed)) {
            leaves.insert(*c as *const Condition, b);
        }
    }
    eval_filter(f, src, &leaves)
}

fn collect_leaves<'a>(f: &'a Filter, src: &dyn FilterSource, leaves: &mut Leaves, unindexed: &mut Vec<&'a Condition>) {
    for c in f.must.iter().chain(&f.should).chain(&f.must_not) {
        match &c.kind {
            Some(condition::Kind::Filter(inner)) => collect_leaves(inner, src, leaves, unindexed),
            Some(condition::Kind::HasId(_)) | None => {}
            _ => match src.index().lookup(c) {
                Some(b) => {
                    leaves.insert(c as *const Condition, b & src.universe());
                }
                None => unindexed.push(c),
            },
        }
    }
}

fn eval_filter(f: &Filter, src: &dyn FilterSource, leaves: &Leaves) -> RoaringBitmap {
    let mut out = src.universe().clone();
    for c in &f.must {
        out &= eval_condition(c, src, leaves);
        if out.is_empty() {
            return out;
        }
    }
    if !f.should.is_empty() {
        let mut any = RoaringBitmap::new();
        for c in &f.should {
            any |= eval_condition(c, src, leaves);
        }
        out &= any;
    }
    for c in &f.must_not {
        if out.is_empty() {
            break;
        }
        out -= eval_condition(c, src, leaves);
    }
    out
}

fn eval_condition(c: &Condition, src: &dyn FilterSource, leaves: &Leaves) -> RoaringBitmap {
    match &c.kind {
        Some(condition::Kind::Filter(f)) => eval_filter(f, src, leaves),
        Some(condition::Kind::HasId(h)) => {
            h.ids.iter().filter_map(|x| PointKey::try_from(x).ok()).filter_map(|k| src.offset_of(&k)).collect::<RoaringBitmap>() & src.universe()
        }
        _ => leaves.get(&(c as *const Condition)).cloned().unwrap_or_default(),
    }
}

/// A condition prepared for testing many points: `match_any` lists become
/// hash sets (a 65,536-value list is not scanned once per point).
pub enum Prepared<'a> {
    AnyOf { key: &'a str, keywords: HashSet<&'a str>, integers: HashSet<i64> },
    Other(&'a Condition),
}

impl<'a> Prepared<'a> {
    pub fn new(c: &'a Condition) -> Self {
        match &c.kind {
            Some(condition::Kind::MatchAny(m)) => Prepared::AnyOf { key: &m.key, keywords: m.keywords.iter().map(String::as_str).collect(), integers: m.integers.iter().copied().collect() },
            _ => Prepared::Other(c),
        }
    }

    /// Same answer as [`matches`].
    pub fn matches(&self, id: &PointKey, payload: Option<&Struct>) -> bool {
        match self {
            Prepared::Other(c) => matches(c, id, payload),
            Prepared::AnyOf { key, keywords, integers } => {
                let Some(payload) = payload else { return false };
                let mut found = vec![];
                lookup(payload, key, &mut found);
                found.iter().any(|v| match &v.kind {
                    Some(Kind::StringValue(x)) => keywords.contains(x.as_str()),
                    Some(Kind::IntegerValue(i)) => integers.contains(i),
                    // Exact below 2^53; beyond, as the reference compares.
                    Some(Kind::DoubleValue(d)) if d.abs() < 9_007_199_254_740_992.0 => d.fract() == 0.0 && integers.contains(&(*d as i64)),
                    Some(Kind::DoubleValue(_)) => integers.iter().any(|i| value_is_integer(v, *i)),
                    _ => false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
