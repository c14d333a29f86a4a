//! `dots-lab loss`: the signal channel when packets are lost both ways. An nftables table in
//! the customer's namespace drops N % of what it receives from and sends to the server
//! (`numgen random mod 100 < N drop` on input and output; this machine has no netem). The
//! server runs with XDP on the scrubber's ingress, as in production. For each rate:
//!
//! - time to mitigate: a client holds a session made before the loss (as a DOTS client does
//!   before an attack) and PUTs a mitigation until its 2.01 arrives (the session's CoAP
//!   retransmissions, then the request again, a new session if it ended), per transport;
//!   then a client without a session: handshake and PUT, both under the loss;
//! - heartbeats: the client set the most demanding configuration the server allows
//!   (heartbeat every 15 s, 3 missed allowed: dead after 45 s of silence) and keeps one
//!   session observing its mitigations, sending its own heartbeats and answering the
//!   server's; the server must never declare it lost (`dots_signal_sessions_lost_total`);
//!   the session, its configuration and Observe are set up before the loss begins;
//! - Observe: every 10 s the client changes a mitigation on that session and counts the
//!   notifications that reach it; once the loss ends, one more change must be notified.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, Session, TransportChoice};
use dots_agent::signal::session_config;

use super::{block_on, human, metric, summary, until_answering, Scratch};
use crate::lab::topology::{interrupted, Netns, SERVER_V4};

#[derive(Args, Debug)]
pub struct LossArgs {
    /// Loss rates in percent, each applied in both directions (0 is a baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,30,50,70")]
    pub rates: Vec<u32>,
    /// Mitigation requests timed per rate and transport.
    #[arg(long, default_value_t = 5)]
    pub requests: u32,
    /// Transports whose time to mitigate is measured.
    #[arg(long, value_delimiter = ',', default_value = "dtls,tls")]
    pub transports: Vec<String>,
    /// How long the observing session runs under loss, per rate (heartbeats every 15 s).
    #[arg(long, default_value_t = 90)]
    pub observe_seconds: u64,
    /// The dots-agent binary (default: the one beside dots-lab).
    #[arg(long)]
    pub agent: Option<std::path::PathBuf>,
}

/// One request may take this long (all its retries) before it counts as not through.
const REQUEST_BUDGET: Duration = Duration::from_secs(60);
const HEARTBEAT_INTERVAL: u64 = 15;
const MISSING_ALLOWED: u64 = 3;
const CHANGE_EVERY: Duration = Duration::from_secs(10);

/// Sets the loss rate of the namespace the calling thread is in (nft runs as its child,
/// so in the same namespace).
fn set_loss_here(percent: u32) -> Result<()> {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "inet", "dots_loss"])
        .stderr(std::process::Stdio::null())
        .status();
    if percent == 0 {
        return Ok(());
    }
    let rules = format!(
        "table inet dots_loss {{\n\
         chain in {{ type filter hook input priority 0; policy accept; ip saddr {SERVER_V4} numgen random mod 100 < {percent} drop; }}\n\
         chain out {{ type filter hook output priority 0; policy accept; ip daddr {SERVER_V4} numgen random mod 100 < {percent} drop; }}\n}}\n"
    );
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running nft (scripts/setup.sh installs nftables)")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("nft's stdin")?,
        rules.as_bytes(),
    )?;
    drop(child.stdin.take());
    if !child.wait()?.success() {
        bail!("nft refused the loss rules");
    }
    Ok(())
}

fn set_loss(ns: &Netns, percent: u32) -> Result<()> {
    ns.run_in(move || set_loss_here(percent))?
}

fn target(mid: u32) -> ipnet::IpNet {
    format!("198.51.100.{}/32", 100 + mid % 150)
        .parse()
        .expect("a prefix")
}

/// Connects within what is left of `deadline`.
async fn connect(cfg: &ClientConfig, deadline: Instant) -> Result<Session> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no session within the budget");
        }
        match tokio::time::timeout(left, Session::connect(cfg)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => bail!("no session within the budget"),
        }
    }
}

