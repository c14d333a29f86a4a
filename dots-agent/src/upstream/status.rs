//! What the upstream server says of our mitigations: a 2.05 status body (RFC 9132 §4.4.2)
//! read into the parts a relay needs. Hostile like any input: a malformed body is an
//! error, never a panic.

use ciborium::Value;

use crate::signal::cbor;
use crate::signal::message::Status;

/// One upstream mitigation as its status reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpStatus {
    pub mid: u32,
    pub status: Option<Status>,
    pub bytes_dropped: u64,
    pub bps_dropped: u64,
    pub pkts_dropped: u64,
    pub pps_dropped: u64,
}

fn entries(v: Value) -> Vec<(u64, Value)> {
    match v {
        Value::Map(m) => m
            .into_iter()
            .filter_map(|(k, v)| Some((u64::try_from(k.as_integer()?).ok()?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The conflict-information (17) of a 4.09's scope entry (RFC 9132 §4.4.1.3), as sent:
/// `{1: {2: [{..., 17: {18?, 19, 20?, 21?}}]}}`. None when the body holds none.
pub fn conflict_information(body: &[u8]) -> Option<Value> {
    let top = entries(cbor::parse_response(body).ok()?);
    let ms = entries(top.into_iter().find(|(k, _)| *k == 1)?.1);
    let Value::Array(scopes) = ms.into_iter().find(|(k, _)| *k == 2)?.1 else {
        return None;
    };
    let first = entries(scopes.into_iter().next()?);
    let info = first.into_iter().find(|(k, _)| *k == 17)?.1;
    matches!(info, Value::Map(_)).then_some(info)
}

/// `{1: {2: [{5: mid, 16: status, 25-28: counters, ...}]}}`.
pub fn decode(body: &[u8]) -> Result<Vec<UpStatus>, String> {
    let v = cbor::parse_response(body).map_err(|e| format!("status body: {e}"))?;
    let scopes = entries(v)
        .into_iter()
        .find(|(k, _)| *k == 1)
        .map(|(_, v)| entries(v))
        .and_then(|m| m.into_iter().find(|(k, _)| *k == 2))
        .ok_or("status body without mitigation-scope/scope")?
        .1;
    let Value::Array(scopes) = scopes else {
        return Err("status body: scope is not an array".into());
    };
    let mut out = Vec::new();
    for s in scopes {
        let mut u = UpStatus::default();
        let mut has_mid = false;
        for (k, v) in entries(s) {
            let n = v
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .unwrap_or(0);
            match k {
                5 => {
                    u.mid = u32::try_from(n).map_err(|_| format!("mid {n} out of range"))?;
                    has_mid = true;
                }
                16 => u.status = Status::from_code(n),
                25 => u.bytes_dropped = n,
                26 => u.bps_dropped = n,
                27 => u.pkts_dropped = n,
                28 => u.pps_dropped = n,
                _ => {}
            }
        }
        if !has_mid {
            return Err("status body: a scope without mid".into());
        }
        out.push(u);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::message::{encode_status, Lifetime, MitigationStatus, Scope};

    #[test]
    fn reads_what_the_server_encodes() {
        let body = encode_status(&[MitigationStatus {
            mid: 7,
            scope: Scope::new(
                vec!["203.0.113.0/24".parse().unwrap()],
                Lifetime::Seconds(9),
            ),
            mitigation_start: Some(1),
            status: Status::SuccessfullyMitigated,
            bytes_dropped: Some(6400),
            bps_dropped: Some(80),
            pkts_dropped: Some(100),
            pps_dropped: Some(10),
            telemetry: None,
            conflict_information: None,
        }]);
        let got = decode(&body).unwrap();
        assert_eq!(
            got,
            vec![UpStatus {
                mid: 7,
                status: Some(Status::SuccessfullyMitigated),
                bytes_dropped: 6400,
                bps_dropped: 80,
                pkts_dropped: 100,
                pps_dropped: 10,
            }]
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"\xff\x00").is_err());
        assert!(decode(&cbor::encode(&cbor::map(vec![(1, cbor::uint(3))]))).is_err());
    }
}
