//! `dots-agent client guard`: the threshold-triggered request. The client watches the
//! receive rate of the customer's interface; when it crosses the threshold it asks for
//! mitigation, follows the mitigation's status (the scrubber's drop counters), and withdraws
//! once the attack has been gone for a while: the scrubber drops (almost) nothing any more and
//! the local rate is back under the threshold.
//!
//! It prints one JSON object per line (events with wall-clock milliseconds) so that people and
//! `dots-agent lab` can follow it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use coap_lite::RequestType;
use ipnet::IpNet;
use serde_json::{json, Value};

use super::{code_text, is_success, ClientConfig, Session};
use crate::signal::message::{self, Lifetime, Scope};

#[derive(Clone, Debug)]
pub struct GuardOptions {
    pub interface: String,
    pub threshold_pps: u64,
    /// Withdraw after the attack has been gone this long.
    pub quiet: Duration,
    pub targets: Vec<IpNet>,
    pub mid: u32,
    pub lifetime: u32,
    /// How often to sample the interface (and the status while mitigating).
    pub sample: Duration,
    /// Stop after this long in all (withdrawing first); None: until SIGINT or SIGTERM.
    pub max: Option<Duration>,
    /// Exit after the first withdrawal.
    pub once: bool,
    /// How long to wait for the server (each handshake, each answer).
    pub timeout: Duration,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn emit(event: &str, mut fields: Value) {
    if let Value::Object(m) = &mut fields {
        m.insert("event".into(), event.into());
        m.insert("unix_ms".into(), unix_ms().into());
    }
    println!("{fields}");
}

/// Received packets of `iface` from /proc/thread-self/net/dev, which (unlike /sys/class/net
/// or /proc/net, the main thread's view) shows the calling thread's network namespace.
pub fn rx_packets(iface: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .context("reading /proc/thread-self/net/dev")?;
    for line in text.lines().skip(2) {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == iface {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                return fields
                    .get(1)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("/proc/net/dev: unreadable line for {iface}"));
            }
        }
    }
    bail!("no interface {iface:?} in this network namespace (see `ip link`)")
}

/// The first value under `key` anywhere in a JSON document.
fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_u64())
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

