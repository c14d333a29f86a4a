//! Signal-channel responses for people and for scripts. People get the code with its name
//! and what the body means, a line per mitigation ("mid 1: 2 active, ..."); scripts
//! (`--json`) get one JSON object per response on one line: `{"code": "2.05", "body":
//! {...}}` with the body as an object (YANG names), or `"diagnostic"` for a text payload.

use coap_lite::{ContentFormat, Packet};
use serde_json::{json, Map, Value};

use super::exit::Exit;
use crate::client::code_text;

/// The response's body as JSON (YANG names): an object for CBOR, None when empty or text.
pub fn body_json(resp: &Packet) -> Option<Value> {
    if resp.payload.is_empty()
        || !matches!(
            resp.get_content_format(),
            Some(ContentFormat::ApplicationDotsCbor)
        )
    {
        return None;
    }
    Some(match crate::signal::cbor::parse_response(&resp.payload) {
        Ok(v) => crate::signal::diag::to_json(&v),
        Err(e) => json!({ "undecodable": e.to_string() }),
    })
}

/// A text payload (a diagnostic), if the body is not CBOR.
fn diagnostic(resp: &Packet) -> Option<String> {
    (!resp.payload.is_empty() && body_json(resp).is_none())
        .then(|| String::from_utf8_lossy(&resp.payload).into_owned())
}

/// The response as one JSON object.
pub fn json_of(resp: &Packet) -> Value {
    let mut o = Map::new();
    o.insert("code".into(), code_text(resp).into());
    if let Some(b) = body_json(resp) {
        o.insert("body".into(), b);
    }
    if let Some(d) = diagnostic(resp) {
        o.insert("diagnostic".into(), d.into());
    }
    Value::Object(o)
}

/// The exit status a response calls for.
pub fn exit_of(resp: &Packet) -> Exit {
    let raw: u8 = resp.header.code.into();
    Exit::for_coap_class(raw >> 5)
}

/// Prints a response (human text or one JSON line) and returns the exit status it calls for.
pub fn response(resp: &Packet, json: bool) -> Exit {
    if json {
        println!("{}", json_of(resp));
    } else {
        println!("{}", human(resp));
    }
    exit_of(resp)
}

/// "Created", "Not Found", ... for a code text like "2.01".
pub fn code_name(code: &str) -> &'static str {
    match code {
        "2.01" => "Created",
        "2.02" => "Deleted",
        "2.03" => "Valid",
        "2.04" => "Changed",
        "2.05" => "Content",
        "2.31" => "Continue",
        "4.00" => "Bad Request",
        "4.01" => "Unauthorized",
        "4.02" => "Bad Option",
        "4.03" => "Forbidden",
        "4.04" => "Not Found",
        "4.05" => "Method Not Allowed",
        "4.06" => "Not Acceptable",
        "4.08" => "Request Entity Incomplete",
        "4.09" => "Conflict",
        "4.12" => "Precondition Failed",
        "4.13" => "Request Entity Too Large",
        "4.15" => "Unsupported Content-Format",
        "4.22" => "Unprocessable Entity",
        "4.29" => "Too Many Requests",
        "5.00" => "Internal Server Error",
        "5.01" => "Not Implemented",
        "5.02" => "Bad Gateway",
        "5.03" => "Service Unavailable",
        "5.04" => "Gateway Timeout",
        "5.08" => "Hop Limit Reached",
        _ => "",
    }
}

/// RFC 9132 mitigation status (key 16) as people say it, with the RFC's label.
pub fn status_text(status: u64) -> String {
    let (short, label) = match status {
        1 => ("starting", "attack-mitigation-in-progress"),
        2 => ("active", "attack-successfully-mitigated"),
        3 => ("attack stopped", "attack-stopped"),
        4 => ("over capacity", "attack-exceeded-capability"),
        5 => ("withdrawn, terminating", "dots-client-withdrawn-mitigation"),
        6 => ("ended", "attack-mitigation-terminated"),
        7 => ("withdrawn by the server", "attack-mitigation-withdrawn"),
        8 => ("armed for signal loss", "attack-mitigation-signal-loss"),
        _ => ("unknown status", "?"),
    };
    format!("{status} {short} ({label})")
}

/// The whole response for a person: "CODE Name" and what the body says.
pub fn human(resp: &Packet) -> String {
    let code = code_text(resp);
    let head = format!("{code} {}", code_name(&code))
        .trim_end()
        .to_string();
    if let Some(d) = diagnostic(resp) {
        return format!("{head}: {d}");
    }
    let Some(body) = body_json(resp) else {
        return head;
    };
    let lines = describe(&code, &body);
    match lines.len() {
        0 => head,
        1 => format!("{head}: {}", lines[0]),
        _ => format!("{head}\n{}", lines.join("\n")),
    }
}