/// A request retried until it gets an answer (the same session while it lives, else a
/// new one) or the deadline; the answer and how many times it was sent by us.
async fn insist(
    s: &mut Option<Session>,
    cfg: &ClientConfig,
    deadline: Instant,
    method: RequestType,
    path: impl Fn(&Session) -> Vec<String>,
    body: Option<Vec<u8>>,
) -> Result<(coap_lite::Packet, u32)> {
    let mut tries = 0;
    loop {
        if s.is_none() {
            *s = Some(connect(cfg, deadline).await?);
        }
        let session = s.as_mut().expect("connected");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer within the budget after {tries} tries");
        }
        tries += 1;
        let p = path(session);
        match tokio::time::timeout(left, session.request(method, &p, body.clone(), false)).await {
            Ok(Ok(r)) => return Ok((r, tries)),
            Ok(Err(e)) if format!("{e:#}").contains("ended") => *s = None,
            Ok(Err(_)) => {}
            Err(_) => bail!("no answer within the budget after {tries} tries"),
        }
    }
}

struct Mitigated {
    /// PUTs on a session established before the loss began.
    total: Vec<Duration>,
    failed: u32,
    tries: u32,
    /// A fresh session (handshake under loss) and a PUT: the time, or why not.
    fresh: Result<Duration, String>,
}

/// 2.01, or 2.04 when an earlier copy of the request got through and its answer was lost.
fn granted(p: &coap_lite::Packet) -> bool {
    matches!(code_text(p).as_str(), "2.01" | "2.04")
}

fn scope_body(mid: u32) -> Vec<u8> {
    dots_agent::signal::message::encode_mitigation_request(
        &dots_agent::signal::message::Scope::new(
            vec![target(mid)],
            dots_agent::signal::message::Lifetime::Seconds(600),
        ),
    )
}

/// A DOTS client keeps its session before an attack (RFC 9132 §4.7): the session is made
/// without loss, then `rate` % loss begins and `requests` PUTs are timed on it (resent by
/// the session's CoAP retransmission, then again by us until the budget). Then one fresh
/// connect + PUT under the loss, the case of a client without a session.
async fn time_to_mitigate(
    cfg: ClientConfig,
    requests: u32,
    first_mid: u32,
    rate: u32,
) -> Mitigated {
    let mut m = Mitigated {
        total: Vec::new(),
        failed: 0,
        tries: 0,
        fresh: Err("not tried".into()),
    };
    let mut s = connect(&cfg, Instant::now() + REQUEST_BUDGET).await.ok();
    if let Err(e) = set_loss_here(rate) {
        m.fresh = Err(format!("{e:#}"));
        return m;
    }
    for k in 0..requests {
        let mid = first_mid + k;
        let t0 = Instant::now();
        let r = insist(
            &mut s,
            &cfg,
            t0 + REQUEST_BUDGET,
            RequestType::Put,
            |s| super::mitigate_path(s.cuid(), mid),
            Some(scope_body(mid)),
        )
        .await;
        match r {
            Ok((p, tries)) if granted(&p) => {
                m.total.push(t0.elapsed());
                m.tries += tries;
            }
            _ => m.failed += 1,
        }
        if interrupted() {
            return m;
        }
    }
    let mid = first_mid + requests;
    let t0 = Instant::now();
    let mut fresh = None;
    m.fresh = match insist(
        &mut fresh,
        &cfg,
        t0 + REQUEST_BUDGET,
        RequestType::Put,
        |s| super::mitigate_path(s.cuid(), mid),
        Some(scope_body(mid)),
    )
    .await
    {
        Ok((p, _)) if granted(&p) => Ok(t0.elapsed()),
        Ok((p, _)) => Err(code_text(&p)),
        Err(e) => Err(format!("{e:#}")),
    };
    m
}

struct Observed {
    changes: u32,
    notified: u32,
    client_heartbeats: (u32, u32),
    server_heartbeats: u32,
    /// How long after the loss ended a change was notified; whether Observe had to be
    /// registered again.
    recovered: Option<(Duration, bool)>,
    failure: Option<String>,
}

fn recovery(r: Option<(Duration, bool)>) -> String {
    match r {
        None => "NO notification within 10 s, nor after registering again".into(),
        Some((d, false)) => format!("notified after {}", human(d)),
        Some((d, true)) => format!("notified after {} (Observe registered again)", human(d)),
    }
}

/// A mitigation of `mid` created (or, if `present`, withdrawn) on `session`.
async fn change(session: &mut Session, mid: u32, present: bool) -> Result<()> {
    let path = super::mitigate_path(session.cuid(), mid);
    let r = if present {
        session
            .request(RequestType::Delete, &path, None, false)
            .await
    } else {
        session
            .request(RequestType::Put, &path, Some(scope_body(mid)), false)
            .await
    };
    r.context("the change after the loss ended")?;
    Ok(())
}

