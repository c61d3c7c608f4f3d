//! Conversions between protobuf payloads ([`Struct`], [`Value`]) and
//! `serde_json::Value`.
//!
//! JSON integers that fit `i64` become `integer_value`; other numbers become
//! `double_value`. Non-finite doubles (which JSON cannot hold) become `null`.
use serde_json::{Map, Number};

use crate::v1::{value::Kind, ListValue, NullValue, Struct, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("payload must be a JSON object, got {0}")]
    NotAnObject(&'static str),
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Self {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(NullValue::NullValue as i32),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Kind::IntegerValue(i),
                None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(Value::from).collect() }),
            serde_json::Value::Object(o) => Kind::StructValue(Struct::from(o)),
        };
        Value { kind: Some(kind) }
    }
}

impl From<&Map<String, serde_json::Value>> for Struct {
    fn from(o: &Map<String, serde_json::Value>) -> Self {
        Struct { fields: o.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect() }
    }
}

impl TryFrom<&serde_json::Value> for Struct {
    type Error = PayloadError;
    fn try_from(v: &serde_json::Value) -> Result<Self, Self::Error> {
        match v {
            serde_json::Value::Object(o) => Ok(Struct::from(o)),
            other => Err(PayloadError::NotAnObject(json_kind(other))),
        }
    }
}

impl From<&Value> for serde_json::Value {
    fn from(v: &Value) -> Self {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::IntegerValue(i)) => serde_json::Value::Number((*i).into()),
            Some(Kind::DoubleValue(d)) => Number::from_f64(*d).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(Into::into).collect()),
            Some(Kind::StructValue(s)) => serde_json::Value::from(s),
        }
    }
}

impl From<&Struct> for serde_json::Value {
    fn from(s: &Struct) -> Self {
        let mut keys: Vec<&String> = s.fields.keys().collect();
        keys.sort();
        serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), (&s.fields[k]).into())).collect())
    }
}

/// Looks up a dotted path in a payload, flattening arrays on the way: every
/// value reached is pushed to `out` (arrays at the end of the path are
/// flattened one level, so conditions test their elements).
pub fn lookup<'a>(payload: &'a Struct, path: &str, out: &mut Vec<&'a Value>) {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if let Some(v) = payload.fields.get(first) {
        walk(v, &rest, out);
    }
}

