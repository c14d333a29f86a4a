//! CBOR bodies as JSON with the YANG names (RFC 9132 and RFC 9244 keys), for people and
//! logs.

use ciborium::value::Value;
use serde_json::{Map, Value as Json};

use super::cbor::key_name;

pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            i64::try_from(n)
                .map(Json::from)
                .unwrap_or_else(|_| Json::String(n.to_string()))
        }
        Value::Text(t) => Json::String(t.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::Null => Json::Null,
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        Value::Tag(4, inner) => match inner.as_ref() {
            Value::Array(p) if p.len() == 2 => match (&p[0], &p[1]) {
                (Value::Integer(e), Value::Integer(m)) if i128::from(*e) == -2 => {
                    let m = i128::from(*m);
                    Json::String(format!(
                        "{}{}.{:02}",
                        if m < 0 { "-" } else { "" },
                        m.abs() / 100,
                        m.abs() % 100
                    ))
                }
                _ => to_json(inner),
            },
            other => to_json(other),
        },
        Value::Tag(_, inner) => to_json(inner),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let name = match k {
                    Value::Integer(i) => {
                        let n = i128::from(*i);
                        u64::try_from(n)
                            .ok()
                            .and_then(|k| key_name(k).or_else(|| super::telemetry::key_name(k)))
                            .map(String::from)
                            .unwrap_or_else(|| n.to_string())
                    }
                    other => to_json(other).to_string(),
                };
                out.insert(name, to_json(v));
            }
            Json::Object(out)
        }
        _ => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_8_reads_as_the_rfc_json() {
        let fig8 = include_bytes!("../../tests/fixtures/rfc9132-fig8.cbor");
        let json: Json =
            serde_json::from_slice(include_bytes!("../../tests/fixtures/rfc9132-fig8.json"))
                .unwrap();
        let ours = to_json(&super::super::cbor::parse(fig8).unwrap());
        // The vector's JSON uses the numeric keys; ours uses names. Same shape and values:
        let s = ours.to_string();
        assert!(
            s.contains("\"target-prefix\":[\"2001:db8:6401::1/128\",\"2001:db8:6401::2/128\"]"),
            "{s}"
        );
        assert!(s.contains("\"lifetime\":3600"), "{s}");
        assert_eq!(json["1"]["2"][0]["14"], 3600);
    }
}
