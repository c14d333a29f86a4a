//! `dots-lab soak`: the server killed with SIGKILL again and again while a client streams
//! PUTs and DELETEs of mitigations over DTLS, with XDP attached on the scrubber's ingress
//! and an attack flowing to every target. After each restart the client compares what it
//! was acknowledged with what a GET returns; at the end every attack packet that reached
//! the customer is checked against the times its target's mitigation was acknowledged.
//!
//! The attack frames carry their send time (wall clock). A frame sent after a PUT's 2.01
//! arrived and received before the client sent that mitigation's DELETE passed the filter
//! while the mitigation was acknowledged and in force: a violation. (Rules are written
//! before the 2.01 is sent, so there is no grace period to allow.) A frame sent inside such
//! a window but read after it closed is counted apart as "at a window's edge".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dots_agent::af_packet::PacketSocket;
use dots_agent::client::{Session, TransportChoice};
use dots_agent::datapath::XdpDatapath;

use super::{block_on, human, in_force, summary, unix_ns, until_answering, Rng, Scratch};
use crate::lab::topology::{self, interrupted};
use crate::packet::PacketSpec;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How many times the server is killed with SIGKILL.
    #[arg(long, default_value_t = 100)]
    pub kills: u32,
    /// Mitigations the stream creates and withdraws (one /32 target each).
    #[arg(long, default_value_t = 32)]
    pub targets: u32,
    /// Attack packets per second to each target.
    #[arg(long, default_value_t = 200)]
    pub pps: u32,
    /// The stream runs this long (random, in milliseconds) before each kill.
    #[arg(long, default_value_t = 300)]
    pub min_run_ms: u64,
    #[arg(long, default_value_t = 2500)]
    pub max_run_ms: u64,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The signal channel's transport for the stream.
    #[arg(long, default_value = "dtls", value_parser = ["dtls", "tls"])]
    pub transport: String,
    /// The dots-agent binary (default: the one beside dots-lab).
    #[arg(long)]
    pub agent: Option<std::path::PathBuf>,
}

const MAGIC: u32 = 0x534f_414b; // "SOAK"
const PAYLOAD_AT: usize = 14 + 20 + 8;
/// How long the server may take to answer after a start, and the client to reconnect.
const BUDGET: Duration = Duration::from_secs(60);

fn target(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 51, 100, 64 + i as u8)
}

/// A time during which a target's mitigation was acknowledged (wall-clock ns).
#[derive(Clone, Copy, Debug)]
struct Window {
    target: u32,
    from: u64,
    to: Option<u64>,
}

/// What the client believes of one mid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Absent,
    /// Acknowledged (2.01/2.04), with its window's index (None: adopted from a GET).
    Present(Option<usize>),
    /// Sent, no answer (the server died): either is right until a GET tells.
    Unknown,
}

/// After one restart: what the client had been acknowledged, and what the GET showed.
#[derive(Debug, Default)]
struct Reconciled {
    acknowledged: usize,
    restored: usize,
    lost: Vec<u32>,
    resurrected: Vec<u32>,
    unknown: usize,
}

#[derive(Default)]
struct Tally {
    puts: u64,
    deletes: u64,
    unanswered: u64,
    refused: Vec<String>,
}

enum Go {
    /// The server is up: reconcile, then stream until a request fails.
    Stream,
    /// Reconcile only, and finish.
    Finish,
}

struct Client {
    cfg: dots_agent::client::ClientConfig,
    known: Vec<Known>,
    windows: Vec<Window>,
    tally: Tally,
    rng: Rng,
    targets: u32,
}

