//! Filters from JSON.
//!
//! The form is the neutral one of dataset `filters.json` files, extended
//! with the remaining Shoal conditions:
//! `{"must": [...], "should": [...], "must_not": [...]}` of conditions
//! `{"key": K, "match": V}` (V a string, integer or bool),
//! `{"key": K, "match_any": [V...]}`, `{"key": K, "range": {"gt"|"gte"|"lt"|"lte": N}}`,
//! `{"key": K, "exists": true}`, `{"key": K, "is_null": true}`,
//! `{"has_id": [ID...]}` and `{"filter": {...}}` (nesting), and the
//! conditions of the query API (docs/query.md): `{"key": K, "match": 1.5}`
//! (a non-integer number matches as a float), `{"key": K, "prefix": S}`,
//! `{"key": K, "text": S}`, `{"key": K, "text_any": S}`,
//! `{"key": K, "phrase": S}`, `{"key": K, "values_count": {"gte": N...}}`,
//! `{"key": K, "is_empty": true}`,
//! `{"key": K, "datetime_range": {"gte": "2026-01-01T00:00:00Z"...}}`,
//! `{"key": K, "geo_radius": {"lat": A, "lon": B, "radius_m": R}}`,
//! `{"key": K, "geo_bounding_box": {"top_left": {"lat", "lon"}, "bottom_right": {...}}}`
//! and `{"key": K, "geo_polygon": [{"lat", "lon"}...]}`.
use serde_json::Value as J;
use shoal_proto::v1::*;

use crate::{ClientError, Result};

fn err(msg: impl Into<String>) -> ClientError {
    ClientError::Filter(msg.into())
}

pub fn from_json(v: &J) -> Result<Filter> {
    let o = v.as_object().ok_or_else(|| err("a filter must be a JSON object"))?;
    for k in o.keys() {
        if !matches!(k.as_str(), "must" | "should" | "must_not") {
            return Err(err(format!("unknown filter clause {k:?}: expected must, should or must_not")));
        }
    }
    let clause = |name: &str| -> Result<Vec<Condition>> {
        match o.get(name) {
            None => Ok(vec![]),
            Some(J::Array(a)) => a.iter().map(condition).collect(),
            Some(_) => Err(err(format!("{name} must be an array"))),
        }
    };
    Ok(Filter { must: clause("must")?, should: clause("should")?, must_not: clause("must_not")? })
}

fn id(v: &J) -> Result<PointId> {
    match v {
        J::Number(n) => n.as_u64().map(PointId::from).ok_or_else(|| err(format!("point id {n} is not an unsigned integer"))),
        J::String(s) => Ok(PointId { kind: Some(point_id::Kind::Uuid(s.clone())) }),
        _ => Err(err("point ids are unsigned integers or UUID strings")),
    }
}