/// One session under loss for `seconds`: demanding heartbeat settings, Observe on all
/// mitigations, a change every 10 s, its own heartbeats; then the loss is lifted (by
/// `lift`) and one more change must be notified.
async fn observe(
    cfg: ClientConfig,
    seconds: u64,
    first_mid: u32,
    rate: u32,
    lift: impl FnOnce() -> Result<()>,
) -> Observed {
    let mut o = Observed {
        changes: 0,
        notified: 0,
        client_heartbeats: (0, 0),
        server_heartbeats: 0,
        recovered: None,
        failure: None,
    };
    let r: Result<()> = async {
        let deadline = Instant::now() + REQUEST_BUDGET;
        let mut s = None;
        let values = [(33, HEARTBEAT_INTERVAL), (37, MISSING_ALLOWED)];
        for idle in [false, true] {
            let body = session_config::encode_put(idle, &values);
            let (r, _) = insist(
                &mut s,
                &cfg,
                deadline,
                RequestType::Put,
                |_| vec!["config".into(), "sid=1".into()],
                Some(body),
            )
            .await?;
            if !code_text(&r).starts_with("2.") {
                bail!("session configuration refused: {}", code_text(&r));
            }
        }
        let mut session = s.take().context("a session")?;
        let all = vec!["mitigate".to_string(), format!("cuid={}", session.cuid())];
        let token = loop {
            if Instant::now() > deadline {
                bail!("Observe was not registered within {REQUEST_BUDGET:?}");
            }
            if let Ok(Ok((_, token))) =
                tokio::time::timeout(Duration::from_secs(10), session.observe(&all)).await
            {
                break token;
            }
        };
        // The session, its configuration and Observe were set up before the loss.
        set_loss_here(rate)?;
        let start = Instant::now();
        let mut next_change = start;
        let mut next_heartbeat = start + Duration::from_secs(HEARTBEAT_INTERVAL);
        let mut mid = first_mid;
        let mut present = false;
        while start.elapsed() < Duration::from_secs(seconds) && !interrupted() {
            let now = Instant::now();
            if now >= next_change {
                next_change += CHANGE_EVERY;
                o.changes += 1;
                let body = dots_agent::signal::message::encode_mitigation_request(
                    &dots_agent::signal::message::Scope::new(
                        vec![target(mid)],
                        dots_agent::signal::message::Lifetime::Seconds(600),
                    ),
                );
                let path = super::mitigate_path(session.cuid(), mid);
                let req = if present {
                    session.request(RequestType::Delete, &path, None, false)
                } else {
                    session.request(RequestType::Put, &path, Some(body), false)
                };
                // An unanswered change is still a change the server may notify.
                if let Ok(Ok(r)) = tokio::time::timeout(CHANGE_EVERY, req).await {
                    if code_text(&r).starts_with("2.") {
                        if present {
                            mid += 1;
                        }
                        present = !present;
                    }
                }
            } else if now >= next_heartbeat {
                next_heartbeat += Duration::from_secs(HEARTBEAT_INTERVAL);
                o.client_heartbeats.0 += 1;
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(10), session.heartbeat()).await
                {
                    if code_text(&r) == "2.04" {
                        o.client_heartbeats.1 += 1;
                    }
                }
            } else {
                let wait = next_change.min(next_heartbeat) - now;
                while let Ok(Some(_)) = session.notification(&token, Duration::ZERO).await {
                    o.notified += 1;
                }
                if let Ok(Some(_)) = session.notification(&token, wait).await {
                    o.notified += 1;
                }
            }
        }
        while let Ok(Some(_)) = session.notification(&token, Duration::ZERO).await {
            o.notified += 1;
        }
        o.server_heartbeats = session.server_heartbeats();
        lift()?;
        // Without loss: one more change must come back as a notification, on the old
        // registration, or else on a new one (RFC 7641 §4.5: a server forgets an observer
        // whose confirmable notification went unacknowledged; a client then registers
        // again).
        let t0 = Instant::now();
        change(&mut session, mid, present).await?;
        if let Ok(Some(_)) = session.notification(&token, Duration::from_secs(10)).await {
            o.recovered = Some((t0.elapsed(), false));
            return Ok(());
        }
        let (_, token) = tokio::time::timeout(Duration::from_secs(10), session.observe(&all))
            .await
            .context("registering Observe again: no answer")??;
        // A mid never used: a creation.
        change(&mut session, mid + 1, false).await?;
        if let Ok(Some(_)) = session.notification(&token, Duration::from_secs(10)).await {
            o.recovered = Some((t0.elapsed(), true));
        }
        Ok(())
    }
    .await;
    o.failure = r.err().map(|e| format!("{e:#}"));
    o
}

