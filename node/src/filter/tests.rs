//! Filter evaluation through payload indexes and scans agrees with the
//! per-point reference semantics, on random payloads and random filters.
use proptest::prelude::*;
use serde_json::json;
use shoal_proto::v1::*;

use super::*;

struct Src {
    points: Vec<(PointKey, Struct)>,
    universe: RoaringBitmap,
    index: PayloadIndex,
}

impl FilterSource for Src {
    fn universe(&self) -> &RoaringBitmap {
        &self.universe
    }
    fn index(&self) -> &PayloadIndex {
        &self.index
    }
    fn offset_of(&self, id: &PointKey) -> Option<u32> {
        self.points.iter().position(|(k, _)| k == id).map(|i| i as u32)
    }
    fn scan(&self, c: &Condition) -> RoaringBitmap {
        self.points.iter().enumerate().filter(|(_, (k, p))| matches(c, k, Some(p))).map(|(i, _)| i as u32).collect()
    }
    // One pass with prepared conditions, as the shard does: the random
    // filter tests check it against the reference semantics.
    fn scan_many(&self, cs: &[&Condition]) -> Vec<RoaringBitmap> {
        let prepared: Vec<Prepared> = cs.iter().map(|c| Prepared::new(c, &self.index)).collect();
        let mut out = vec![RoaringBitmap::new(); cs.len()];
        for (i, (k, p)) in self.points.iter().enumerate() {
            for (o, c) in out.iter_mut().zip(&prepared) {
                if c.matches(k, Some(p)) {
                    o.insert(i as u32);
                }
            }
        }
        out
    }
}

fn specs() -> Vec<PayloadIndexSpec> {
    vec![
        PayloadIndexSpec { key: "section".into(), r#type: PayloadIndexType::Keyword as i32, text: None },
        PayloadIndexSpec { key: "size".into(), r#type: PayloadIndexType::Numeric as i32, text: None },
        PayloadIndexSpec { key: "ok".into(), r#type: PayloadIndexType::Bool as i32, text: None },
        PayloadIndexSpec { key: "tags".into(), r#type: PayloadIndexType::Keyword as i32, text: None },
    ]
}

fn src(payloads: Vec<serde_json::Value>) -> Src {
    let mut index = PayloadIndex::new(&specs());
    let points: Vec<(PointKey, Struct)> =
        payloads.iter().enumerate().map(|(i, p)| (PointKey::Num(i as u64 * 3), Struct::try_from(p).unwrap())).collect();
    for (i, (_, p)) in points.iter().enumerate() {
        for e in index.entries_for(Some(p), i as u32) {
            index.insert(&e);
        }
    }
    Src { universe: (0..points.len() as u32).collect(), points, index }
}

fn reference(f: &Filter, s: &Src) -> RoaringBitmap {
    s.points.iter().enumerate().filter(|(_, (k, p))| filter_matches(f, k, Some(p))).map(|(i, _)| i as u32).collect()
}

fn kw(key: &str, v: &str) -> Condition {
    Condition { kind: Some(condition::Kind::Match(MatchCondition { key: key.into(), value: Some(match_condition::Value::Keyword(v.into())) })) }
}
fn int(key: &str, v: i64) -> Condition {
    Condition { kind: Some(condition::Kind::Match(MatchCondition { key: key.into(), value: Some(match_condition::Value::Integer(v)) })) }
}
fn range(key: &str, gte: Option<f64>, lt: Option<f64>) -> Condition {
    Condition { kind: Some(condition::Kind::Range(RangeCondition { key: key.into(), gte, lt, ..Default::default() })) }
}
fn nested(f: Filter) -> Condition {
    Condition { kind: Some(condition::Kind::Filter(f)) }
}

#[test]
fn semantics_table() {
    let s = src(vec![
        json!({"section": "net", "size": 10, "ok": true, "tags": ["a", "b"], "meta": {"lang": "en"}}),
        json!({"section": "web", "size": 20.5, "ok": false, "tags": [], "n": null}),
        json!({"section": "net", "size": "big", "meta": {"lang": ["de", "en"]}}),
        json!({}),
    ]);
    let bits = |f: Filter| evaluate(&f, &s).iter().collect::<Vec<_>>();
    let must = |c: Vec<Condition>| Filter { must: c, ..Default::default() };
    assert_eq!(bits(Filter::default()), vec![0, 1, 2, 3], "empty filter matches all");
    assert_eq!(bits(must(vec![kw("section", "net")])), vec![0, 2]);
    assert_eq!(bits(must(vec![kw("tags", "b")])), vec![0], "array elements match");
    assert_eq!(bits(must(vec![kw("meta.lang", "en")])), vec![0, 2], "nested path through arrays (unindexed scan)");
    assert_eq!(bits(must(vec![int("size", 10)])), vec![0]);
    assert_eq!(bits(must(vec![range("size", Some(10.0), None)])), vec![0, 1], "strings never match a range");
    assert_eq!(bits(must(vec![range("size", None, Some(10.0))])), Vec::<u32>::new(), "lt is exclusive");
    assert_eq!(
        bits(Filter { should: vec![kw("section", "web"), int("size", 10)], must_not: vec![kw("tags", "a")], ..Default::default() }),
        vec![1]
    );
    let exists = |k: &str| Condition { kind: Some(condition::Kind::Exists(ExistsCondition { key: k.into() })) };
    let is_null = |k: &str| Condition { kind: Some(condition::Kind::IsNull(IsNullCondition { key: k.into() })) };
    assert_eq!(bits(must(vec![exists("tags")])), vec![0], "empty array does not exist");
    assert_eq!(bits(must(vec![is_null("n")])), vec![1]);
    assert_eq!(bits(Filter { must_not: vec![exists("section")], ..Default::default() }), vec![3]);
    let has = Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: vec![3u64.into(), 9u64.into(), 4u64.into()] })) };
    assert_eq!(bits(must(vec![has])), vec![1, 3]);
    let ok = Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "ok".into(), value: Some(match_condition::Value::Boolean(false)) })) };
    assert_eq!(bits(must(vec![ok])), vec![1]);
    let any = Condition { kind: Some(condition::Kind::MatchAny(MatchAnyCondition { key: "section".into(), keywords: vec!["web".into(), "x".into()], integers: vec![] })) };
    assert_eq!(bits(must(vec![any])), vec![1]);
    assert_eq!(bits(must(vec![nested(Filter { should: vec![kw("section", "web"), kw("section", "zzz")], ..Default::default() })])), vec![1]);
}

