//! Prometheus metrics. Two kinds: the signal channel's own counters (requests, latency,
//! sessions, handshakes, heartbeats), kept process-wide; and the datapath's counters of the
//! mitigations alive at scrape time, read then from the engine and the XDP maps, so a
//! mitigation's series disappear with it and label cardinality follows what is live (capped
//! by `per_mitigation_limit`: beyond it, a client's smaller mitigations are summed under
//! `mid="other"`).

use std::sync::LazyLock;
use std::time::Instant;

use coap_lite::{MessageClass, Packet, RequestType};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use xdp_common::DropReason;

use crate::datapath::{MitigationCounters, Mitigator};
use crate::engine::{Engine, MitigationView};
use crate::signal::session::Reply;

/// The signal channel's counters, registered once per process.
pub struct SignalMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    sessions: IntGaugeVec,
    handshake_failures: IntCounterVec,
    pub heartbeats_missed: IntCounter,
    pub sessions_lost: IntCounter,
    pub unsendable: IntCounter,
}

pub static SIGNAL: LazyLock<SignalMetrics> = LazyLock::new(SignalMetrics::new);

impl SignalMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "dots_signal_requests_total",
                "Signal-channel requests handled, by operation and response code",
            ),
            &["operation", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "dots_signal_request_duration_seconds",
                "Time to handle a signal-channel request, datapath update included",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
            ]),
            &["operation"],
        )
        .expect("valid metric");
        let sessions = IntGaugeVec::new(
            Opts::new(
                "dots_signal_sessions",
                "Established signal-channel sessions",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "dots_signal_handshake_failures_total",
                "DTLS/TLS handshakes that failed or timed out",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let heartbeats_missed = IntCounter::new(
            "dots_signal_heartbeats_missed_total",
            "Heartbeat intervals in which nothing arrived from a client",
        )
        .expect("valid metric");
        let sessions_lost = IntCounter::new(
            "dots_signal_sessions_lost_total",
            "Client sessions declared lost (missing heartbeats)",
        )
        .expect("valid metric");
        let unsendable = IntCounter::new(
            "dots_signal_unsendable_messages_total",
            "Responses and notifications that could not be encoded for their transport (logged)",
        )
        .expect("valid metric");
        // Every series of a known label set exists from the start, at 0, so that rate()
        // and alerts work from the first scrape.
        for op in OPERATIONS {
            for code in CODES {
                requests.with_label_values(&[op, code]);
            }
            latency.with_label_values(&[op]);
        }
        for transport in ["dtls", "tls"] {
            sessions.with_label_values(&[transport]);
            handshake_failures.with_label_values(&[transport]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "dots_build_info",
                "The running dots-agent's version (always 1)",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(sessions.clone()),
            Box::new(handshake_failures.clone()),
            Box::new(heartbeats_missed.clone()),
            Box::new(sessions_lost.clone()),
            Box::new(unsendable.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        SignalMetrics {
            registry,
            requests,
            latency,
            sessions,
            handshake_failures,
            heartbeats_missed,
            sessions_lost,
            unsendable,
        }
    }

    /// Counts a handled request: its operation, the response code, and the time taken.
    pub fn request(&self, req: &Packet, reply: &Reply, started: Instant) {
        let op = operation(req);
        let code = match reply {
            Reply::Response(p)
            | Reply::Heartbeat { response: p, .. }
            | Reply::Observe { response: p, .. } => code_label(p),
            Reply::Silence => "none".to_string(),
        };
        self.requests.with_label_values(&[op, code.as_str()]).inc();
        self.latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn handshake_failed(&self, transport: &str) {
        self.handshake_failures
            .with_label_values(&[transport])
            .inc();
    }

    /// A session is established; the guard counts it until dropped.
    pub fn session(&'static self, transport: &'static str) -> SessionGuard {
        self.sessions.with_label_values(&[transport]).inc();
        SessionGuard { transport }
    }
}

/// Decrements the session gauge when the session ends, however it ends.
pub struct SessionGuard {
    transport: &'static str,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        SIGNAL.sessions.with_label_values(&[self.transport]).dec();
    }
}

/// The `operation` labels [`operation`] gives to requests (it also counts the client's
/// responses to our requests as "response").
const OPERATIONS: [&str; 12] = [
    "mitigate_put",
    "mitigate_efficacy",
    "mitigate_get",
    "mitigate_observe",
    "mitigate_delete",
    "config_get",
    "config_put",
    "config_delete",
    "heartbeat",
    "telemetry_setup",
    "telemetry",
    "other",
];

/// The response codes the server sends (RFC 9132 §4, §5; RFC 7959 for 4.13).
const CODES: [&str; 16] = [
    "2.01", "2.02", "2.04", "2.05", "4.00", "4.01", "4.02", "4.03", "4.04", "4.05", "4.09", "4.13",
    "4.15", "4.22", "5.00", "5.03",
];

/// A bounded label for a request: resource and method (efficacy updates and Observe
/// registrations apart).
fn operation(req: &Packet) -> &'static str {
    let resource = req
        .get_option(coap_lite::CoapOption::UriPath)
        .and_then(|l| l.iter().nth(2).cloned())
        .unwrap_or_default();
    let method = match req.header.code {
        MessageClass::Request(m) => m,
        _ => return "response",
    };
    let efficacy = req
        .get_option(coap_lite::CoapOption::IfMatch)
        .is_some_and(|l| l.iter().any(|v| v.is_empty()));
    let observe = req.get_observe_value().is_some();
    match (resource.as_slice(), method) {
        (b"mitigate", RequestType::Put) if efficacy => "mitigate_efficacy",
        (b"mitigate", RequestType::Put) => "mitigate_put",
        (b"mitigate", RequestType::Get) if observe => "mitigate_observe",
        (b"mitigate", RequestType::Get) => "mitigate_get",
        (b"mitigate", RequestType::Delete) => "mitigate_delete",
        (b"config", RequestType::Get) => "config_get",
        (b"config", RequestType::Put) => "config_put",
        (b"config", RequestType::Delete) => "config_delete",
        (b"hb", _) => "heartbeat",
        (b"tm-setup", _) => "telemetry_setup",
        (b"tm", _) => "telemetry",
        _ => "other",
    }
}

fn code_label(p: &Packet) -> String {
    match p.header.code {
        MessageClass::Response(c) => {
            let n = u8::from(MessageClass::Response(c));
            format!("{}.{:02}", n >> 5, n & 0x1f)
        }
        _ => "none".into(),
    }
}

/// Everything, in the Prometheus text format: the signal channel's counters and the
/// datapath's, read now, and the announcers'.
pub fn render<M: Mitigator>(engine: &Engine<M>, now: u64, per_mitigation_limit: usize) -> String {
    let mut families = SIGNAL.registry.gather();
    families.extend(datapath_families(engine, now, per_mitigation_limit));
    let mut text = encode(&families);
    text.push_str(&engine.announcer_metrics());
    text
}

fn encode(families: &[MetricFamily]) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(families, &mut out)
        .expect("text encoding of valid families");
    String::from_utf8(out).unwrap_or_default()
}

/// Families built afresh at each scrape in a registry of their own, from what is known then
/// (the datapath's counters, the announcers' reports).
pub struct Scrape(Registry);

impl Default for Scrape {
    fn default() -> Self {
        Scrape(Registry::new())
    }
}

impl Scrape {
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.0
            .register(Box::new(c.clone()))
            .expect("unique metric names");
        c
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.0
            .register(Box::new(g.clone()))
            .expect("unique metric names");
        g
    }

    /// A counter without labels, at `value`.
    pub fn counter_value(&self, name: &str, help: &str, value: u64) {
        self.counter(name, help, &[])
            .with_label_values::<&str>(&[])
            .inc_by(value);
    }

    /// A gauge without labels, at `value`.
    pub fn gauge_value(&self, name: &str, help: &str, value: i64) {
        self.gauge(name, help, &[])
            .with_label_values::<&str>(&[])
            .set(value);
    }

    /// The families with at least one series (the registry leaves out empty ones).
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.0.gather()
    }

    /// In the Prometheus text format.
    pub fn text(&self) -> String {
        encode(&self.gather())
    }
}

