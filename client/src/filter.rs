//! Filters from JSON.
//!
//! The form is the neutral one of dataset `filters.json` files, extended
//! with the remaining Shoal conditions:
//! `{"must": [...], "should": [...], "must_not": [...]}` of conditions
//! `{"key": K, "match": V}` (V a string, integer or bool),
//! `{"key": K, "match_any": [V...]}`, `{"key": K, "range": {"gt"|"gte"|"lt"|"lte": N}}`,
//! `{"key": K, "exists": true}`, `{"key": K, "is_null": true}`,
//! `{"has_id": [ID...]}` and `{"filter": {...}}` (nesting).
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
            J::Number(n) => match_condition::Value::Integer(n.as_i64().ok_or_else(|| err(format!("match value {n} is not an integer")))?),
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
    } else if o.get("exists").is_some() {
        condition::Kind::Exists(ExistsCondition { key })
    } else if o.get("is_null").is_some() {
        condition::Kind::IsNull(IsNullCondition { key })
    } else {
        return Err(err(format!("condition {v} needs match, match_any, range, exists or is_null")));
    };
    Ok(Condition { kind: Some(kind) })
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
        for bad in [json!([]), json!({"must": {}}), json!({"must": [{"match": 1}]}), json!({"must": [{"key": "a", "match": 1.5}]}), json!({"whatever": []})] {
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
