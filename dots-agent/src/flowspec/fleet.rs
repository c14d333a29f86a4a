//! Counting the fleet: each node serves its filter's drop counters per destination prefix
//! on `/metrics` ([`serve_node_metrics`]); Prometheus scrapes every node; the DOTS server
//! asks Prometheus for them ([`FleetCounts`]) and adds them to its own in the status. A node
//! that does not answer Prometheus is named in `/metrics` and in the log; its last counts stay
//! in the sum (`last_over_time`), so it is never silently missing from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use serde_json::Value;
use xdp_common::Counter;

/// How long a node's last counts stay in the fleet's sum after it stops answering.
const LAST_SEEN_WINDOW: &str = "1h";
const HTTP_TIME: Duration = Duration::from_secs(10);

/// What Prometheus last said about the fleet.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    /// Dropped packets and bytes per destination prefix, summed over nodes.
    pub dropped: BTreeMap<IpNet, Counter>,
    /// Each node (Prometheus instance) and whether its last scrape succeeded.
    pub nodes: BTreeMap<String, bool>,
    pub prometheus_up: bool,
}

impl FleetView {
    /// The fleet's drops to `targets` (node prefixes inside them); None if Prometheus has
    /// never answered.
    pub fn dropped_within(&self, targets: &[IpNet]) -> Counter {
        let mut sum = Counter::default();
        for (prefix, c) in &self.dropped {
            if targets.iter().any(|t| t.contains(prefix)) {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
        }
        sum
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP dots_fleet_prometheus_up Whether the last query of Prometheus for the fleet's counters succeeded");
        let _ = writeln!(
            s,
            "# TYPE dots_fleet_prometheus_up gauge\ndots_fleet_prometheus_up {}",
            self.prometheus_up as u8
        );
        let _ = writeln!(s, "# HELP dots_fleet_node_up Whether Prometheus' last scrape of a scrubber node succeeded");
        let _ = writeln!(s, "# TYPE dots_fleet_node_up gauge");
        for (node, up) in &self.nodes {
            let _ = writeln!(
                s,
                "dots_fleet_node_up{{instance=\"{}\"}} {}",
                escape(node),
                *up as u8
            );
        }
        let down = self.nodes.values().filter(|u| !**u).count();
        let _ = writeln!(s, "# HELP dots_fleet_nodes_down Scrubber nodes Prometheus cannot scrape (their last counts stay in the sums)");
        let _ = writeln!(
            s,
            "# TYPE dots_fleet_nodes_down gauge\ndots_fleet_nodes_down {down}"
        );
        s
    }
}

/// A Prometheus label value in the text format: backslash, quote and newline escaped.
pub(super) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Queries Prometheus on a thread of its own: the counts right after Prometheus scraped a
/// node (asked every `probe`), and at least every `every`. Querying on a fixed clock instead
/// would add up to a whole period to the scrape interval before the status moves.
pub struct FleetCounts {
    view: Arc<Mutex<FleetView>>,
}

impl FleetCounts {
    /// `prometheus`: `http://host:port`; `job`: the scrape job of the nodes.
    pub fn start(
        prometheus: &str,
        job: &str,
        every: Duration,
        probe: Duration,
    ) -> Result<FleetCounts> {
        let addr = prometheus
            .strip_prefix("http://")
            .with_context(|| {
                format!("[flowspec] prometheus {prometheus:?}: give http://host:port")
            })?
            .trim_end_matches('/')
            .to_string();
        let view = Arc::new(Mutex::new(FleetView::default()));
        let shared = view.clone();
        let job = job.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the fleet's queries")?;
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut scrapes = Scrapes::default();
                    let mut last_query: Option<tokio::time::Instant> = None;
                    loop {
                        let due = last_query.is_none_or(|t| t.elapsed() >= every);
                        match scrapes.probe(&addr, &job).await {
                            Ok(scraped) if scraped || due => {
                                last_query = Some(tokio::time::Instant::now());
                                let next = query_fleet(&addr, &job).await;
                                update(&shared, next, &addr);
                            }
                            Ok(_) => {}
                            Err(e) => update(&shared, Err(e), &addr),
                        }
                        tokio::time::sleep(probe).await;
                    }
                })
            })?;
        Ok(FleetCounts { view })
    }

    pub fn view(&self) -> FleetView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// When Prometheus last scraped each node, as far as the thread knows.
#[derive(Default)]
struct Scrapes {
    last: BTreeMap<String, f64>,
}

impl Scrapes {
    /// Whether Prometheus scraped a node since the last probe (the time stamp of its `up`
    /// sample moved: a scrape's samples and its `up` are committed together).
    async fn probe(&mut self, addr: &str, job: &str) -> Result<bool> {
        let mut moved = false;
        for (labels, at) in query(addr, &format!("timestamp(up{{job=\"{job}\"}})")).await? {
            if let Some(i) = labels["instance"].as_str() {
                moved |= self.last.insert(i.to_string(), at) != Some(at);
            }
        }
        Ok(moved)
    }
}

/// Takes a query's answer into the shared view, logging what changed for the worse.
fn update(shared: &Mutex<FleetView>, next: Result<FleetView>, addr: &str) {
    let mut v = shared.lock().unwrap_or_else(|p| p.into_inner());
    match next {
        Ok(n) => {
            for (node, up) in &n.nodes {
                if v.nodes.get(node) != Some(up) && !up {
                    tracing::warn!("fleet: node {node} is down (Prometheus cannot scrape it); its last counts stay in the sums");
                }
            }
            *v = n;
        }
        Err(e) => {
            if v.prometheus_up {
                tracing::warn!("fleet: querying Prometheus at {addr}: {e}");
            }
            v.prometheus_up = false;
        }
    }
}

