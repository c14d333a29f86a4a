//! `dots-lab bounds`: the server's resources under three loads at once, and whether a real
//! client still gets its mitigation:
//!
//! - N authenticated DTLS sessions (each sent a heartbeat), held open and idle;
//! - a handshake flood: DTLS ClientHellos without cookies (the bytes OpenSSL's client
//!   sends, captured once) from spoofed sources all over 203.0.113.0/24, sent as raw frames
//!   from the internet namespace (the server's answers are routed back there and vanish);
//! - a slow-connection flood: connections to the TLS signal channel, the data channel and
//!   /metrics that send the start of a request and then one byte every 5 s.
//!
//! Meanwhile a client connects afresh every 2 s (DTLS and TLS in turn) and PUTs a
//! mitigation: its time to mitigate is printed as it goes. The server's resident memory and
//! open descriptors are printed before, with the sessions, during the floods (each 5 s and
//! the peak), after the floods and after everything closed. The server starts with a soft
//! descriptor limit of 1,024 (the common default): what it does about that is its own.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dots_agent::af_packet::PacketSocket;
use dots_agent::client::{ClientConfig, Session, TransportChoice};

use super::{block_on, human, rss_and_fds, summary, until_answering, Rng, Scratch};
use crate::lab::topology::{self, interrupted};
use crate::packet::{checksum, PacketSpec};

#[derive(Args, Debug)]
pub struct BoundsArgs {
    /// Authenticated DTLS sessions held open during the floods.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u32,
    /// Spoofed ClientHellos per second.
    #[arg(long, default_value_t = 10_000)]
    pub hellos_pps: u32,
    /// Slow connections per TCP listener (signal TLS, data channel, /metrics).
    #[arg(long, default_value_t = 1_000)]
    pub slow: u32,
    /// How long the floods last.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The server's soft limit on open descriptors at start.
    #[arg(long, default_value_t = 1024)]
    pub server_nofile: u64,
    /// The dots-agent binary (default: the one beside dots-lab).
    #[arg(long)]
    pub agent: Option<std::path::PathBuf>,
}

const SIGNAL: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    super::SIGNAL_PORT,
);
const DATA: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    super::DATA_PORT,
);

/// The first datagram OpenSSL's DTLS client sends (a ClientHello without a cookie), taken
/// from a real handshake attempt towards a socket that never answers.
async fn capture_client_hello(cfg: ClientConfig) -> Result<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let cfg = ClientConfig {
        server: sock.local_addr()?.to_string(),
        transport: TransportChoice::Dtls,
        ..cfg
    };
    let mut buf = vec![0u8; 4096];
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)) => {
            let (n, _) = r.context("no ClientHello within 5 s")??;
            Ok(buf[..n].to_vec())
        }
        _ = Session::connect(&cfg) => bail!("the handshake ended before a ClientHello was seen"),
    }
}

/// Frames carrying `hello` to the server from spoofed 203.0.113.0/24 sources and ports.
fn hello_frames(hello: &[u8], src_mac: [u8; 6], n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let dst_mac = crate::trafficgen::parse_mac(topology::SCR_IN_MAC).expect("constant");
    (0..n)
        .map(|_| {
            let src = Ipv4Addr::new(203, 0, 113, rng.below(254) as u8 + 1);
            let sport = 1024 + rng.below(60_000) as u16;
            let mut s = PacketSpec::udp(
                &src.to_string(),
                topology::SERVER_V4,
                sport,
                super::SIGNAL_PORT,
            );
            s.src_mac = src_mac;
            s.dst_mac = dst_mac;
            s.payload_len = hello.len();
            let mut f = s.build();
            f[42..].copy_from_slice(hello);
            // UDP checksum left out (0: allowed over IPv4), the payload having changed.
            f[40..42].copy_from_slice(&[0, 0]);
            debug_assert_eq!(checksum(&f[14..34]), 0);
            f
        })
        .collect()
}

fn flood_hellos(frames: Vec<Vec<u8>>, pps: u32, stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let sock = PacketSocket::open_send_only(topology::INET_IF)?;
    let _ = sock.bypass_qdisc();
    // Batches of 64 every 64/pps seconds.
    let period = Duration::from_secs_f64(64.0 / pps.max(1) as f64);
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<&[u8]> = (0..64)
            .map(|k| frames[(i + k) % frames.len()].as_slice())
            .collect();
        i += 64;
        sent.fetch_add(sock.send_batch(&batch)? as u64, Ordering::Relaxed);
        next += period;
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            next = Instant::now();
        } else {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Opens `n` connections to `to` that send `start` and then one more byte every 5 s, until
/// `stop`. Returns (opened, still open at the end).
fn slow_flood(to: SocketAddr, start: &'static [u8], n: u32, stop: &AtomicBool) -> (u32, u32) {
    let mut conns = Vec::new();
    for _ in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            if c.write_all(start).is_ok() {
                let _ = c.set_write_timeout(Some(Duration::from_millis(100)));
                conns.push(c);
            }
        }
    }
    let opened = conns.len() as u32;
    let mut next = Instant::now() + Duration::from_secs(5);
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += Duration::from_secs(5);
            // A write to a connection the server closed fails (at the latest the second
            // one, after its reset): those are dropped.
            conns.retain_mut(|c| c.write_all(b"X").is_ok());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    conns.retain_mut(|c| c.write_all(b"X").is_ok() && c.write_all(b"X").is_ok());
    (opened, conns.len() as u32)
}