fn condition(v: &J) -> Result<Condition> {
    let o = v.as_object().ok_or_else(|| err("a condition must be a JSON object"))?;
    if let Some(f) = o.get("filter") {
        return Ok(Condition { kind: Some(condition::Kind::Filter(from_json(f)?)) });
    }
    if let Some(ids) = o.get("has_id") {
        let ids = ids.as_array().ok_or_else(|| err("has_id must be an array"))?.iter().map(id).collect::<Result<_>>()?;
        return Ok(Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids })) });
    }
    let key = o.get("key").and_then(J::as_str).ok_or_else(|| err(format!("condition {v} has no string \"key\"")))?.to_string();
    let kind = if let Some(m) = o.get("match") {
        let value = match m {
            J::String(s) => match_condition::Value::Keyword(s.clone()),
            J::Bool(b) => match_condition::Value::Boolean(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => match_condition::Value::Integer(i),
                None => match_condition::Value::Float(n.as_f64().ok_or_else(|| err(format!("match value {n} is not a number")))?),
            },
            other => return Err(err(format!("match value {other} must be a string, integer or bool"))),
        };
        condition::Kind::Match(MatchCondition { key, value: Some(value) })
    } else if let Some(any) = o.get("match_any") {
        let (mut keywords, mut integers) = (vec![], vec![]);
        for x in any.as_array().ok_or_else(|| err("match_any must be an array"))? {
            match x {
                J::String(s) => keywords.push(s.clone()),
                J::Number(n) => integers.push(n.as_i64().ok_or_else(|| err(format!("match_any value {n} is not an integer")))?),
                other => return Err(err(format!("match_any value {other} must be a string or integer"))),
            }
        }
        condition::Kind::MatchAny(MatchAnyCondition { key, keywords, integers })
    } else if let Some(r) = o.get("range") {
        let r = r.as_object().ok_or_else(|| err("range must be an object"))?;
        let b = |n: &str| -> Result<Option<f64>> {
            r.get(n).map(|x| x.as_f64().ok_or_else(|| err(format!("range bound {n} must be a number")))).transpose()
        };
        condition::Kind::Range(RangeCondition { key, gt: b("gt")?, gte: b("gte")?, lt: b("lt")?, lte: b("lte")? })
    } else if let Some(p) = o.get("prefix") {
        condition::Kind::Match(MatchCondition { key, value: Some(match_condition::Value::Prefix(p.as_str().ok_or_else(|| err("prefix must be a string"))?.to_string())) })
    } else if let Some((t, mode)) = [("text", TextMatch::All), ("text_any", TextMatch::Any), ("phrase", TextMatch::Phrase)].iter().find_map(|(n, m)| o.get(*n).map(|t| (t, *m))) {
        condition::Kind::Text(TextCondition { key, text: t.as_str().ok_or_else(|| err("text, text_any and phrase take a string"))?.to_string(), mode: mode as i32 })
    } else if let Some(r) = o.get("values_count") {
        let r = r.as_object().ok_or_else(|| err("values_count must be an object"))?;
        let b = |n: &str| -> Result<Option<u32>> { r.get(n).map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| err(format!("values_count bound {n} must be a count")))).transpose() };
        condition::Kind::ValuesCount(ValuesCountCondition { key, gt: b("gt")?, gte: b("gte")?, lt: b("lt")?, lte: b("lte")? })
    } else if o.get("is_empty").is_some() {
        condition::Kind::IsEmpty(IsEmptyCondition { key })
    } else if let Some(r) = o.get("datetime_range") {
        let r = r.as_object().ok_or_else(|| err("datetime_range must be an object"))?;
        let b = |n: &str| -> Result<Option<String>> { r.get(n).map(|x| x.as_str().map(String::from).ok_or_else(|| err(format!("datetime_range bound {n} must be a string")))).transpose() };
        condition::Kind::DatetimeRange(DatetimeRangeCondition { key, gt: b("gt")?, gte: b("gte")?, lt: b("lt")?, lte: b("lte")? })
    } else if let Some(g) = o.get("geo_radius") {
        let c = geo(g)?;
        let radius_m = g.get("radius_m").and_then(J::as_f64).ok_or_else(|| err("geo_radius needs radius_m"))?;
        condition::Kind::GeoRadius(GeoRadiusCondition { key, center: Some(c), radius_m })
    } else if let Some(g) = o.get("geo_bounding_box") {
        let p = |n: &str| g.get(n).ok_or_else(|| err(format!("geo_bounding_box needs {n}"))).and_then(geo);
        condition::Kind::GeoBoundingBox(GeoBoundingBoxCondition { key, top_left: Some(p("top_left")?), bottom_right: Some(p("bottom_right")?) })
    } else if let Some(g) = o.get("geo_polygon") {
        let exterior = g.as_array().ok_or_else(|| err("geo_polygon must be an array of points"))?.iter().map(geo).collect::<Result<_>>()?;
        condition::Kind::GeoPolygon(GeoPolygonCondition { key, exterior })
    } else if o.get("exists").is_some() {
        condition::Kind::Exists(ExistsCondition { key })
    } else if o.get("is_null").is_some() {
        condition::Kind::IsNull(IsNullCondition { key })
    } else {
        return Err(err(format!("condition {v} needs match, match_any, range, exists, is_null, prefix, text, text_any, phrase, values_count, is_empty, datetime_range or a geo condition")));
    };
    Ok(Condition { kind: Some(kind) })
}