impl Client {
    async fn connect(&self) -> Result<Session> {
        let t = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), Session::connect(&self.cfg)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) if t.elapsed() > BUDGET => return Err(e),
                Err(_) if t.elapsed() > BUDGET => bail!("no session within {BUDGET:?}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn reconcile(&mut self, s: &mut Session) -> Result<Reconciled> {
        let shown = super::held(s).await?;
        let active = |mid: u32| shown.iter().any(|(m, st)| *m == mid && in_force(*st));
        let mut r = Reconciled::default();
        for i in 0..self.targets {
            let mid = i + 1;
            match self.known[i as usize] {
                Known::Present(window) => {
                    r.acknowledged += 1;
                    if active(mid) {
                        r.restored += 1;
                    } else {
                        // Reported; from here on the client follows the server.
                        r.lost.push(mid);
                        if let Some(w) = window {
                            self.windows[w].to = Some(unix_ns());
                        }
                        self.known[i as usize] = Known::Absent;
                    }
                }
                Known::Absent if active(mid) => {
                    r.resurrected.push(mid);
                    self.known[i as usize] = Known::Present(None);
                }
                Known::Absent => {}
                Known::Unknown => {
                    r.unknown += 1;
                    self.known[i as usize] = if active(mid) {
                        Known::Present(None)
                    } else {
                        Known::Absent
                    };
                }
            }
        }
        Ok(r)
    }

    /// Random PUTs and DELETEs until one gets no answer (the server was killed).
    async fn stream(&mut self, s: &mut Session, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) && !interrupted() {
            let i = self.rng.below(self.targets as u64) as usize;
            let mid = i as u32 + 1;
            match self.known[i] {
                Known::Present(window) => {
                    let sent = unix_ns();
                    if let Some(w) = window {
                        self.windows[w].to = Some(sent);
                    }
                    match until_stopped(super::delete(s, mid), stop).await {
                        Ok(code) if code == "2.02" => {
                            self.known[i] = Known::Absent;
                            self.tally.deletes += 1;
                        }
                        Ok(code) => {
                            self.known[i] = Known::Unknown;
                            self.tally.refused.push(format!("DELETE mid {mid}: {code}"));
                        }
                        Err(_) => {
                            self.known[i] = Known::Unknown;
                            self.tally.unanswered += 1;
                            return;
                        }
                    }
                }
                Known::Absent | Known::Unknown => {
                    let prefix = ipnet::IpNet::from(std::net::IpAddr::V4(target(i as u32)));
                    match until_stopped(super::put(s, mid, prefix), stop).await {
                        Ok(code) if code == "2.01" || code == "2.04" => {
                            self.windows.push(Window {
                                target: i as u32,
                                from: unix_ns(),
                                to: None,
                            });
                            self.known[i] = Known::Present(Some(self.windows.len() - 1));
                            self.tally.puts += 1;
                        }
                        Ok(code) => {
                            self.known[i] = Known::Unknown;
                            self.tally.refused.push(format!("PUT mid {mid}: {code}"));
                        }
                        Err(_) => {
                            self.known[i] = Known::Unknown;
                            self.tally.unanswered += 1;
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// `request`'s result, or an error once `stop` is set (the server was killed: over DTLS
/// nothing tells the client, which would repeat the request for seconds).
async fn until_stopped(
    request: impl std::future::Future<Output = Result<String>>,
    stop: &AtomicBool,
) -> Result<String> {
    let stopped = async {
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        r = request => r,
        _ = stopped => bail!("the server was killed"),
    }
}

/// The client's side, on its own thread in the customer namespace: for each `Go`, a
/// fresh session, a reconciliation (sent back), then the stream.
async fn client_loop(
    mut c: Client,
    go: mpsc::Receiver<Go>,
    back: mpsc::Sender<Result<Reconciled>>,
    stop: Arc<AtomicBool>,
) -> (Vec<Window>, Tally) {
    while let Ok(order) = go.recv() {
        let mut s = match c.connect().await {
            Ok(s) => s,
            Err(e) => {
                let _ = back.send(Err(e.context("connecting after a restart")));
                break;
            }
        };
        let r = c.reconcile(&mut s).await;
        let failed = r.is_err();
        let _ = back.send(r);
        if failed || matches!(order, Go::Finish) {
            break;
        }
        stop.store(false, Ordering::SeqCst);
        c.stream(&mut s, &stop).await;
    }
    (c.windows, c.tally)
}

/// An attack frame per target: UDP 192.0.2.100:40000 -> target:9999, payload = magic,
/// target index, send time (filled in per batch). The UDP checksum is left out (0).
fn frames(targets: u32, src_mac: [u8; 6]) -> Vec<Vec<u8>> {
    (0..targets)
        .map(|i| {
            let mut s = PacketSpec::udp("192.0.2.100", &target(i).to_string(), 40000, 9999);
            s.src_mac = src_mac;
            s.dst_mac = crate::trafficgen::parse_mac(topology::SCR_IN_MAC).expect("constant");
            s.payload_len = 16;
            let mut f = s.build();
            f[40..42].copy_from_slice(&[0, 0]);
            f[PAYLOAD_AT..PAYLOAD_AT + 4].copy_from_slice(&MAGIC.to_be_bytes());
            f[PAYLOAD_AT + 4..PAYLOAD_AT + 8].copy_from_slice(&i.to_be_bytes());
            f
        })
        .collect()
}

fn generate(
    sock: PacketSocket,
    mut frames: Vec<Vec<u8>>,
    pps: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    let period = Duration::from_secs_f64(1.0 / pps.max(1) as f64);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = unix_ns().to_be_bytes();
        for f in frames.iter_mut() {
            f[PAYLOAD_AT + 8..PAYLOAD_AT + 16].copy_from_slice(&now);
        }
        let batch: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let n = sock.send_batch(&batch)?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        next += period;
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            next = Instant::now(); // behind: no burst to catch up
        } else {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// (target index, send time, read time) of every attack frame that reached the customer.
type Arrivals = Vec<(u32, u64, u64)>;

fn receive(sock: PacketSocket, stop: &AtomicBool) -> Result<(Arrivals, u64)> {
    sock.set_receive_buffer(32 << 20)?;
    sock.set_receive_timeout(Duration::from_millis(50))?;
    let mut buf = [0u8; 128];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = sock.recv(&mut buf)? else {
            continue;
        };
        let f = &buf[..r.len.min(buf.len())];
        if r.outgoing || f.len() < PAYLOAD_AT + 16 || f[12..14] != [8, 0] || f[23] != 17 {
            continue;
        }
        if f[PAYLOAD_AT..PAYLOAD_AT + 4] != MAGIC.to_be_bytes() {
            continue;
        }
        let idx = u32::from_be_bytes(f[PAYLOAD_AT + 4..PAYLOAD_AT + 8].try_into().expect("4"));
        let sent = u64::from_be_bytes(f[PAYLOAD_AT + 8..PAYLOAD_AT + 16].try_into().expect("8"));
        out.push((idx, sent, unix_ns()));
    }
    let drops = sock.statistics().map(|s| s.drops).unwrap_or(0);
    Ok((out, drops))
}

/// Arrivals inside an acknowledged window: (certain, at a window's edge).
fn violations(windows: &[Window], arrivals: &Arrivals, end: u64) -> (u64, u64) {
    let mut per: Vec<Vec<(u64, u64)>> = Vec::new();
    for w in windows {
        if per.len() <= w.target as usize {
            per.resize(w.target as usize + 1, Vec::new());
        }
        per[w.target as usize].push((w.from, w.to.unwrap_or(end)));
    }
    let (mut certain, mut edge) = (0, 0);
    for &(t, sent, read) in arrivals {
        let Some(ws) = per.get(t as usize) else {
            continue;
        };
        // Windows of one target never overlap and are in order.
        let i = ws.partition_point(|(from, _)| *from <= sent);
        if i == 0 {
            continue;
        }
        let (_, to) = ws[i - 1];
        if sent < to {
            if read < to {
                certain += 1;
            } else {
                edge += 1;
            }
        }
    }
    (certain, edge)
}

pub fn run(a: &SoakArgs) -> Result<()> {
    if a.targets == 0 || a.targets > 128 {
        bail!("--targets {}: give 1 to 128", a.targets);
    }
    if a.min_run_ms > a.max_run_ms {
        bail!("--min-run-ms must not exceed --max-run-ms");
    }
    let agent = super::agent(a.agent.as_ref())?;
    let seed = a.seed.unwrap_or_else(unix_ns);
    let acl = "acl = [{ name = \"udp-9999\", action = \"drop\", matches = { protocol = 17, destination_port = { lower = 9999 } } }]";
    let scratch = Scratch::new(agent, acl, "terminating_seconds = 0")?;
    for i in 0..a.targets {
        scratch.topo.neighbour(std::net::IpAddr::V4(target(i)))?;
    }
    let transport = if a.transport == "tls" {
        TransportChoice::Tls
    } else {
        TransportChoice::Dtls
    };
    println!(
        "soak: {} kill -9 of dots-agent server (XDP on {}), a PUT/DELETE stream over {} on {} targets, \
         attack {} pps to each (UDP to port 9999, dropped by the client's ACL while mitigated); seed {seed}\n\
         soak: namespaces {}, {}, {}; state in {}",
        a.kills,
        topology::SCR_IN,
        a.transport,
        a.targets,
        a.pps,
        scratch.topo.inet.name,
        scratch.topo.scrubber.name,
        scratch.topo.customer.name,
        scratch.dir.display()
    );

    // The attack and the customer's receiver run for the whole soak.
    let traffic_stop = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(AtomicU64::new(0));
    let src_mac = scratch
        .topo
        .inet
        .run_in(|| crate::trafficgen::interface_mac(topology::INET_IF))??;
    let receiver = {
        let stop = traffic_stop.clone();
        scratch
            .topo
            .customer
            .spawn(move || -> Result<(Arrivals, u64)> {
                receive(PacketSocket::open(topology::CUST_IF)?, &stop)
            })?
    };
    let generator = {
        let (stop, sent) = (traffic_stop.clone(), offered.clone());
        let (frames, pps) = (frames(a.targets, src_mac), a.pps);
        scratch.topo.inet.spawn(move || -> Result<()> {
            let sock = PacketSocket::open_send_only(topology::INET_IF)?;
            let _ = sock.bypass_qdisc();
            generate(sock, frames, pps, &stop, &sent)
        })?
    };
    let finish_traffic = |traffic_stop: &AtomicBool| traffic_stop.store(true, Ordering::SeqCst);

    let mut server = scratch.start_server(None)?;
    let first = block_on(&scratch.topo.customer, {
        let (cfg, started) = (scratch.client(TransportChoice::Tls), server.started);
        move || until_answering(cfg, started, BUDGET)
    })?;
    if first.is_none()
        || !XdpDatapath::attached(&scratch.pins)
            .iter()
            .any(|i| i == topology::SCR_IN)
    {
        finish_traffic(&traffic_stop);
        bail!(
            "the server did not start (XDP on {}):\n{}",
            topology::SCR_IN,
            scratch.server_log_tail()
        );
    }

    let (go_tx, go_rx) = mpsc::channel();
    let (back_tx, back_rx) = mpsc::channel();
    let stream_stop = Arc::new(AtomicBool::new(false));
    let client = Client {
        cfg: scratch.client(transport),
        known: vec![Known::Absent; a.targets as usize],
        windows: Vec::new(),
        tally: Tally::default(),
        rng: Rng::new(seed),
        targets: a.targets,
    };
    let client_thread = scratch.topo.customer.spawn({
        let stop = stream_stop.clone();
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(client_loop(client, go_rx, back_tx, stop))
        }
    })?;

    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut restarts = Vec::new();
    let (mut acknowledged, mut restored) = (0usize, 0usize);
    let mut problems = Vec::new();
    let soak_started = Instant::now();
    let result = (|| -> Result<()> {
        go_tx
            .send(Go::Stream)
            .ok()
            .context("the client thread ended")?;
        let r = back_rx
            .recv_timeout(BUDGET * 2)
            .context("no reconciliation from the client")??;
        debug_assert_eq!(r.acknowledged, 0);
        for kill in 1..=a.kills {
            if interrupted() {
                bail!("interrupted");
            }
            let run_ms = a.min_run_ms + rng.below(a.max_run_ms - a.min_run_ms + 1);
            std::thread::sleep(Duration::from_millis(run_ms));
            if let Some(st) = server.exited() {
                bail!(
                    "the server exited by itself ({st}):\n{}",
                    scratch.server_log_tail()
                );
            }
            server.kill9();
            stream_stop.store(true, Ordering::SeqCst);
            server = scratch.start_server(None)?;
            let up = block_on(&scratch.topo.customer, {
                let (cfg, started) = (scratch.client(TransportChoice::Tls), server.started);
                move || until_answering(cfg, started, BUDGET)
            })?
            .with_context(|| {
                format!(
                    "restart {kill}: not answering after {BUDGET:?}:\n{}",
                    scratch.server_log_tail()
                )
            })?;
            restarts.push(up);
            go_tx
                .send(if kill == a.kills {
                    Go::Finish
                } else {
                    Go::Stream
                })
                .ok()
                .context("the client thread ended")?;
            let r = back_rx
                .recv_timeout(BUDGET * 2)
                .context("no reconciliation from the client")??;
            acknowledged += r.acknowledged;
            restored += r.restored;
            let mut note = String::new();
            if !r.lost.is_empty() {
                note += &format!(" LOST (acknowledged, not restored): mids {:?}", r.lost);
                problems.push(format!("restart {kill}: lost {:?}", r.lost));
            }
            if !r.resurrected.is_empty() {
                note += &format!(
                    " RESURRECTED (withdrawal acknowledged, back in force): mids {:?}",
                    r.resurrected
                );
                problems.push(format!("restart {kill}: resurrected {:?}", r.resurrected));
            }
            println!(
                "  kill {kill:>3} after {:>4} ms: listening again after {} (answers a heartbeat); acknowledged {:>3}, restored {:>3}{}{note}",
                run_ms,
                human(up),
                r.acknowledged,
                r.restored,
                if r.unknown > 0 { format!(" ({} in flight at the kill, settled by the GET)", r.unknown) } else { String::new() },
            );
        }
        Ok(())
    })();
    stream_stop.store(true, Ordering::SeqCst);
    drop(go_tx);
    let (windows, tally) = client_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    // The attack keeps flowing a moment past the last reconciliation, then stops.
    std::thread::sleep(Duration::from_millis(200));
    let end = unix_ns();
    finish_traffic(&traffic_stop);
    generator
        .join()
        .map_err(|_| anyhow::anyhow!("the generator panicked"))??;
    let (arrivals, receiver_drops) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    result?;
    let (certain, edge) = violations(&windows, &arrivals, end);
    let in_windows: Duration = windows
        .iter()
        .map(|w| Duration::from_nanos(w.to.unwrap_or(end).saturating_sub(w.from)))
        .sum();

    println!(
        "\n== soak summary ({:.0} s)",
        soak_started.elapsed().as_secs_f64()
    );
    println!(
        "requests acknowledged              {} (PUT 2.01/2.04: {}, DELETE 2.02: {}); unanswered at a kill: {}; refused: {}",
        tally.puts + tally.deletes,
        tally.puts,
        tally.deletes,
        tally.unanswered,
        tally.refused.len()
    );
    for r in tally.refused.iter().take(5) {
        println!("    refused: {r}");
    }
    println!(
        "acknowledged vs restored           {acknowledged} vs {restored} over {} restarts{}",
        restarts.len(),
        if acknowledged == restored && problems.is_empty() {
            " (equal)"
        } else {
            " (NOT EQUAL)"
        }
    );
    for p in &problems {
        println!("    {p}");
    }
    println!(
        "restart until listening            {} (each: a heartbeat over TLS answered)",
        summary(&restarts)
    );
    println!(
        "attack packets                     {} offered, {} reached the customer (receiver socket drops: {receiver_drops})",
        offered.load(Ordering::Relaxed),
        arrivals.len()
    );
    println!(
        "passed while acknowledged          {certain} (mitigations acknowledged for {:.0} s in all; at a window's edge: {edge})",
        in_windows.as_secs_f64()
    );
    if certain > 0 || acknowledged != restored || !problems.is_empty() {
        bail!("the soak found violations (above)");
    }
    Ok(())
}