pub fn run(a: &LossArgs) -> Result<()> {
    for t in &a.transports {
        if t != "dtls" && t != "tls" {
            bail!("--transports: {t:?} is not dtls or tls");
        }
    }
    if a.rates.iter().any(|r| *r > 100) {
        bail!("--rates: give percentages from 0 to 100");
    }
    let scratch = Scratch::new(super::agent(a.agent.as_ref())?, "", "")?;
    let server = scratch.start_server(None)?;
    let up = block_on(&scratch.topo.customer, {
        let (cfg, started) = (scratch.client(TransportChoice::Tls), server.started);
        move || until_answering(cfg, started, Duration::from_secs(60))
    })?;
    if up.is_none() {
        bail!("the server did not start:\n{}", scratch.server_log_tail());
    }
    println!(
        "loss: the signal channel with N % of packets dropped both ways in the customer's namespace \
         (nftables numgen); server {SERVER_V4} with XDP; heartbeats every {HEARTBEAT_INTERVAL} s, \
         {MISSING_ALLOWED} missed allowed (lost after {} s of silence)",
        HEARTBEAT_INTERVAL * MISSING_ALLOWED
    );
    let mut mid = 1000;
    let mut rows = Vec::new();
    for &rate in &a.rates {
        if interrupted() {
            bail!("interrupted");
        }
        println!("\n{rate} % loss both ways:");
        let mut ttm = Vec::new();
        for t in &a.transports {
            let transport = if t == "tls" {
                TransportChoice::Tls
            } else {
                TransportChoice::Dtls
            };
            let m = block_on(&scratch.topo.customer, {
                let (cfg, n, first) = (scratch.client(transport), a.requests, mid);
                move || time_to_mitigate(cfg, n, first, rate)
            })?;
            set_loss(&scratch.topo.customer, 0)?;
            mid += a.requests + 1;
            println!(
                "  time to mitigate over {t} (PUT on a session made before the loss, until its 2.01/2.04): {} of {} through, {}; {:.1} sends per request by us",
                m.total.len(),
                a.requests,
                summary(&m.total),
                m.tries as f64 / m.total.len().max(1) as f64
            );
            println!(
                "  a fresh session under the loss over {t} (handshake + PUT): {}",
                match &m.fresh {
                    Ok(d) => human(*d),
                    Err(e) => format!("NOT through within {REQUEST_BUDGET:?}: {e}"),
                }
            );
            ttm.push((t.clone(), m));
        }
        let lost_before =
            metric(&scratch.topo.scrubber, "dots_signal_sessions_lost_total").unwrap_or(f64::NAN);
        let o = block_on(&scratch.topo.customer, {
            let (cfg, seconds, first) = (
                scratch.client(TransportChoice::Dtls),
                a.observe_seconds,
                mid,
            );
            move || observe(cfg, seconds, first, rate, || set_loss_here(0))
        })?;
        mid += 100;
        set_loss(&scratch.topo.customer, 0)?;
        let lost_after =
            metric(&scratch.topo.scrubber, "dots_signal_sessions_lost_total").unwrap_or(f64::NAN);
        let declared_dead = lost_after - lost_before;
        if let Some(f) = &o.failure {
            println!("  observing session: {f}");
        }
        println!(
            "  {} s observing over DTLS: the server declared the live client lost {declared_dead} times; \
             server heartbeats answered by it {}; its own heartbeats answered {} of {}",
            a.observe_seconds, o.server_heartbeats, o.client_heartbeats.1, o.client_heartbeats.0
        );
        println!(
            "  Observe: {} notifications for {} changes under loss; after the loss ended: {}",
            o.notified,
            o.changes,
            recovery(o.recovered)
        );
        rows.push((rate, ttm, declared_dead, o));
    }
    println!("\n== loss summary (time to mitigate: a PUT on a live session until its 2.01/2.04, p50 / p99 / max)");
    for (rate, ttm, dead, o) in &rows {
        let t: Vec<String> = ttm
            .iter()
            .map(|(t, m)| {
                let fresh = m
                    .fresh
                    .as_ref()
                    .map_or("not through".to_string(), |d| human(*d));
                format!(
                    "{t} {} ({}/{} through; fresh session {fresh})",
                    summary(&m.total),
                    m.total.len(),
                    m.total.len() as u32 + m.failed
                )
            })
            .collect();
        println!(
            "{rate:>3} %: {}; declared dead {dead}; Observe {}/{} notified, recovered: {}",
            t.join("; "),
            o.notified,
            o.changes,
            recovery(o.recovered)
        );
    }
    Ok(())
}