/// The datapath's families.
fn datapath_families<M: Mitigator>(
    engine: &Engine<M>,
    now: u64,
    limit: usize,
) -> Vec<MetricFamily> {
    let r = Scrape::default();
    r.counter_value(
        "dots_store_commit_failures_total",
        "Accepted changes the store could not record (the request refused and undone)",
        engine.commit_failures(),
    );
    let m = ["client", "mid"];
    let passed_p = r.counter(
        "dots_mitigation_passed_packets_total",
        "Packets in a mitigation's scope let through",
        &m,
    );
    let passed_b = r.counter(
        "dots_mitigation_passed_bytes_total",
        "Bytes in a mitigation's scope let through",
        &m,
    );
    let accepted_p = r.counter(
        "dots_mitigation_accepted_packets_total",
        "Packets let through by the accept-list or an ACL accept (part of passed)",
        &m,
    );
    let dropped_p = r.counter(
        "dots_mitigation_dropped_packets_total",
        "Packets dropped, by reason",
        &["client", "mid", "reason"],
    );
    let dropped_b = r.counter(
        "dots_mitigation_dropped_bytes_total",
        "Bytes dropped, by reason",
        &["client", "mid", "reason"],
    );
    let limited_p = r.counter(
        "dots_mitigation_rate_limited_packets_total",
        "Packets dropped by a rate limit (ACL rate-limit, per-source, SYN, scope cap)",
        &m,
    );
    let status = r.gauge(
        "dots_mitigation_status",
        "RFC 9132 mitigation status code (1-8)",
        &m,
    );
    let acl_p = r.counter(
        "dots_acl_entry_matched_packets_total",
        "Packets that matched an ACL entry (data channel), over all of its client's rules",
        &["client", "acl"],
    );
    let acl_b = r.counter(
        "dots_acl_entry_matched_bytes_total",
        "Bytes that matched an ACL entry (data channel), over all of its client's rules",
        &["client", "acl"],
    );
    let client_attack = r.gauge(
        "dots_mitigation_client_reported_attack_rate",
        "Attack traffic the client says still reaches it (RFC 9244 efficacy telemetry), per unit",
        &["client", "mid", "unit"],
    );
    let by_status = r.gauge(
        "dots_mitigations",
        "Mitigations known to the server, by status",
        &["status"],
    );
    let map_used = r.gauge(
        "dots_datapath_map_entries",
        "Entries in use in a datapath map",
        &["map"],
    );
    let map_cap = r.gauge(
        "dots_datapath_map_capacity",
        "Capacity of a datapath map",
        &["map"],
    );
    let if_rx_p = r.counter(
        "dots_xdp_received_packets_total",
        "Packets the XDP filter saw on an interface",
        &["interface"],
    );
    let if_rx_b = r.counter(
        "dots_xdp_received_bytes_total",
        "Bytes the XDP filter saw on an interface",
        &["interface"],
    );
    let if_dropped = r.counter(
        "dots_xdp_dropped_packets_total",
        "Packets the XDP filter dropped on an interface",
        &["interface"],
    );
    let if_unparsed = r.counter(
        "dots_xdp_parse_errors_total",
        "Packets whose headers could not be parsed (passed on)",
        &["interface"],
    );

    let cdid = r.gauge(
        "dots_mitigation_cdid",
        "1 for a mitigation a trusted gateway asked for a client domain (cdid, RFC 9132 \
         4.4.1.2); join on client and mid",
        &["client", "mid", "cdid"],
    );

    for status in 1..=8 {
        by_status.with_label_values(&[&status.to_string()]).set(0);
    }
    let views = engine.views(now);
    let with_cdid = views.iter().filter_map(|v| Some((v, v.cdid.as_deref()?)));
    for (v, c) in with_cdid.take(limit) {
        cdid.with_label_values(&[v.client.as_str(), &v.mid.to_string(), c])
            .set(1);
    }
    for v in &views {
        by_status
            .with_label_values(&[&(v.status as u8).to_string()])
            .inc();
        for (unit, s) in &v.client_attack {
            let Some(value) = s.current.or(s.peak) else {
                continue;
            };
            let label = match unit.class() {
                crate::signal::telemetry::UnitClass::PacketsPerSecond => "packets_per_second",
                crate::signal::telemetry::UnitClass::BitsPerSecond => "bits_per_second",
                crate::signal::telemetry::UnitClass::BytesPerSecond => "bytes_per_second",
            };
            client_attack
                .with_label_values(&[v.client.as_str(), &v.mid.to_string(), label])
                .set(unit.to_base(value).min(i64::MAX as u64) as i64);
        }
    }
    for (client, mid, v) in limit_series(views, limit) {
        let l = [client.as_str(), mid.as_str()];
        if let Some(s) = v.status {
            status.with_label_values(&l).set(s as i64);
        }
        let c = &v.counters;
        passed_p.with_label_values(&l).inc_by(c.passed.packets);
        passed_b.with_label_values(&l).inc_by(c.passed.bytes);
        accepted_p.with_label_values(&l).inc_by(c.accepted.packets);
        limited_p
            .with_label_values(&l)
            .inc_by(c.rate_limited().packets);
        for reason in DropReason::ALL {
            let d = c.dropped(reason);
            let lr = [l[0], l[1], reason.label()];
            dropped_p.with_label_values(&lr).inc_by(d.packets);
            dropped_b.with_label_values(&lr).inc_by(d.bytes);
        }
    }
    for (client, acl, matched) in engine.acl_statistics() {
        let la = [client.as_str(), acl.as_str()];
        acl_p.with_label_values(&la).inc_by(matched.packets);
        acl_b.with_label_values(&la).inc_by(matched.bytes);
    }
    for (name, used, capacity) in engine.mitigator().occupancy() {
        map_used.with_label_values(&[name]).set(used as i64);
        map_cap.with_label_values(&[name]).set(capacity as i64);
    }
    for (name, s) in engine.mitigator().interfaces() {
        if_rx_p.with_label_values(&[&name]).inc_by(s.rx.packets);
        if_rx_b.with_label_values(&[&name]).inc_by(s.rx.bytes);
        if_dropped.with_label_values(&[&name]).inc_by(s.dropped);
        if_unparsed
            .with_label_values(&[&name])
            .inc_by(s.parse_errors);
    }
    r.gather()
}