fn walk<'a>(v: &'a Value, rest: &[&str], out: &mut Vec<&'a Value>) {
    match (&v.kind, rest.split_first()) {
        (Some(Kind::ListValue(l)), _) => {
            for e in &l.values {
                match (&e.kind, rest.is_empty()) {
                    (Some(Kind::ListValue(_)), true) => out.push(e),
                    _ => walk(e, rest, out),
                }
            }
        }
        (_, None) => out.push(v),
        (Some(Kind::StructValue(s)), Some((head, tail))) => {
            if let Some(child) = s.fields.get(*head) {
                walk(child, tail, out);
            }
        }
        _ => {}
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 datetime
/// ("2026-12-06T21:00:00Z", "2026-12-06T22:00:00.5+01:00") or of a bare
/// date ("2026-12-06", midnight UTC). None when it does not parse.
pub fn datetime_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() > 64 {
        return None;
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp_micros());
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

/// A `{"lat": number, "lon": number}` value as (lat, lon) degrees, when
/// both are finite and in range.
pub fn geo_point(v: &Value) -> Option<(f64, f64)> {
    let Some(Kind::StructValue(s)) = &v.kind else { return None };
    let num = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntegerValue(i)) => Some(*i as f64),
        Some(Kind::DoubleValue(d)) => Some(*d),
        _ => None,
    };
    let (lat, lon) = (num("lat")?, num("lon")?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// The payload a point ends up with after a payload update's `op`:
/// `None` when it has none. `set` merges top-level keys, `overwrite`
/// replaces, `delete_keys` removes top-level keys, `clear` removes all.
/// An empty object is kept as no payload, so every path stores one form.
pub fn apply_update(op: &crate::v1::update_payload_request::Op, old: Option<&Struct>) -> Option<Struct> {
    use crate::v1::update_payload_request::Op;
    let out = match op {
        Op::Set(s) => {
            let mut p = old.cloned().unwrap_or_default();
            p.fields.extend(s.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            p
        }
        Op::Overwrite(s) => s.clone(),
        Op::DeleteKeys(k) => {
            let mut p = old.cloned().unwrap_or_default();
            for key in &k.keys {
                p.fields.remove(key);
            }
            p
        }
        Op::Clear(_) => Struct::default(),
    };
    (!out.fields.is_empty()).then_some(out)
}

#[cfg(test)]
mod datetime_tests {
    use super::*;

    #[test]
    fn datetimes_parse_with_offsets_and_bare_dates() {
        assert_eq!(datetime_micros("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(datetime_micros("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(datetime_micros("1970-01-02"), Some(86_400_000_000));
        assert_eq!(datetime_micros("1970-01-01T00:00:00.25Z"), Some(250_000));
        assert_eq!(datetime_micros("yesterday"), None);
        assert_eq!(datetime_micros("2026-13-01"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_updates_merge_replace_delete_and_clear() {
        use crate::v1::update_payload_request::Op;
        use crate::v1::PayloadKeys;
        let st = |j: serde_json::Value| Struct::try_from(&j).unwrap();
        let old = st(json!({"a": 1, "b": {"c": 2}, "d": "x"}));
        let set = apply_update(&Op::Set(st(json!({"b": 3, "e": [1]}))), Some(&old)).unwrap();
        assert_eq!(serde_json::Value::from(&set), json!({"a": 1, "b": 3, "d": "x", "e": [1]}));
        assert_eq!(serde_json::Value::from(&apply_update(&Op::Set(st(json!({"k": true}))), None).unwrap()), json!({"k": true}));
        let over = apply_update(&Op::Overwrite(st(json!({"z": null}))), Some(&old)).unwrap();
        assert_eq!(serde_json::Value::from(&over), json!({"z": null}));
        let del = apply_update(&Op::DeleteKeys(PayloadKeys { keys: vec!["a".into(), "missing".into(), "b".into()] }), Some(&old)).unwrap();
        assert_eq!(serde_json::Value::from(&del), json!({"d": "x"}));
        // Deleting the last key or clearing leaves no payload at all.
        assert_eq!(apply_update(&Op::DeleteKeys(PayloadKeys { keys: vec!["a".into(), "b".into(), "d".into()] }), Some(&old)), None);
        assert_eq!(apply_update(&Op::Clear(true), Some(&old)), None);
        assert_eq!(apply_update(&Op::Overwrite(Struct::default()), Some(&old)), None);
    }

    #[test]
    fn json_roundtrip() {
        let j = json!({"a": 1, "b": 2.5, "c": "x", "d": [true, null], "e": {"f": -9007199254740993i64}});
        let s = Struct::try_from(&j).unwrap();
        assert_eq!(serde_json::Value::from(&s), j);
        assert_eq!(Struct::try_from(&json!([1])), Err(PayloadError::NotAnObject("an array")));
    }

    #[test]
    fn lookup_paths_and_arrays() {
        let s = Struct::try_from(&json!({"a": {"b": [1, 2, {"c": 3}]}, "t": ["x", "y"], "n": null})).unwrap();
        let get = |p: &str| {
            let mut out = vec![];
            lookup(&s, p, &mut out);
            out.into_iter().map(serde_json::Value::from).collect::<Vec<_>>()
        };
        assert_eq!(get("t"), vec![json!("x"), json!("y")]);
        assert_eq!(get("a.b"), vec![json!(1), json!(2), json!({"c": 3})]);
        assert_eq!(get("a.b.c"), vec![json!(3)]);
        assert_eq!(get("n"), vec![json!(null)]);
        assert!(get("missing").is_empty());
        assert!(get("t.x").is_empty());
    }
}