async fn query_fleet(addr: &str, job: &str) -> Result<FleetView> {
    let mut view = FleetView {
        prometheus_up: true,
        ..Default::default()
    };
    let sel = format!("{{job=\"{job}\"}}");
    for (metric, bytes) in [
        ("dots_node_dropped_packets_total", false),
        ("dots_node_dropped_bytes_total", true),
    ] {
        let q = format!("sum by (target) (last_over_time({metric}{sel}[{LAST_SEEN_WINDOW}]))");
        for (labels, value) in query(addr, &q).await? {
            let Some(prefix) = labels["target"]
                .as_str()
                .and_then(|t| t.parse::<IpNet>().ok())
            else {
                continue;
            };
            let c = view.dropped.entry(prefix).or_default();
            *(if bytes { &mut c.bytes } else { &mut c.packets }) = value as u64;
        }
    }
    for (labels, value) in query(addr, &format!("up{sel}")).await? {
        if let Some(i) = labels["instance"].as_str() {
            view.nodes.insert(i.to_string(), value == 1.0);
        }
    }
    Ok(view)
}

/// Prometheus' instant query API: (labels, value) of each series.
async fn query(addr: &str, promql: &str) -> Result<Vec<(Value, f64)>> {
    let path = format!("/api/v1/query?query={}", percent_encode(promql));
    let body = tokio::time::timeout(HTTP_TIME, http_get(addr, &path))
        .await
        .context("Prometheus did not answer in time")??;
    let v: Value = serde_json::from_slice(&body).context("Prometheus' answer")?;
    if v["status"] != "success" {
        anyhow::bail!("Prometheus refused {promql}: {}", v["error"]);
    }
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let value = r["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((r["metric"].clone(), value))
        })
        .collect())
}

async fn http_get(addr: &str, path: &str) -> Result<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        anyhow::bail!("HTTP {} from Prometheus", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// A query string value: everything but unreserved characters percent-encoded (RFC 3986).
/// Written here because no URL crate is among the dependencies and this is all we need.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders the node's exposition when it is scraped (it may block: it runs off the runtime).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves what `render` gives (the node's exposition) on `GET /metrics` at each address,
/// each connection bounded in time.
pub fn serve_node_metrics(addrs: &[SocketAddr], render: Render) -> Result<MetricsServer> {
    let mut listeners = Vec::new();
    for a in addrs {
        let l = std::net::TcpListener::bind(a)
            .with_context(|| format!("listening on {a} (metrics)"))?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for /metrics")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for l in listeners {
                    let render = render.clone();
                    tasks.push(tokio::spawn(async move {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            return;
                        };
                        let slots = Arc::new(tokio::sync::Semaphore::new(16));
                        loop {
                            let Ok(slot) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let Ok((tcp, _)) = l.accept().await else {
                                continue;
                            };
                            let render = render.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(
                                    move |_req: Request<hyper::body::Incoming>| {
                                        let render = render.clone();
                                        async move {
                                            let body =
                                                tokio::task::spawn_blocking(move || render())
                                                    .await
                                                    .unwrap_or_default();
                                            Response::builder()
                                                .header("content-type", "text/plain; version=0.0.4")
                                                .body(Full::new(Bytes::from(body)))
                                        }
                                    },
                                );
                                let conn = hyper::server::conn::http1::Builder::new()
                                    .timer(TokioTimer::new())
                                    .header_read_timeout(HTTP_TIME)
                                    .serve_connection(TokioIo::new(tcp), service);
                                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                                drop(slot);
                            });
                        }
                    }));
                }
                let _ = stopped.await;
                for t in tasks {
                    t.abort();
                }
            })
        })?;
    Ok(MetricsServer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The node's `/metrics` listeners; closed when dropped.
pub struct MetricsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A node's exposition: its filter's drops per destination prefix.
pub fn node_exposition(drops: &[(IpNet, Counter)], rules: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# HELP dots_node_dropped_packets_total Packets this node's filter dropped, per FlowSpec destination prefix");
    let _ = writeln!(s, "# TYPE dots_node_dropped_packets_total counter");
    for (p, c) in drops {
        let _ = writeln!(
            s,
            "dots_node_dropped_packets_total{{target=\"{p}\"}} {}",
            c.packets
        );
    }
    let _ = writeln!(s, "# HELP dots_node_dropped_bytes_total Bytes this node's filter dropped, per FlowSpec destination prefix");
    let _ = writeln!(s, "# TYPE dots_node_dropped_bytes_total counter");
    for (p, c) in drops {
        let _ = writeln!(
            s,
            "dots_node_dropped_bytes_total{{target=\"{p}\"}} {}",
            c.bytes
        );
    }
    let _ = writeln!(
        s,
        "# HELP dots_node_flowspec_rules FlowSpec rules installed in this node's filter"
    );
    let _ = writeln!(
        s,
        "# TYPE dots_node_flowspec_rules gauge\ndots_node_flowspec_rules {rules}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_sum_takes_node_prefixes_inside_the_targets() {
        let mut v = FleetView::default();
        let c = |p| Counter {
            packets: p,
            bytes: p * 100,
        };
        v.dropped.insert("198.51.100.0/24".parse().unwrap(), c(5));
        v.dropped.insert("198.51.100.7/32".parse().unwrap(), c(2));
        v.dropped.insert("203.0.113.0/24".parse().unwrap(), c(1000));
        let s = v.dropped_within(&["198.51.100.0/24".parse().unwrap()]);
        assert_eq!((s.packets, s.bytes), (7, 700));
        v.nodes.insert("192.0.2.9:9464".into(), false);
        assert!(v.render().contains("dots_fleet_nodes_down 1"));
        assert_eq!(percent_encode("up{job=\"x\"}"), "up%7Bjob%3D%22x%22%7D");
    }
}