/// What one (client, mid) series shows: status (None for a sum) and counters.
#[derive(Default)]
struct Series {
    status: Option<crate::signal::message::Status>,
    counters: MitigationCounters,
}

/// Series per installed mitigation: the `limit` that dropped most keep their own; the
/// rest are summed per client under mid "other".
fn limit_series(views: Vec<MitigationView>, limit: usize) -> Vec<(String, String, Series)> {
    let mut live: Vec<(MitigationView, MitigationCounters)> = views
        .into_iter()
        .filter_map(|v| {
            let c = v.counters.clone()?;
            Some((v, c))
        })
        .collect();
    live.sort_by_key(|(v, c)| (std::cmp::Reverse(c.dropped_total().packets), v.mid));
    let mut out: Vec<(String, String, Series)> = Vec::new();
    let mut others: std::collections::BTreeMap<String, MitigationCounters> = Default::default();
    for (i, (v, c)) in live.into_iter().enumerate() {
        if i < limit {
            out.push((
                v.client,
                v.mid.to_string(),
                Series {
                    status: Some(v.status),
                    counters: c,
                },
            ));
        } else {
            let sum = others.entry(v.client).or_default();
            sum.passed.add(&c.passed);
            sum.accepted.add(&c.accepted);
            for (s, d) in sum.dropped.iter_mut().zip(c.dropped.iter()) {
                s.add(d);
            }
        }
    }
    for (client, counters) in others {
        out.push((
            client,
            "other".into(),
            Series {
                counters,
                ..Series::default()
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemoryMitigator;
    use crate::engine::ClientPolicy;
    use crate::signal::message::{Lifetime, Scope};
    use xdp_common::Counter;

    fn engine_with(n: u32) -> Engine<MemoryMitigator> {
        let mut e = Engine::new(
            MemoryMitigator::new(),
            vec![ClientPolicy::fixture("client-a", &["198.51.100.0/24"])],
        );
        for mid in 1..=n {
            let target = format!("198.51.100.{mid}/32").parse().unwrap();
            e.put(
                "client-a",
                "cu-a",
                mid,
                Scope::new(vec![target], Lifetime::Seconds(600)),
                false,
                0,
            )
            .unwrap();
        }
        e
    }

    fn set_drops(e: &mut Engine<MemoryMitigator>, id: u64, reason: DropReason, packets: u64) {
        let mut c = MitigationCounters::default();
        c.dropped[reason as usize] = Counter {
            packets,
            bytes: packets * 60,
        };
        c.passed = Counter {
            packets: 7,
            bytes: 700,
        };
        assert!(e.mitigator_mut().set_counters(id, c));
    }

    #[test]
    fn exposition_names_units_and_reasons() {
        let mut e = engine_with(2);
        let ids = e.mitigator().installed();
        set_drops(&mut e, ids[0], DropReason::AmplificationPort, 1000);
        set_drops(&mut e, ids[1], DropReason::SynRate, 5);
        let text = render(&e, 1, 100);
        for line in [
            "dots_mitigation_dropped_packets_total{client=\"client-a\",mid=\"1\",reason=\"amplification_port\"} 1000",
            "dots_mitigation_dropped_bytes_total{client=\"client-a\",mid=\"1\",reason=\"amplification_port\"} 60000",
            "dots_mitigation_rate_limited_packets_total{client=\"client-a\",mid=\"2\"} 5",
            "dots_mitigation_passed_packets_total{client=\"client-a\",mid=\"1\"} 7",
            "dots_mitigation_status{client=\"client-a\",mid=\"1\"} 2",
            "dots_mitigations{status=\"2\"} 2",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        // Efficacy telemetry: the client still sees 40 Mbit/s of attack traffic.
        let mut efficacy = Scope::new(
            vec!["198.51.100.1/32".parse().unwrap()],
            Lifetime::Seconds(600),
        );
        efficacy.efficacy_attack = vec![(
            crate::signal::telemetry::Unit::from_code(8).unwrap(),
            crate::signal::telemetry::Stats {
                current: Some(40),
                ..Default::default()
            },
        )];
        e.put("client-a", "cu-a", 1, efficacy, true, 1).unwrap();
        let text = render(&e, 1, 100);
        assert!(text.contains(
            "dots_mitigation_client_reported_attack_rate{client=\"client-a\",mid=\"1\",unit=\"bits_per_second\"} 40000000"
        ), "{text}");
        // A withdrawn-and-ended mitigation has no series left.
        e.delete("cu-a", 1, 1).unwrap();
        e.tick(200);
        let text = render(&e, 200, 100);
        assert!(!text.contains("mid=\"1\",reason"), "{text}");
        assert!(text.contains("dots_mitigations{status=\"6\"} 1"));
    }

    #[test]
    fn known_series_exist_from_the_start() {
        let text = render(&engine_with(0), 1, 10);
        for line in [
            "dots_signal_requests_total{code=\"2.01\",operation=\"mitigate_put\"}",
            "dots_signal_requests_total{code=\"5.03\",operation=\"mitigate_delete\"}",
            "dots_signal_request_duration_seconds_bucket{operation=\"heartbeat\",le=\"0.001\"}",
            "dots_signal_request_duration_seconds_count{operation=\"telemetry\"}",
            "dots_signal_sessions{transport=\"dtls\"}",
            "dots_signal_sessions{transport=\"tls\"}",
            "dots_signal_handshake_failures_total{transport=\"dtls\"}",
            "dots_mitigations{status=\"2\"} 0",
            "dots_store_commit_failures_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains(&format!(
            "dots_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        // The process collector: memory, descriptors, CPU.
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name} missing");
        }
    }

    #[test]
    fn cardinality_is_capped() {
        let mut e = engine_with(50);
        let ids = e.mitigator().installed();
        for (i, id) in ids.iter().enumerate() {
            set_drops(&mut e, *id, DropReason::DropList, 100 + i as u64);
        }
        let text = render(&e, 1, 10);
        let series = text
            .lines()
            .filter(|l| l.starts_with("dots_mitigation_passed_packets_total{"))
            .count();
        assert_eq!(series, 11, "10 mitigations and one sum");
        // The sum carries the other 40: 40 x 7 packets passed.
        assert!(text.contains(
            "dots_mitigation_passed_packets_total{client=\"client-a\",mid=\"other\"} 280"
        ));
        // The ones kept are those that dropped most.
        assert!(text.contains("mid=\"50\",reason=\"drop_list\"} 149"));
    }

    #[test]
    fn requests_are_counted_by_operation_and_code() {
        let mut req = Packet::new();
        req.header.code = MessageClass::Request(RequestType::Put);
        for s in [".well-known", "dots", "mitigate", "cuid=x", "mid=1"] {
            req.add_option(coap_lite::CoapOption::UriPath, s.as_bytes().to_vec());
        }
        req.add_option(coap_lite::CoapOption::IfMatch, Vec::new());
        let mut resp = Packet::new();
        resp.header.code = MessageClass::Response(coap_lite::ResponseType::Changed);
        let before = SIGNAL
            .requests
            .with_label_values(&["mitigate_efficacy", "2.04"])
            .get();
        SIGNAL.request(&req, &Reply::Response(resp), Instant::now());
        assert_eq!(
            SIGNAL
                .requests
                .with_label_values(&["mitigate_efficacy", "2.04"])
                .get(),
            before + 1
        );
    }
}
