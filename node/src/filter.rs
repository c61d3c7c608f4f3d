//! Payload filters: in-memory payload indexes and evaluation of a
//! `shoal.v1.Filter` to the bitmap of point versions (offsets) it allows.
//!
//! Indexed conditions (keyword/numeric/bool match, match-any, range on a
//! field declared in `CollectionConfig.payload_indexes`) are answered from
//! [`PayloadIndex`]; every other condition scans the shard's stored payloads
//! once and tests [`matches`] on each point. Both paths implement the same
//! semantics (documented in `common.proto`); `matches` is also the oracle in
//! tests.
use std::collections::{HashMap, HashSet};

use roaring::{MultiOps, RoaringBitmap};
use shoal_proto::payload::{datetime_micros, geo_point, lookup};
use shoal_proto::v1::{condition, match_condition, value::Kind, Condition, Filter, GeoPoint, PayloadIndexSpec, PayloadIndexType, Struct, TextMatch, Value};
use shoal_proto::PointKey;

use crate::storage::{IndexEntry, IndexValue};
use crate::text::{TextIndex, Tokenizer};

/// The tokenizer of fields without a text index.
static DEFAULT_TOKENIZER: std::sync::LazyLock<Tokenizer> = std::sync::LazyLock::new(Tokenizer::default);

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
    numeric: HashMap<String, numeric::Numeric>,
    boolean: HashMap<String, [RoaringBitmap; 2]>,
    text: HashMap<String, TextIndex>,
}