/// A fresh session and a PUT every 2 s, DTLS and TLS in turn, until `stop`; each time is
/// printed as it is measured.
async fn probe(cfg: ClientConfig, stop: Arc<AtomicBool>, t0: Instant) -> (Vec<Duration>, u32) {
    let mut times = Vec::new();
    let mut failed = 0;
    let mut mid = 1;
    while !stop.load(Ordering::Relaxed) && !interrupted() {
        let transport = if mid % 2 == 1 {
            TransportChoice::Dtls
        } else {
            TransportChoice::Tls
        };
        let cfg = ClientConfig {
            transport,
            ..cfg.clone()
        };
        let start = Instant::now();
        let attempt = async {
            let mut s = Session::connect(&cfg).await?;
            let target: ipnet::IpNet = format!("198.51.100.{}/32", 100 + mid % 150).parse()?;
            super::put(&mut s, mid, target).await
        };
        let what = if transport == TransportChoice::Dtls {
            "dtls"
        } else {
            "tls"
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(code)) if code == "2.01" => {
                times.push(start.elapsed());
                println!(
                    "  {:>5.1} s  client over {what}: connect + PUT -> 2.01 in {}",
                    t0.elapsed().as_secs_f64(),
                    human(start.elapsed())
                );
            }
            other => {
                failed += 1;
                let why = match other {
                    Ok(Ok(code)) => code,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "no answer within 15 s".into(),
                };
                println!(
                    "  {:>5.1} s  client over {what}: FAILED: {why}",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        mid += 1;
        let rest = Duration::from_secs(2).saturating_sub(start.elapsed());
        tokio::time::sleep(rest).await;
    }
    (times, failed)
}

fn show(what: &str, pid: u32) -> (u64, usize) {
    let (rss, fds) = rss_and_fds(pid);
    println!(
        "{what:<44} RSS {:>8.1} MiB, {fds:>6} descriptors",
        rss as f64 / 1024.0
    );
    (rss, fds)
}

fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit calls with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

pub fn run(a: &BoundsArgs) -> Result<()> {
    raise_own_fd_limit();
    let scratch = Scratch::new(super::agent(a.agent.as_ref())?, "", "")?;
    // The server's answers to spoofed sources go back towards the internet namespace, and
    // the slow connections come from there: the attacker's side of the scrubber.
    scratch
        .topo
        .scrubber
        .ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.1"])?;
    scratch
        .topo
        .inet
        .ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.254"])?;
    let server = scratch.start_server(Some(a.server_nofile))?;
    let pid = server.pid();
    let up = block_on(&scratch.topo.customer, {
        let (cfg, started) = (scratch.client(TransportChoice::Tls), server.started);
        move || until_answering(cfg, started, Duration::from_secs(60))
    })?;
    if up.is_none() {
        bail!("the server did not start:\n{}", scratch.server_log_tail());
    }
    println!(
        "bounds: dots-agent server (pid {pid}, soft descriptor limit {} at start, XDP on {}) with {} DTLS sessions, \
         {} spoofed ClientHellos/s and {} slow connections per TCP listener for {} s",
        a.server_nofile,
        topology::SCR_IN,
        a.sessions,
        a.hellos_pps,
        a.slow,
        a.seconds
    );
    std::thread::sleep(Duration::from_secs(1));
    show("before", pid);

    // The sessions, held by a thread of their own until told to let go.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (opened_tx, opened_rx) = mpsc::channel();
    let holder = scratch.topo.customer.spawn({
        let (cfg, n) = (scratch.client(TransportChoice::Dtls), a.sessions);
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(async move {
                    let t = Instant::now();
                    let mut open = Vec::with_capacity(n as usize);
                    let mut failures = 0u32;
                    while open.len() < n as usize && failures < 100 && !interrupted() {
                        let attempt = async {
                            let mut s = Session::connect(&cfg).await?;
                            s.heartbeat().await?;
                            anyhow::Ok(s)
                        };
                        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                            Ok(Ok(s)) => open.push(s),
                            _ => failures += 1,
                        }
                    }
                    let _ = opened_tx.send((open.len(), failures, t.elapsed()));
                    let _ = release_rx.recv();
                    drop(open);
                })
        }
    })?;
    let (opened, failures, took) = opened_rx.recv().context("the session holder ended")?;
    println!(
        "{opened} DTLS sessions opened in {:.1} s (each answered a heartbeat; {failures} attempts failed)",
        took.as_secs_f64()
    );
    show(&format!("with {opened} sessions"), pid);

    // The floods and the probing client.
    let stop = Arc::new(AtomicBool::new(false));
    let hellos_sent = Arc::new(AtomicU64::new(0));
    let hello = block_on(&scratch.topo.customer, {
        let cfg = scratch.client(TransportChoice::Dtls);
        move || capture_client_hello(cfg)
    })??;
    let src_mac = scratch
        .topo
        .inet
        .run_in(|| crate::trafficgen::interface_mac(topology::INET_IF))??;
    let frames = hello_frames(&hello, src_mac, 4096, &mut Rng::new(super::unix_ns()));
    let t0 = Instant::now();
    let hellos = scratch.topo.inet.spawn({
        let (stop, sent, pps) = (stop.clone(), hellos_sent.clone(), a.hellos_pps);
        move || flood_hellos(frames, pps, &stop, &sent)
    })?;
    let tls_start: &'static [u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    let http_start: &'static [u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";
    let slow = vec![
        (
            "signal TLS",
            scratch.topo.inet.spawn({
                let (stop, n) = (stop.clone(), a.slow);
                move || slow_flood(SIGNAL, tls_start, n, &stop)
            })?,
        ),
        (
            "data channel",
            scratch.topo.inet.spawn({
                let (stop, n) = (stop.clone(), a.slow);
                move || slow_flood(DATA, tls_start, n, &stop)
            })?,
        ),
        (
            "/metrics",
            scratch.topo.scrubber.spawn({
                let (stop, n) = (stop.clone(), a.slow);
                let to: SocketAddr = super::METRICS.parse().expect("constant");
                move || slow_flood(to, http_start, n, &stop)
            })?,
        ),
    ];
    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = scratch.topo.customer.spawn({
        let (cfg, stop) = (scratch.client(TransportChoice::Dtls), probe_stop.clone());
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(probe(cfg, stop, t0))
        }
    })?;
    let mut peak = (0u64, 0usize);
    let mut next_show = t0 + Duration::from_secs(5);
    while t0.elapsed() < Duration::from_secs(a.seconds) && !interrupted() {
        std::thread::sleep(Duration::from_millis(250));
        let (rss, fds) = rss_and_fds(pid);
        peak = (peak.0.max(rss), peak.1.max(fds));
        if Instant::now() >= next_show {
            next_show += Duration::from_secs(5);
            show(
                &format!("  {:>5.1} s  during the floods", t0.elapsed().as_secs_f64()),
                pid,
            );
        }
    }
    probe_stop.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    hellos
        .join()
        .map_err(|_| anyhow::anyhow!("the hello flood panicked"))??;
    let mut slow_result = Vec::new();
    for (what, h) in slow {
        let (opened, held) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a slow flood panicked"))?;
        slow_result.push(format!(
            "{what}: {opened} opened, {held} still open after {} s",
            a.seconds
        ));
    }
    let (times, failed) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("the probing client panicked"))?;
    println!(
        "peak during the floods                       RSS {:>8.1} MiB, {:>6} descriptors",
        peak.0 as f64 / 1024.0,
        peak.1
    );
    std::thread::sleep(Duration::from_secs(5));
    show("5 s after the floods (sessions still held)", pid);
    let _ = release_tx.send(());
    holder
        .join()
        .map_err(|_| anyhow::anyhow!("the session holder panicked"))?;
    std::thread::sleep(Duration::from_secs(10));
    show("10 s after the sessions closed", pid);
    // The server gives freed heap back every 15 s (server/heap.rs): by now it has.
    std::thread::sleep(Duration::from_secs(20));
    let after = show("30 s after the sessions closed", pid);

    println!("\n== bounds summary");
    println!(
        "spoofed ClientHellos sent          {} in {} s",
        hellos_sent.load(Ordering::Relaxed),
        a.seconds
    );
    for s in &slow_result {
        println!("slow connections                   {s}");
    }
    println!(
        "a client's time to mitigate       {} of {} through: {} (fresh session each, DTLS and TLS in turn)",
        times.len(),
        times.len() as u32 + failed,
        summary(&times)
    );
    println!(
        "server memory and descriptors      peak {:.1} MiB / {} during, {:.1} MiB / {} after",
        peak.0 as f64 / 1024.0,
        peak.1,
        after.0 as f64 / 1024.0,
        after.1
    );
    drop(server);
    Ok(())
}