#[test]
fn index_removal_forgets_versions() {
    let mut s = src(vec![json!({"section": "net", "size": 1}), json!({"section": "net", "size": 1})]);
    for e in s.index.entries_for(Some(&s.points[0].1.clone()), 0) {
        s.index.remove(&e);
    }
    assert_eq!(s.index.lookup(&kw("section", "net")).unwrap().iter().collect::<Vec<_>>(), vec![1]);
    assert_eq!(s.index.lookup(&range("size", Some(0.0), None)).unwrap().iter().collect::<Vec<_>>(), vec![1]);
}

fn arb_payload() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(prop::sample::select(vec!["net", "web", "libs", "x"])),
        prop::option::of(prop_oneof![(-5i64..50).prop_map(|i| json!(i)), (-5.0f64..50.0).prop_map(|f| json!(f)), Just(json!("s"))]),
        prop::option::of(any::<bool>()),
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3),
    )
        .prop_map(|(sec, size, ok, tags)| {
            let mut m = serde_json::Map::new();
            if let Some(s) = sec {
                m.insert("section".into(), json!(s));
            }
            if let Some(s) = size {
                m.insert("size".into(), s);
            }
            if let Some(b) = ok {
                m.insert("ok".into(), json!(b));
            }
            m.insert("tags".into(), json!(tags));
            serde_json::Value::Object(m)
        })
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["net", "web", "zzz"]).prop_map(|v| kw("section", v)),
        prop::sample::select(vec!["a", "c"]).prop_map(|v| kw("tags", v)),
        (-5i64..50).prop_map(|i| int("size", i)),
        ((-5.0f64..50.0), (0.0f64..30.0)).prop_map(|(a, w)| range("size", Some(a), Some(a + w))),
        any::<bool>().prop_map(|b| Condition {
            kind: Some(condition::Kind::Match(MatchCondition { key: "ok".into(), value: Some(match_condition::Value::Boolean(b)) }))
        }),
        Just(Condition { kind: Some(condition::Kind::Exists(ExistsCondition { key: "size".into() })) }),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        (prop::collection::vec(inner.clone(), 0..3), prop::collection::vec(inner.clone(), 0..3), prop::collection::vec(inner, 0..2))
            .prop_map(|(must, should, must_not)| nested(Filter { must, should, must_not }))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Index-backed evaluation equals the per-point reference semantics.
    #[test]
    fn indexed_evaluation_equals_reference(payloads in prop::collection::vec(arb_payload(), 1..40), c in arb_condition()) {
        let s = src(payloads);
        let f = Filter { must: vec![c], ..Default::default() };
        prop_assert_eq!(evaluate(&f, &s), reference(&f, &s));
    }
}