impl PayloadIndex {
    pub fn new(specs: &[PayloadIndexSpec]) -> Self {
        let text = specs
            .iter()
            .filter(|s| s.r#type == PayloadIndexType::Text as i32)
            .map(|s| (s.key.clone(), TextIndex::new(&s.text.clone().unwrap_or_default())))
            .collect();
        let specs = specs
            .iter()
            .filter_map(|s| PayloadIndexType::try_from(s.r#type).ok().map(|t| (s.key.clone(), t)))
            .collect();
        PayloadIndex { specs, text, ..Default::default() }
    }

    /// True when the collection declares no payload index (no entries ever).
    pub fn is_unindexed(&self) -> bool {
        self.specs.is_empty()
    }

    /// True when a field has a text index (kept in memory only, from
    /// payloads: [`PayloadIndex::insert_text`]).
    pub fn has_text(&self) -> bool {
        !self.text.is_empty()
    }

    /// Adds version `offset`'s text fields to the text indexes.
    pub fn insert_text(&mut self, payload: Option<&Struct>, offset: u32) {
        for (key, t) in self.text.iter_mut() {
            t.insert(payload, key, offset);
        }
    }

    /// Removes version `offset` from the text indexes.
    pub fn remove_text(&mut self, offset: u32) {
        for t in self.text.values_mut() {
            t.remove(offset);
        }
    }

    /// The versions holding keyword `value` in field `key`, if `key` has a
    /// keyword index and some version holds it.
    pub fn keyword_points(&self, key: &str, value: &str) -> Option<&RoaringBitmap> {
        self.keyword.get(key)?.get(value)
    }

    /// The text index of `key`, if it has one.
    pub fn text_index(&self, key: &str) -> Option<&TextIndex> {
        self.text.get(key)
    }

    /// The tokenizer text conditions on `key` use.
    pub fn tokenizer(&self, key: &str) -> &Tokenizer {
        self.text.get(key).map_or(&DEFAULT_TOKENIZER, |t| &t.tokenizer)
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
                    (PayloadIndexType::Datetime, Some(Kind::StringValue(s))) => match datetime_micros(s) {
                        Some(t) => IndexValue::Number(t as f64),
                        None => continue,
                    },
                    (PayloadIndexType::Geo, _) => match geo_point(v) {
                        Some((lat, lon)) => IndexValue::Number(geo::code(lat, lon) as f64),
                        None => continue,
                    },
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
                self.numeric.entry(e.field.clone()).or_default().insert(*x, e.offset);
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
                    m.remove(*x, e.offset);
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
        // A NaN bound admits nothing (as in `matches`); under the total
        // order it would admit everything.
        if [lo, hi].iter().any(|b| matches!(b, Included(x) | Excluded(x) if x.is_nan())) {
            return RoaringBitmap::new();
        }
        let map = |b: std::ops::Bound<f64>| match b {
            Included(x) => Included(numeric::fold(x)),
            Excluded(x) => Excluded(numeric::fold(x)),
            Unbounded => Unbounded,
        };
        let (lo, hi) = (map(lo), map(hi));
        if let (Included(a) | Excluded(a), Included(b) | Excluded(b)) = (&lo, &hi) {
            // An empty range; `BTreeMap::range` panics on it when both
            // ends are the same excluded value (gt == lt once crashed a
            // delete by filter inside Raft apply).
            if a > b || (a == b && (matches!(lo, Excluded(_)) || matches!(hi, Excluded(_)))) {
                return RoaringBitmap::new();
            }
        }
        self.numeric.get(key).map(|m| m.range(lo, hi)).unwrap_or_default()
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
                (PayloadIndexType::Numeric, match_condition::Value::Float(x)) => {
                    // -0.0 and 0.0 are equal numbers but distinct index keys.
                    Some(if *x == 0.0 { self.numbers(&m.key, Included(-0.0), Included(0.0)) } else { self.numbers(&m.key, Included(*x), Included(*x)) })
                }
                (PayloadIndexType::Keyword, match_condition::Value::Prefix(p)) => Some(self.keyword.get(&m.key).into_iter().flatten().filter(|(v, _)| v.starts_with(p.as_str())).map(|(_, b)| b).union()),
                _ => None,
            },
            condition::Kind::Text(t) => {
                let idx = self.text.get(&t.key)?;
                let mode = TextMatch::try_from(t.mode).ok()?;
                if mode == TextMatch::Phrase {
                    return None;
                }
                Some(idx.lookup(&idx.tokenizer.tokens(&t.text), mode))
            }
            condition::Kind::DatetimeRange(r) if self.ty(&r.key)? == PayloadIndexType::Datetime => {
                let t = |s: &Option<String>| s.as_deref().and_then(datetime_micros).map(|x| x as f64);
                let lo = t(&r.gt).map(Excluded).or(t(&r.gte).map(Included)).unwrap_or(Unbounded);
                let hi = t(&r.lt).map(Excluded).or(t(&r.lte).map(Included)).unwrap_or(Unbounded);
                Some(self.numbers(&r.key, lo, hi))
            }
            condition::Kind::MatchAny(m) => match self.ty(&m.key)? {
                PayloadIndexType::Keyword if m.integers.is_empty() => {
                    let idx = self.keyword.get(&m.key);
                    Some(m.keywords.iter().filter_map(|s| idx.and_then(|x| x.get(s))).union())
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
        let num: usize = self.numeric.values().map(numeric::Numeric::memory_bytes).sum();
        let text: usize = self.text.values().map(TextIndex::memory_bytes).sum();
        kw + num + text
    }

    /// Candidates of a condition the index narrows but cannot decide, to
    /// be checked on their payloads: a PHRASE on a text-indexed field
    /// (versions holding every token), or a geo region on a geo-indexed
    /// field (versions in the cells covering it, [`geo`]).
    pub fn candidates(&self, c: &Condition) -> Option<RoaringBitmap> {
        use std::ops::Bound::Included;
        if let Some((key, boxes)) = geo::boxes(c) {
            if self.ty(key)? != PayloadIndexType::Geo {
                return None;
            }
            let mut out = RoaringBitmap::new();
            for (lat0, lat1, lon0, lon1) in boxes {
                for (a, b) in geo::cover(lat0, lat1, lon0, lon1) {
                    out |= self.numbers(key, Included(a as f64), Included(b as f64));
                }
            }
            return Some(out);
        }
        let Some(condition::Kind::Text(t)) = &c.kind else { return None };
        let idx = self.text.get(&t.key)?;
        (t.mode == TextMatch::Phrase as i32).then(|| idx.lookup(&idx.tokenizer.tokens(&t.text), TextMatch::Phrase))
    }
}

/// Mean Earth radius (IUGG), meters.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in meters (haversine).
pub fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let (dla, dlo) = ((b.0 - a.0).to_radians(), (b.1 - a.1).to_radians());
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

fn in_box(p: (f64, f64), tl: &GeoPoint, br: &GeoPoint) -> bool {
    let lat_ok = p.0 <= tl.lat && p.0 >= br.lat;
    let lon_ok = if tl.lon <= br.lon { p.1 >= tl.lon && p.1 <= br.lon } else { p.1 >= tl.lon || p.1 <= br.lon };
    lat_ok && lon_ok
}

/// Point in polygon by ray casting on (lon, lat); points on an edge count
/// as inside.
fn in_polygon(p: (f64, f64), ring: &[GeoPoint]) -> bool {
    let (y, x) = p;
    let n = ring.len();
    let mut inside = false;
    for i in 0..n {
        let (a, b) = (&ring[i], &ring[(i + 1) % n]);
        // On the edge a-b?
        let cross = (b.lon - a.lon) * (y - a.lat) - (b.lat - a.lat) * (x - a.lon);
        if cross.abs() < 1e-12 && x >= a.lon.min(b.lon) && x <= a.lon.max(b.lon) && y >= a.lat.min(b.lat) && y <= a.lat.max(b.lat) {
            return true;
        }
        if (a.lat > y) != (b.lat > y) && x < (b.lon - a.lon) * (y - a.lat) / (b.lat - a.lat) + a.lon {
            inside = !inside;
        }
    }
    inside
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
            (Some(match_condition::Value::Prefix(p)), Some(Kind::StringValue(x))) => x.starts_with(p.as_str()),
            (Some(match_condition::Value::Float(f)), _) => number(v) == Some(*f),
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
        Some(condition::Kind::Text(t)) => {
            let Ok(mode) = TextMatch::try_from(t.mode) else { return false };
            payload_text_matches(&DEFAULT_TOKENIZER, payload, &t.key, &t.text, mode)
        }
        Some(condition::Kind::ValuesCount(v)) => {
            let n = get(&v.key).iter().filter(|v| !matches!(v.kind, None | Some(Kind::NullValue(_)))).count() as u64;
            v.gt.is_none_or(|b| n > b as u64) && v.gte.is_none_or(|b| n >= b as u64) && v.lt.is_none_or(|b| n < b as u64) && v.lte.is_none_or(|b| n <= b as u64)
        }
        Some(condition::Kind::IsEmpty(e)) => get(&e.key).iter().all(|v| matches!(v.kind, None | Some(Kind::NullValue(_)))),
        Some(condition::Kind::DatetimeRange(r)) => {
            let b = |s: &Option<String>| s.as_deref().map(datetime_micros);
            let (gt, gte, lt, lte) = (b(&r.gt), b(&r.gte), b(&r.lt), b(&r.lte));
            // A bound that does not parse matches nothing (validation refuses it first).
            if [gt, gte, lt, lte].iter().any(|x| matches!(x, Some(None))) {
                return false;
            }
            get(&r.key).iter().filter_map(|v| if let Some(Kind::StringValue(s)) = &v.kind { datetime_micros(s) } else { None }).any(|x| {
                gt.flatten().is_none_or(|b| x > b) && gte.flatten().is_none_or(|b| x >= b) && lt.flatten().is_none_or(|b| x < b) && lte.flatten().is_none_or(|b| x <= b)
            })
        }
        Some(condition::Kind::GeoRadius(g)) => {
            let Some(c) = g.center else { return false };
            get(&g.key).iter().filter_map(|v| geo_point(v)).any(|p| haversine_m((c.lat, c.lon), p) <= g.radius_m)
        }
        Some(condition::Kind::GeoBoundingBox(g)) => {
            let (Some(tl), Some(br)) = (g.top_left, g.bottom_right) else { return false };
            get(&g.key).iter().filter_map(|v| geo_point(v)).any(|p| in_box(p, &tl, &br))
        }
        Some(condition::Kind::GeoPolygon(g)) => get(&g.key).iter().filter_map(|v| geo_point(v)).any(|p| in_polygon(p, &g.exterior)),
    }
}

fn payload_text_matches(tok: &Tokenizer, payload: &Struct, key: &str, text: &str, mode: TextMatch) -> bool {
    tok.payload_matches(payload, key, &tok.tokens(text), mode)
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
    /// The `candidates` whose payload satisfies `c`. A source over stored
    /// points reads only the candidates.
    fn verify(&self, c: &Condition, candidates: RoaringBitmap) -> RoaringBitmap {
        candidates & self.scan(c)
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
            _ => match (src.index().candidates(c), src.index().lookup(c)) {
                (Some(cand), _) => {
                    leaves.insert(c as *const Condition, src.verify(c, cand & src.universe()));
                }
                (None, Some(b)) => {
                    leaves.insert(c as *const Condition, b & src.universe());
                }
                (None, None) => unindexed.push(c),
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
    /// A text condition, its text tokenized once with the field's tokenizer.
    Text { key: &'a str, tokens: Vec<String>, mode: TextMatch, tokenizer: &'a Tokenizer },
    Other(&'a Condition),
}

impl<'a> Prepared<'a> {
    /// `idx` gives text conditions their field's tokenizer.
    pub fn new(c: &'a Condition, idx: &'a PayloadIndex) -> Self {
        match &c.kind {
            Some(condition::Kind::MatchAny(m)) => Prepared::AnyOf { key: &m.key, keywords: m.keywords.iter().map(String::as_str).collect(), integers: m.integers.iter().copied().collect() },
            Some(condition::Kind::Text(t)) => {
                let tokenizer = idx.tokenizer(&t.key);
                Prepared::Text { key: &t.key, tokens: tokenizer.tokens(&t.text), mode: TextMatch::try_from(t.mode).unwrap_or(TextMatch::All), tokenizer }
            }
            _ => Prepared::Other(c),
        }
    }

    /// Same answer as [`matches`] (text: with the field's tokenizer).
    pub fn matches(&self, id: &PointKey, payload: Option<&Struct>) -> bool {
        match self {
            Prepared::Other(c) => matches(c, id, payload),
            Prepared::Text { key, tokens, mode, tokenizer } => payload.is_some_and(|p| tokenizer.payload_matches(p, key, tokens, *mode)),
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

pub mod geo;
mod numeric;
#[cfg(test)]
mod tests;