fn geo(v: &J) -> Result<GeoPoint> {
    let n = |k: &str| v.get(k).and_then(J::as_f64).ok_or_else(|| err(format!("geo point {v} needs a numeric {k}")));
    Ok(GeoPoint { lat: n("lat")?, lon: n("lon")? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_dataset_form() {
        let f = from_json(&json!({
            "must": [{"key": "section", "match_any": ["net", "web"]}, {"key": "size", "range": {"gte": 10, "lt": 99.5}}],
            "must_not": [{"key": "priority", "match": "optional"}],
            "should": [{"filter": {"must": [{"key": "x", "exists": true}]}}, {"has_id": [1, "67e55044-10b1-426f-9247-bb680e5fe0c8"]}]
        }))
        .unwrap();
        assert_eq!(f.must.len(), 2);
        assert!(matches!(&f.must[1].kind, Some(condition::Kind::Range(r)) if r.gte == Some(10.0) && r.lt == Some(99.5)));
        assert!(matches!(&f.should[0].kind, Some(condition::Kind::Filter(_))));
        assert!(shoal_proto::validate::filter(&f).is_ok());
        let g = from_json(&json!({"must": [
            {"key": "p", "match": 1.5}, {"key": "t", "phrase": "a b"}, {"key": "n", "prefix": "ab"},
            {"key": "c", "values_count": {"gte": 2}}, {"key": "e", "is_empty": true},
            {"key": "d", "datetime_range": {"gte": "2026-01-01"}},
            {"key": "l", "geo_radius": {"lat": 1.0, "lon": 2.0, "radius_m": 1000.0}},
            {"key": "l", "geo_polygon": [{"lat": 0, "lon": 0}, {"lat": 1, "lon": 0}, {"lat": 0, "lon": 1}]}
        ]}))
        .unwrap();
        assert!(matches!(&g.must[0].kind, Some(condition::Kind::Match(m)) if m.value == Some(match_condition::Value::Float(1.5))));
        assert!(matches!(&g.must[1].kind, Some(condition::Kind::Text(t)) if t.mode == TextMatch::Phrase as i32));
        assert!(shoal_proto::validate::filter(&g).is_ok());
        for bad in [json!([]), json!({"must": {}}), json!({"must": [{"match": 1}]}), json!({"whatever": []})] {
            assert!(from_json(&bad).is_err(), "{bad}");
        }
    }

    /// Arbitrary JSON values of the filter's shape.
    fn json_value() -> impl proptest::strategy::Strategy<Value = J> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![Just("must".to_string()), Just("key".to_string()), Just("match".to_string()), Just("range".to_string()), "\\PC{0,8}"].prop_map(J::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("must".to_string()), Just("should".to_string()), Just("must_not".to_string()), Just("key".to_string()),
                        Just("match".to_string()), Just("match_any".to_string()), Just("range".to_string()), Just("filter".to_string()),
                        Just("has_id".to_string()), Just("exists".to_string()), Just("gte".to_string()), "\\PC{0,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The JSON filter parser (shoalctl, bench) on arbitrary JSON and
        /// arbitrary text: a filter or an error, never a panic; what it
        /// accepts, the validator checks without panicking either.
        #[test]
        fn fuzz_json_filters(v in json_value(), text in "\\PC{0,64}") {
            if let Ok(f) = from_json(&v) {
                let _ = shoal_proto::validate::filter(&f);
            }
            if let Ok(v) = serde_json::from_str::<J>(&text) {
                let _ = from_json(&v);
            }
        }
    }
}