/// A point whose indexed list holds many values (with repeats) yields one
/// entry per distinct value, found in linear time: the old quadratic
/// de-duplication ran inside Raft apply on every replica, and took minutes
/// at this size (200,000 values: 2·10^10 comparisons).
#[test]
fn entries_for_deduplicates_long_lists_linearly() {
    let index = PayloadIndex::new(&specs());
    let tags: Vec<String> = (0..200_000).map(|i| format!("t{}", i % 100_000)).collect();
    let sizes: Vec<f64> = (0..200_000).map(|i| (i % 50_000) as f64).chain([0.0, -0.0]).collect();
    let p = Struct::try_from(&json!({"tags": tags, "size": sizes, "ok": [true, false, true]})).unwrap();
    let e = index.entries_for(Some(&p), 7);
    let count = |f: &str| e.iter().filter(|x| x.field == f).count();
    assert_eq!(count("tags"), 100_000);
    assert_eq!(count("size"), 50_000, "0.0 and -0.0 are one value");
    assert_eq!(count("ok"), 2);
    assert!(e.iter().all(|x| x.offset == 7));
}

/// The conditions added with the query API, each answered through an
/// index where one exists (text, datetime, keyword prefix, float match)
/// and by a scan otherwise, against hand-computed answers and the
/// reference semantics.
#[test]
fn new_conditions_indexed_and_scanned() {
    let specs = vec![
        PayloadIndexSpec { key: "body".into(), r#type: PayloadIndexType::Text as i32, text: Some(TextIndexParams { stemmer: "english".into(), stop_words: "english".into(), keep_accents: false }) },
        PayloadIndexSpec { key: "at".into(), r#type: PayloadIndexType::Datetime as i32, text: None },
        PayloadIndexSpec { key: "name".into(), r#type: PayloadIndexType::Keyword as i32, text: None },
        PayloadIndexSpec { key: "price".into(), r#type: PayloadIndexType::Numeric as i32, text: None },
    ];
    let payloads = [
        json!({"body": "The quick brown foxes jump", "plain": "The quick brown fox", "at": "2026-01-01T00:00:00Z", "name": "alpha-1", "price": 1.5, "tags": ["a", "b"], "loc": {"lat": 52.52, "lon": 13.405}}),
        json!({"body": "Brown quick dogs", "plain": "brown quick dog", "at": "2026-06-01T12:00:00+02:00", "name": "beta", "price": 2, "tags": [], "loc": {"lat": 48.8566, "lon": 2.3522}}),
        json!({"body": ["lazy dog", "a café"], "at": "not a date", "name": "alphabet", "price": -0.0, "tags": "x", "loc": {"lat": -33.87, "lon": 151.21}}),
        json!({"tags": null, "price": 0}),
    ];
    let mut index = PayloadIndex::new(&specs);
    let points: Vec<(PointKey, Struct)> = payloads.iter().enumerate().map(|(i, p)| (PointKey::Num(i as u64), Struct::try_from(p).unwrap())).collect();
    for (i, (_, p)) in points.iter().enumerate() {
        for e in index.entries_for(Some(p), i as u32) {
            index.insert(&e);
        }
        index.insert_text(Some(p), i as u32);
    }
    let s = Src { universe: (0..points.len() as u32).collect(), points, index };
    let c = |k: condition::Kind| Condition { kind: Some(k) };
    let text = |key: &str, t: &str, mode: TextMatch| c(condition::Kind::Text(TextCondition { key: key.into(), text: t.into(), mode: mode as i32 }));
    let m = |key: &str, v: match_condition::Value| c(condition::Kind::Match(MatchCondition { key: key.into(), value: Some(v) }));
    let dt = |gte: Option<&str>, lt: Option<&str>| c(condition::Kind::DatetimeRange(DatetimeRangeCondition { key: "at".into(), gte: gte.map(String::from), lt: lt.map(String::from), ..Default::default() }));
    let count = |gte: Option<u32>, lte: Option<u32>| c(condition::Kind::ValuesCount(ValuesCountCondition { key: "tags".into(), gte, lte, ..Default::default() }));
    let geo = |lat: f64, lon: f64| Some(GeoPoint { lat, lon });
    let cases: Vec<(Condition, Vec<u32>, &str)> = vec![
        (text("body", "fox quick", TextMatch::All), vec![0], "stemmed: foxes -> fox"),
        (text("body", "the dog", TextMatch::All), vec![1, 2], "stop word dropped, list elements"),
        (text("body", "Café", TextMatch::Any), vec![2], "folded accents"),
        (text("body", "quick brown", TextMatch::Phrase), vec![0], "phrase in order only"),
        (text("body", "brown quick", TextMatch::Phrase), vec![1], ""),
        (text("plain", "quick fox", TextMatch::All), vec![0], "unindexed: default tokenizer, no stemming"),
        (text("plain", "quick brown", TextMatch::Phrase), vec![0], "unindexed phrase"),
        (text("plain", "brown quick", TextMatch::Phrase), vec![1], "unindexed phrase, other order"),
        (m("name", match_condition::Value::Prefix("alpha".into())), vec![0, 2], "prefix"),
        (m("price", match_condition::Value::Float(1.5)), vec![0], "float"),
        (m("price", match_condition::Value::Float(0.0)), vec![2, 3], "-0.0 equals 0"),
        (m("price", match_condition::Value::Float(2.0)), vec![1], "integer value equals float"),
        (dt(Some("2026-01-01"), Some("2026-06-01T10:00:00Z")), vec![0], "offset-aware; bad dates never match"),
        (dt(Some("2026-06-01T10:00:00Z"), None), vec![1], "inclusive lower bound"),
        (count(Some(2), None), vec![0], "values_count counts list elements"),
        (count(None, Some(0)), vec![1, 3], "empty list and null count 0"),
        (c(condition::Kind::IsEmpty(IsEmptyCondition { key: "tags".into() })), vec![1, 3], "empty list, null"),
        (c(condition::Kind::IsEmpty(IsEmptyCondition { key: "nothing".into() })), vec![0, 1, 2, 3], "absent"),
        (c(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: geo(50.11, 8.68), radius_m: 500_000.0 })), vec![0, 1], "Berlin 424 km and Paris 479 km from Frankfurt"),
        (c(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: geo(50.11, 8.68), radius_m: 450_000.0 })), vec![0], ""),
        (c(condition::Kind::GeoBoundingBox(GeoBoundingBoxCondition { key: "loc".into(), top_left: geo(60.0, 0.0), bottom_right: geo(40.0, 20.0) })), vec![0, 1], "box"),
        (c(condition::Kind::GeoBoundingBox(GeoBoundingBoxCondition { key: "loc".into(), top_left: geo(0.0, 150.0), bottom_right: geo(-40.0, -170.0) })), vec![2], "box across the antimeridian"),
        (c(condition::Kind::GeoPolygon(GeoPolygonCondition { key: "loc".into(), exterior: vec![GeoPoint { lat: 45.0, lon: 0.0 }, GeoPoint { lat: 55.0, lon: 0.0 }, GeoPoint { lat: 55.0, lon: 10.0 }, GeoPoint { lat: 45.0, lon: 10.0 }] })), vec![1], "polygon"),
    ];
    for (cond, want, why) in cases {
        let f = Filter { must: vec![cond.clone()], ..Default::default() };
        assert_eq!(evaluate(&f, &s).iter().collect::<Vec<_>>(), want, "{why}: {cond:?}");
        // The reference (default tokenizer) agrees wherever the field has no
        // custom tokenizer.
        if !matches!(&cond.kind, Some(condition::Kind::Text(t)) if t.key == "body") {
            assert_eq!(reference(&f, &s).iter().collect::<Vec<_>>(), want, "reference, {why}");
        }
    }
    assert!((haversine_m((50.11, 8.68), (52.52, 13.405)) - 424_000.0).abs() < 5_000.0);
}

