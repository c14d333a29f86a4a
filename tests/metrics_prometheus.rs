//! End to end: a real Prometheus server (Debian's `prometheus`) scrapes the agent's
//! `/metrics` while an attack is dropped by the XDP filter on a veth pair; a query through
//! Prometheus' HTTP API shows a non-zero drop rate for the mitigation, and the dropped
//! packets Prometheus last scraped equal the pkts-dropped of the DOTS mitigation status.
//! And /metrics protected: over TLS with client certificates and a bearer token, Prometheus
//! scrapes with both, and is refused without either.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coap_lite::RequestType;
use dots_agent::client::{code_text, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_e2e::dots::{ask_mid, attack, http_get, start_server};
use dots_e2e::{Lab, Netns};

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// Prometheus running inside a namespace, killed on drop.
struct Prometheus(Child);

impl Prometheus {
    fn start(ns: &Netns, dir: &Path) -> Prometheus {
        Self::start_with(
            ns,
            dir,
            &format!(
                "  - job_name: dots-agent\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )
    }

    /// Prometheus scraping every second with these `scrape_configs` entries.
    fn start_with(ns: &Netns, dir: &Path, scrape_configs: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (scripts/setup.sh installs Debian's package)");
        Prometheus(child)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of a PromQL instant query whose result is one sample (None: no sample).
fn query(ns: &Netns, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) = http_get(ns, PROMETHEUS, format!("/api/v1/query?query={encoded}"))?;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Polls `f` every 500 ms for up to `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

#[test]
fn prometheus_sees_the_drop_rate_the_dots_status_reports() {
    let lab = Lab::new("pm");
    let (pair, dir) = (&lab.pair, &lab.dir);
    let config = lab.server_config(
        r#""198.51.100.0/24""#,
        "",
        &format!("[metrics]\nlisten = [\"{METRICS}\"]"),
        "",
    );
    let (server, stop) = start_server(&pair.b, &config);
    let prometheus = Prometheus::start(&pair.b, dir.path());

    let client = lab.client(TransportChoice::Dtls);
    let ask_with = |method: RequestType, body: Option<Vec<u8>>, efficacy: bool| {
        ask_mid(&pair.a, &client, 1, method, body, efficacy).unwrap()
    };
    let ask = |method, body| ask_with(method, body, false);
    let body = message::encode_mitigation_request(&Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    ));
    assert_eq!(code_text(&ask(RequestType::Put, Some(body))), "2.01");
    // An efficacy update: the client says 40 Mbit/s of attack still reaches it (RFC 9244),
    // which the dashboard shows beside what the filter drops.
    let mut efficacy = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    efficacy.attack_status = Some(1);
    efficacy.efficacy_attack = vec![(
        dots_agent::signal::telemetry::Unit::from_code(8).expect("megabit-ps"),
        dots_agent::signal::telemetry::Stats {
            current: Some(40),
            ..Default::default()
        },
    )];
    let body = message::encode_mitigation_request(&efficacy);
    assert_eq!(
        code_text(&ask_with(RequestType::Put, Some(body), true)),
        "2.04"
    );

    // Prometheus is up and has scraped the agent at least once.
    wait_for(Duration::from_secs(30), || {
        query(&pair.b, "up{job=\"dots-agent\"}").filter(|v| *v == 1.0)
    })
    .expect("Prometheus scrapes the agent within 30 s");

    // NTP reflection at 5,000 packets/s for up to 5 s: dropped by the amplification
    // countermeasure.
    let arrived = dots_e2e::dots::arrived(&attack(pair, 30_000, 5_000));
    assert_eq!(arrived, 0, "the attack is dropped");
    let rate = query(
        &pair.b,
        "sum(rate(dots_mitigation_dropped_packets_total{client=\"client-a\",mid=\"1\",reason=\"amplification_port\"}[10s]))",
    )
    .unwrap_or(0.0);
    assert!(
        rate > 0.0,
        "Prometheus shows a drop rate for the mitigation (got {rate})"
    );

    // After the attack, once Prometheus has scraped again, its total equals the status'.
    let status = ask(RequestType::Get, None);
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse(&status.payload).unwrap(),
    );
    let dots_dropped = v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"]
        .as_u64()
        .expect("pkts-dropped in the status");
    // The sender stops after 5 s however far it got; everything it sent was dropped.
    assert!(dots_dropped >= 10_000, "pkts-dropped {dots_dropped}");
    let scraped = wait_for(Duration::from_secs(10), || {
        query(
            &pair.b,
            "sum(dots_mitigation_dropped_packets_total{client=\"client-a\",mid=\"1\"})",
        )
        .filter(|v| *v as u64 == dots_dropped)
    });
    assert_eq!(
        scraped.map(|v| v as u64),
        Some(dots_dropped),
        "Prometheus' figure is the status' pkts-dropped"
    );
    println!("drop rate seen by Prometheus: {rate:.0} packets/s; dropped: {dots_dropped}");

    // Every query of the Grafana dashboard is valid PromQL for this Prometheus and names
    // metrics the agent exposes (ACL entries aside: this mitigation has none).
    let (code, exposition) = http_get(&pair.b, METRICS, "/metrics".into()).expect("/metrics");
    assert_eq!(code, 200);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dashboards/dots-agent.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "10s")
                // The job and instance variables at "All".
                .replace("$job", ".+")
                .replace("$instance", ".+");
            let encoded: String = expr
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let (code, body) = http_get(
                &pair.b,
                PROMETHEUS,
                format!("/api/v1/query?query={encoded}"),
            )
            .expect("Prometheus answers");
            assert_eq!(code, 200, "{expr}: {body}");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dots_") && !w.starts_with("dots_acl_entry_"))
            {
                assert!(
                    exposition.contains(&format!("\n{name}")),
                    "the dashboard uses {name}, which /metrics does not expose"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked} dashboard queries");
    // The client-reported attack panel shows what the efficacy update said (in bit/s).
    let reported = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Attack traffic the client still sees")
        .expect("the panel")["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .replace("$job", ".+")
        .replace("$instance", ".+");
    assert_eq!(
        wait_for(Duration::from_secs(10), || query(&pair.b, &reported)),
        Some(40_000_000.0),
        "{reported}"
    );

    drop(prometheus);
    let _ = stop.send(());
    server.join().unwrap().unwrap();
}

/// `[metrics]` over TLS, requiring a client certificate from the lab CA and a bearer
/// token: Prometheus with both scrapes (the build info and the process collector's series
/// included); without the token, or without a certificate, it is refused (`up` is 0).
#[test]
fn prometheus_scrapes_through_tls_with_a_client_certificate_and_a_token() {
    let ns = Netns::new("pmtls");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(
        d,
        "dots.example",
        &[],
        &["client-a".into(), "prometheus".into()],
    )
    .unwrap();
    std::fs::write(d.join("metrics.token"), "s3cr3t-scrape-token\n").unwrap();
    std::fs::write(d.join("wrong.token"), "not-the-token\n").unwrap();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[signal]\nlisten = [\"127.0.0.1:4646\"]\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state\"\n\
             [metrics]\nlisten = [\"{METRICS}\"]\nbearer_token_file = \"metrics.token\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\", client_ca = \"ca.pem\" }}\n\
             [[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n"
        ),
    )
    .unwrap();
    let (server, stop) = start_server(&ns, &config);
    let job = |name: &str, cert: bool, token: &str| {
        let mut j = format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      server_name: dots.example\n",
            ca = d.join("ca.pem").display()
        );
        if cert {
            j += &format!(
                "      cert_file: {}\n      key_file: {}\n",
                d.join("prometheus.pem").display(),
                d.join("prometheus.key").display()
            );
        }
        j += &format!(
            "    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{METRICS}']\n",
            d.join(token).display()
        );
        j
    };
    let scrape_configs = [
        job("dots-agent", true, "metrics.token"),
        job("wrong-token", true, "wrong.token"),
        job("no-certificate", false, "metrics.token"),
    ]
    .concat();
    let prometheus = Prometheus::start_with(&ns, d, &scrape_configs);

    let up = |job: &str| query(&ns, &format!("up{{job=\"{job}\"}}"));
    assert_eq!(
        wait_for(Duration::from_secs(30), || up("dots-agent")
            .filter(|v| *v == 1.0)),
        Some(1.0),
        "Prometheus scrapes with certificate and token"
    );
    let one = |promql: &str| wait_for(Duration::from_secs(10), || query(&ns, promql));
    assert_eq!(one("dots_build_info{job=\"dots-agent\"}"), Some(1.0));
    assert!(one("process_resident_memory_bytes{job=\"dots-agent\"}").is_some_and(|v| v > 0.0));
    assert_eq!(
        one("dots_signal_sessions{job=\"dots-agent\",transport=\"dtls\"}"),
        Some(0.0),
        "a known series exists from the start, at 0"
    );
    // `up` of a job exists once its first scrape is over: 0 for each refused one.
    assert_eq!(
        one("up{job=\"wrong-token\"}"),
        Some(0.0),
        "a wrong token is refused"
    );
    assert_eq!(
        one("up{job=\"no-certificate\"}"),
        Some(0.0),
        "no client certificate: refused"
    );

    drop(prometheus);
    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