/// Mitigation-status telemetry in packets/s: traffic to the targets and the dropped part
/// (current values) and the top talker, or null when the status carries none.
fn telemetry_summary(body: &Value) -> Value {
    let scope = &body["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
    let pps = |key: &str, v: &Value| {
        v[key].as_array().and_then(|list| {
            list.iter()
                .find(|e| e["unit"] == 1)
                .and_then(|e| e["current-g"].as_u64())
        })
    };
    let total = pps("ietf-dots-telemetry:total-traffic", scope);
    let attack = pps("ietf-dots-telemetry:total-attack-traffic", scope);
    let talker = &scope["ietf-dots-telemetry:attack-detail"][0]["top-talker"]["talker"][0];
    if total.is_none() && attack.is_none() {
        return Value::Null;
    }
    json!({
        "total_pps": total,
        "attack_pps": attack,
        "top_talker": talker["source-prefix"].as_str(),
        "top_talker_pps": pps("total-attack-traffic", talker),
    })
}

fn body_json(p: &coap_lite::Packet) -> Value {
    crate::signal::cbor::parse_response(&p.payload)
        .map(|v| crate::signal::diag::to_json(&v))
        .unwrap_or(Value::Null)
}

/// Runs until `o.max` passes (withdrawing first), or `stop` completes with the name of
/// what stopped it (a signal).
pub async fn run(
    cfg: &ClientConfig,
    o: &GuardOptions,
    stop: impl std::future::Future<Output = &'static str>,
) -> Result<()> {
    if o.threshold_pps == 0 {
        bail!("--threshold-pps must be positive");
    }
    if o.targets.is_empty() {
        bail!("name at least one --target prefix to protect");
    }
    let start = Instant::now();
    let mut session = Session::connect_within(cfg, o.timeout).await?;
    emit(
        "connected",
        json!({"transport": session.transport(), "interface": o.interface, "threshold_pps": o.threshold_pps}),
    );
    // Ask for server-originated telemetry (RFC 9244), so status also tells what reaches the
    // targets and who the top talkers are. The tsid grows with time across restarts; a
    // refusal (e.g. an operator's higher tsid) leaves the guard working on counters alone.
    let tsid = (unix_ms() / 1000).min(u32::MAX as u64) as u32;
    let config = crate::signal::telemetry::TelemetryConfig {
        server_originated: true,
        ..Default::default()
    };
    let r = session
        .request(
            RequestType::Put,
            &[
                "tm-setup".to_string(),
                format!("cuid={}", session.cuid()),
                format!("tsid={tsid}"),
            ],
            Some(crate::signal::telemetry::encode_setup_put(
                &crate::signal::telemetry::SetupItem::Config(config),
            )),
            false,
        )
        .await?;
    emit(
        "telemetry-setup",
        json!({"code": code_text(&r), "tsid": tsid}),
    );
    let path = vec![
        "mitigate".to_string(),
        format!("cuid={}", session.cuid()),
        format!("mid={}", o.mid),
    ];
    let mut last = (Instant::now(), rx_packets(&o.interface)?);
    let mut mitigating = false;
    let mut quiet_since: Option<Instant> = None;
    let mut last_dropped: Option<(Instant, u64)> = None;
    let mut last_heartbeat = Instant::now();
    tokio::pin!(stop);
    while o.max.is_none_or(|max| start.elapsed() < max) {
        tokio::select! {
            _ = tokio::time::sleep(o.sample) => {}
            signal = &mut stop => {
                // Stopping the guard is not the end of the attack: a requested mitigation
                // keeps running until its lifetime ends or someone withdraws it.
                emit(
                    "stopped",
                    json!({"signal": signal, "mitigating": mitigating, "mid": o.mid,
                           "note": if mitigating { "the mitigation stays until its lifetime ends; `client withdraw --mid` ends it" } else { "" }}),
                );
                return Ok(());
            }
        }
        let now = Instant::now();
        let rx = rx_packets(&o.interface)?;
        let rx_pps = ((rx.saturating_sub(last.1)) as f64 / (now - last.0).as_secs_f64()) as u64;
        last = (now, rx);
        if !mitigating {
            if rx_pps > o.threshold_pps {
                emit("threshold", json!({"rx_pps": rx_pps}));
                let mut scope = Scope::new(o.targets.clone(), Lifetime::Seconds(o.lifetime));
                scope.trigger_mitigation = true;
                emit("request", json!({"mid": o.mid}));
                let r = session
                    .request(
                        RequestType::Put,
                        &path,
                        Some(message::encode_mitigation_request(&scope)),
                        false,
                    )
                    .await?;
                emit(
                    "response",
                    json!({"code": code_text(&r), "body": body_json(&r)}),
                );
                if !is_success(&r) {
                    bail!("mitigation request refused: {}", code_text(&r));
                }
                mitigating = true;
                quiet_since = None;
                last_dropped = None;
            } else if last_heartbeat.elapsed() > Duration::from_secs(15) {
                // Keep the idle session alive (RFC 9132 §4.7).
                session.heartbeat().await?;
                last_heartbeat = Instant::now();
            }
            continue;
        }
        let r = session
            .request(RequestType::Get, &path, None, false)
            .await?;
        let body = body_json(&r);
        let dropped = find_u64(&body, "pkts-dropped").unwrap_or(0);
        let dropped_pps = match last_dropped {
            Some((t, d)) => (dropped.saturating_sub(d) as f64 / (now - t).as_secs_f64()) as u64,
            None => dropped,
        };
        last_dropped = Some((now, dropped));
        let status = find_u64(&body, "status");
        emit(
            "status",
            json!({"rx_pps": rx_pps, "pkts_dropped": dropped, "dropped_pps": dropped_pps, "status": status, "telemetry": telemetry_summary(&body)}),
        );
        // The attack is gone when the scrubber drops next to nothing and what reaches us is
        // back under the threshold.
        let gone = dropped_pps < (o.threshold_pps / 10).max(1) && rx_pps < o.threshold_pps;
        match (gone, quiet_since) {
            (false, _) => quiet_since = None,
            (true, None) => quiet_since = Some(now),
            (true, Some(t)) if now - t >= o.quiet => {
                let r = session
                    .request(RequestType::Delete, &path, None, false)
                    .await?;
                emit(
                    "withdraw",
                    json!({"code": code_text(&r), "pkts_dropped": dropped}),
                );
                mitigating = false;
                if o.once {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    if mitigating {
        let r = session
            .request(RequestType::Delete, &path, None, false)
            .await?;
        emit(
            "withdraw",
            json!({"code": code_text(&r), "reason": "time is up"}),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_summarised_in_packets_per_second() {
        let v = json!({"ietf-dots-signal-channel:mitigation-scope": {"scope": [{
            "ietf-dots-telemetry:total-traffic": [{"unit": 2, "current-g": 9}, {"unit": 1, "current-g": 900}],
            "ietf-dots-telemetry:total-attack-traffic": [{"unit": 1, "current-g": 700}],
            "ietf-dots-telemetry:attack-detail": [{"top-talker": {"talker": [
                {"source-prefix": "192.0.2.7/32", "total-attack-traffic": [{"unit": 1, "current-g": 80}]}
            ]}}]
        }]}});
        assert_eq!(
            telemetry_summary(&v),
            json!({"total_pps": 900, "attack_pps": 700, "top_talker": "192.0.2.7/32", "top_talker_pps": 80})
        );
        assert_eq!(telemetry_summary(&json!({})), Value::Null);
    }

    #[test]
    fn status_counters_are_found_at_any_depth() {
        let v = json!({"ietf-dots-signal-channel:mitigation-scope": {"scope": [{"mid": 1, "status": 2, "pkts-dropped": 77}]}});
        assert_eq!(find_u64(&v, "pkts-dropped"), Some(77));
        assert_eq!(find_u64(&v, "status"), Some(2));
        assert_eq!(find_u64(&v, "bytes-dropped"), None);
    }

    #[test]
    fn loopback_has_a_receive_counter() {
        assert!(rx_packets("lo").is_ok());
        assert!(format!("{:#}", rx_packets("no-such-if0").unwrap_err()).contains("no interface"));
    }
}