/// Empty ranges (equal bounds with one excluded) match nothing and do not
/// panic: `BTreeMap::range` panics on an empty excluded range, and a
/// delete by such a filter once panicked inside Raft apply.
#[test]
fn empty_ranges_match_nothing() {
    let s = src(vec![json!({"size": 5}), json!({"size": 6})]);
    let f = |r: RangeCondition| Filter { must: vec![Condition { kind: Some(condition::Kind::Range(r)) }], ..Default::default() };
    for r in [
        RangeCondition { key: "size".into(), gt: Some(5.0), lt: Some(5.0), ..Default::default() },
        RangeCondition { key: "size".into(), gte: Some(5.0), lt: Some(5.0), ..Default::default() },
        RangeCondition { key: "size".into(), gt: Some(5.0), lte: Some(5.0), ..Default::default() },
        RangeCondition { key: "size".into(), gt: Some(6.0), lt: Some(5.0), ..Default::default() },
        // NaN bounds admit nothing, indexed or not (under f64's total
        // order they would admit every value).
        RangeCondition { key: "size".into(), lt: Some(f64::NAN), ..Default::default() },
        RangeCondition { key: "size".into(), gte: Some(-f64::NAN), ..Default::default() },
    ] {
        assert!(evaluate(&f(r.clone()), &s).is_empty(), "{r:?}");
        assert!(reference(&f(r), &s).is_empty());
    }
    let point = RangeCondition { key: "size".into(), gte: Some(5.0), lte: Some(5.0), ..Default::default() };
    assert_eq!(evaluate(&f(point), &s).iter().collect::<Vec<_>>(), vec![0]);
}