/// What a body means, a line per item; unknown shapes as indented JSON.
fn describe(code: &str, body: &Value) -> Vec<String> {
    if let Some(scopes) = body["ietf-dots-signal-channel:mitigation-scope"]["scope"].as_array() {
        return scopes.iter().map(|s| scope_line(code, s)).collect();
    }
    if let Some(config) = body.get("ietf-dots-signal-channel:signal-config") {
        return config_lines(config);
    }
    if let Some(r) = body.get("ietf-dots-signal-channel:redirected-signal") {
        let addresses = list(&r["alt-server-record"]);
        return vec![format!(
            "redirected to {}{}",
            r["alt-server"].as_str().unwrap_or("?"),
            if addresses.is_empty() {
                String::new()
            } else {
                format!(" ({addresses})")
            }
        )];
    }
    serde_json::to_string_pretty(body)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Items of a JSON list joined with commas.
fn list(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One mitigation: its created form (mid, granted lifetime), its status, or a conflict.
fn scope_line(code: &str, s: &Value) -> String {
    if let Some(c) = s.get("conflict-information") {
        return conflict_text(c);
    }
    let mid = &s["mid"];
    let lifetime = match s["lifetime"].as_i64() {
        Some(-1) => "until withdrawn".to_string(),
        Some(n) if code == "2.01" => format!("granted for {n} s"),
        Some(n) => format!("{n} s left"),
        None => String::new(),
    };
    let Some(status) = s["status"].as_u64() else {
        return format!("mid {mid} {lifetime}").trim_end().to_string();
    };
    let mut parts = vec![format!("mid {mid}: {}", status_text(status))];
    let mut targets = list(&s["target-prefix"]);
    for (key, what) in [("alias-name", "alias"), ("target-fqdn", "fqdn")] {
        let l = list(&s[key]);
        if !l.is_empty() {
            targets = format!("{targets} {what} {l}").trim().to_string();
        }
    }
    let ports: Vec<String> = s["target-port-range"]
        .as_array()
        .into_iter()
        .flatten()
        .map(
            |r| match (r["lower-port"].as_u64(), r["upper-port"].as_u64()) {
                (Some(l), Some(u)) if u != l => format!("{l}-{u}"),
                (Some(l), _) => l.to_string(),
                _ => "?".into(),
            },
        )
        .collect();
    if !ports.is_empty() {
        targets.push_str(&format!(" port {}", ports.join(",")));
    }
    let protocols = list(&s["target-protocol"]);
    if !protocols.is_empty() {
        targets.push_str(&format!(" protocol {protocols}"));
    }
    parts.push(format!("targets {targets}"));
    if !lifetime.is_empty() {
        parts.push(lifetime);
    }
    if let Some(p) = s["pkts-dropped"].as_u64() {
        let mut d = format!(
            "dropped {p} packets, {} bytes",
            s["bytes-dropped"].as_u64().unwrap_or(0)
        );
        if let (Some(pps), Some(bps)) = (s["pps-dropped"].as_u64(), s["bps-dropped"].as_u64()) {
            d.push_str(&format!(" (now {pps} pps, {bps} bit/s)"));
        }
        parts.push(d);
    }
    let pps = |key: &str| {
        s[key].as_array().and_then(|l| {
            l.iter()
                .find(|e| e["unit"] == 1)
                .and_then(|e| e["current-g"].as_u64())
        })
    };
    if let Some(total) = pps("ietf-dots-telemetry:total-traffic") {
        let attack = pps("ietf-dots-telemetry:total-attack-traffic").unwrap_or(0);
        parts.push(format!(
            "telemetry: {total} pps to the targets, {attack} pps dropped"
        ));
    }
    let acls: Vec<String> = s["ietf-dots-signal-control:acl-list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["acl-name"].as_str().map(str::to_string))
        .collect();
    if !acls.is_empty() {
        parts.push(format!("ACLs {}", acls.join(",")));
    }
    parts.join(", ")
}

/// RFC 9132 conflict-information (key 17) as a sentence.
fn conflict_text(c: &Value) -> String {
    let scope = &c["conflict-scope"];
    let retry = c["retry-timer"]
        .as_u64()
        .map(|t| format!("; retry in {t} s"))
        .unwrap_or_default();
    let cause = match c["conflict-cause"].as_u64() {
        Some(1) => match (scope["mid"].as_u64(), c["conflict-status"].as_u64()) {
            (Some(m), _) => {
                format!("overlapping targets of mid {m}, a newer request: use a mid above {m}")
            }
            (None, Some(1)) => format!(
                "overlapping targets of another client's active mitigation ({})",
                list(&scope["target-prefix"])
            ),
            _ => "overlapping targets".to_string(),
        },
        Some(2) => "conflict with an accept-list (the targets' traffic is accepted)".into(),
        Some(3) => "cuid collision: another client uses this cuid (use a new key)".into(),
        Some(4) => "the server would drop legitimate traffic".into(),
        Some(n) => format!("cause {n}"),
        None => "no cause given".into(),
    };
    format!("conflict: {cause}{retry}")
}

/// The session configuration: a line per parameter, mitigating and idle values with their
/// ranges, e.g. "heartbeat-interval: mitigating 30 (15-240), idle 30 (15-240)".
fn config_lines(config: &Value) -> Vec<String> {
    let sets = [
        ("mitigating", &config["mitigating-config"]),
        ("idle", &config["idle-config"]),
    ];
    let mut names: Vec<String> = Vec::new();
    for (_, set) in &sets {
        for k in set.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let value = |v: &Value, key: &str| -> Option<String> {
        let x = v.get(key).or_else(|| v.get(format!("{key}-decimal")))?;
        Some(match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let mut out = Vec::new();
    if let Some(sid) = config["sid"].as_u64() {
        out.push(format!("sid {sid}"));
    }
    for name in names {
        let per_set: Vec<String> = sets
            .iter()
            .filter_map(|(label, set)| {
                let p = set.get(&name)?;
                let current = value(p, "current-value").unwrap_or_else(|| "-".into());
                let range = match (value(p, "min-value"), value(p, "max-value")) {
                    (Some(lo), Some(hi)) => format!(" ({lo}-{hi})"),
                    _ => String::new(),
                };
                Some(format!("{label} {current}{range}"))
            })
            .collect();
        out.push(format!("{name}: {}", per_set.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::message::{self, Lifetime, MitigationStatus, Scope, Status};
    use coap_lite::{MessageClass, ResponseType};

    fn packet(code: ResponseType, body: Vec<u8>, cbor: bool) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(code);
        if cbor {
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
        }
        p.payload = body;
        p
    }

    #[test]
    fn status_is_named_with_its_counters() {
        let mut scope = Scope::new(
            vec!["198.51.100.7/32".parse().unwrap()],
            Lifetime::Seconds(60),
        );
        scope.target_port_range = vec![crate::datapath::PortRange::single(80)];
        scope.target_protocol = vec![6];
        let body = message::encode_status(&[MitigationStatus {
            mid: 1,
            scope,
            mitigation_start: Some(1),
            status: Status::SuccessfullyMitigated,
            bytes_dropped: Some(6400),
            bps_dropped: Some(512),
            pkts_dropped: Some(100),
            pps_dropped: Some(1),
            telemetry: None,
            conflict_information: None,
        }]);
        let p = packet(ResponseType::Content, body, true);
        assert_eq!(
            human(&p),
            "2.05 Content: mid 1: 2 active (attack-successfully-mitigated), targets \
             198.51.100.7/32 port 80 protocol 6, 60 s left, dropped 100 packets, 6400 bytes \
             (now 1 pps, 512 bit/s)"
        );
        let j = json_of(&p);
        assert_eq!(j["code"], "2.05");
        assert_eq!(
            j["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"], 100,
            "the body is an object, not a string: {j}"
        );
        assert_eq!(exit_of(&p), Exit::Ok);
    }

    #[test]
    fn refusals_show_the_diagnostic_and_conflicts_their_cause() {
        let p = packet(
            ResponseType::Forbidden,
            b"outside the prefixes".to_vec(),
            false,
        );
        assert_eq!(human(&p), "4.03 Forbidden: outside the prefixes");
        assert_eq!(
            json_of(&p),
            json!({"code": "4.03", "diagnostic": "outside the prefixes"})
        );
        assert_eq!(exit_of(&p), Exit::Refused);
        use crate::signal::cbor::{encode, map, uint};
        let conflict = encode(&map(vec![(
            1,
            map(vec![(
                2,
                ciborium::value::Value::Array(vec![map(vec![(
                    17,
                    map(vec![(19, uint(1)), (21, map(vec![(5, uint(3))]))]),
                )])]),
            )]),
        )]));
        let p = packet(ResponseType::Conflict, conflict, true);
        assert_eq!(
            human(&p),
            "4.09 Conflict: conflict: overlapping targets of mid 3, a newer request: use a mid above 3"
        );
        let p = packet(ResponseType::ServiceUnavailable, Vec::new(), false);
        assert_eq!(
            (human(&p).as_str(), exit_of(&p)),
            ("5.03 Service Unavailable", Exit::Unavailable)
        );
        let p = packet(
            ResponseType::Created,
            message::encode_created(4, Lifetime::Seconds(3600)),
            true,
        );
        assert_eq!(human(&p), "2.01 Created: mid 4 granted for 3600 s");
        assert_eq!(
            status_text(8),
            "8 armed for signal loss (attack-mitigation-signal-loss)"
        );
    }
}