/// Geo conditions answered through the geo index (cell candidates checked
/// exactly) equal the reference on random points, radii, boxes and
/// polygons, near the poles and across the antimeridian included.
#[test]
fn geo_index_equals_the_reference() {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(11);
    let spec = vec![PayloadIndexSpec { key: "loc".into(), r#type: PayloadIndexType::Geo as i32, text: None }];
    let mut index = PayloadIndex::new(&spec);
    let mut points = vec![];
    for i in 0..3000u32 {
        // Half clustered near a few places (dense cells), half anywhere.
        let (lat, lon) = if i % 2 == 0 {
            let c = [(52.5, 13.4), (-33.9, 151.2), (0.0, 179.9), (89.5, 0.0)][(i / 2 % 4) as usize];
            (f64::clamp(c.0 + r.random_range(-0.5..0.5), -90.0, 90.0), (c.1 + r.random_range(-0.5f64..0.5) + 540.0) % 360.0 - 180.0)
        } else {
            (r.random_range(-90.0..90.0), r.random_range(-180.0..180.0))
        };
        let p = Struct::try_from(&json!({"loc": {"lat": lat, "lon": lon}})).unwrap();
        for e in index.entries_for(Some(&p), i) {
            index.insert(&e);
        }
        points.push((PointKey::Num(i as u64), p));
    }
    let s = Src { universe: (0..points.len() as u32).collect(), points, index };
    let gp = |lat: f64, lon: f64| GeoPoint { lat, lon };
    let mut conds = vec![];
    for _ in 0..60 {
        let (lat, lon) = (r.random_range(-89.0..89.0), r.random_range(-180.0..180.0));
        let radius_m = [500.0, 20_000.0, 300_000.0, 3_000_000.0][r.random_range(0..4)];
        conds.push(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: Some(gp(lat, lon)), radius_m }));
        let (w, h) = (r.random_range(0.1..40.0), r.random_range(0.1..30.0));
        let left = r.random_range(-180.0..180.0);
        let right = if left + w > 180.0 { left + w - 360.0 } else { left + w };
        conds.push(condition::Kind::GeoBoundingBox(GeoBoundingBoxCondition { key: "loc".into(), top_left: Some(gp((lat + h).min(90.0), left)), bottom_right: Some(gp(lat, right)) }));
        conds.push(condition::Kind::GeoPolygon(GeoPolygonCondition { key: "loc".into(), exterior: vec![gp(lat, lon), gp((lat + h).min(90.0), lon), gp(lat, (lon + w).min(180.0))] }));
    }
    // The clusters themselves, and a radius around a pole.
    conds.push(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: Some(gp(52.5, 13.4)), radius_m: 30_000.0 }));
    conds.push(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: Some(gp(0.0, -179.95)), radius_m: 50_000.0 }));
    conds.push(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: Some(gp(89.9, 100.0)), radius_m: 100_000.0 }));
    let mut nonempty = 0;
    for k in conds {
        let c = Condition { kind: Some(k) };
        assert!(s.index.candidates(&c).is_some(), "a geo condition on a geo-indexed field uses the index");
        let f = Filter { must: vec![c], ..Default::default() };
        let want = reference(&f, &s);
        nonempty += usize::from(!want.is_empty());
        assert_eq!(evaluate(&f, &s), want, "{f:?}");
    }
    assert!(nonempty > 20, "the conditions should match something: {nonempty}");
}
