//! Runs a scenario on the lab topology: the DOTS server with XDP on the scrubber, the
//! customer's guard (threshold-triggered DOTS client), the generators on the internet side,
//! the receiver on the customer side; live progress, then a summary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::actors::{start_generators, start_guard, start_receiver};
use super::harness::{self, Filter, Guard, GuardEvent, Roles};
use super::scenario::{Scenario, CUSTOMER_PREFIXES};
use super::topology::{self, interrupted, Netns, Proc, Topology};
use crate::trafficgen::{self, Backend};
use dots_agent::client::guard::unix_ms;
use dots_agent::datapath::XdpDatapath;

pub struct LabOptions {
    pub scenario: Scenario,
    /// The dots-agent binary to run the server and the client with.
    pub agent: PathBuf,
    /// Print progress lines.
    pub progress: bool,
    /// The generators' sender.
    pub sender: Backend,
}

/// One flow's totals.
#[derive(Clone, Debug, Serialize)]
pub struct FlowResult {
    pub name: String,
    pub role: &'static str,
    pub offered: u64,
    pub delivered: u64,
}

/// Rates over one second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub phase: &'static str,
    pub offered_legit: f64,
    pub offered_attack: f64,
    pub delivered_legit: f64,
    pub delivered_attack: f64,
    pub dropped: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub flows: Vec<FlowResult>,
    pub attack_offered: u64,
    pub attack_delivered: u64,
    /// Packets the XDP filter on the scrubber's ingress dropped (its interface counter).
    pub filter_dropped: u64,
    pub legit_offered: u64,
    pub legit_delivered: u64,
    pub legit_delivered_percent: f64,
    /// Attack delivered while the mitigation was in place (first drop .. end of attack).
    pub attack_delivered_while_mitigating_percent: Option<f64>,
    /// Seconds after the start at which the guard asked for mitigation.
    pub requested_at: Option<f64>,
    /// The server's answer to the request.
    pub response_code: Option<String>,
    pub request_to_response_ms: Option<f64>,
    pub request_to_first_drop_ms: Option<f64>,
    pub withdrawn_at: Option<f64>,
    pub withdraw_code: Option<String>,
    /// Frames the customer-side receiver's socket dropped (it fell behind).
    pub receiver_drops: u64,
    pub samples: Vec<Sample>,
}

/// Removes a directory tree on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unpins the lab's datapath on drop.
pub(crate) struct Pins(pub(crate) PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = XdpDatapath::purge(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets a flag on drop, so threads stop whichever way `run` returns.
pub(crate) struct StopOnDrop(pub(crate) Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub(crate) fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn write_configs(dir: &Path, s: &Scenario, pins: &Path) -> Result<()> {
    let mut client = toml::map::Map::new();
    client.insert("name".into(), "customer".into());
    client.insert(
        "prefixes".into(),
        toml::Value::Array(CUSTOMER_PREFIXES.iter().map(|p| (*p).into()).collect()),
    );
    client.insert("allow_indefinite".into(), true.into());
    if let Some(c) = &s.filters.countermeasures {
        client.insert("countermeasures".into(), toml::Value::try_from(c)?);
    }
    if !s.filters.acl.is_empty() {
        client.insert("acl".into(), toml::Value::try_from(&s.filters.acl)?);
    }
    let text = |v: &str| toml::Value::String(v.to_string());
    let table = |pairs: Vec<(&str, toml::Value)>| {
        toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    };
    let server = table(vec![
        (
            "signal",
            table(vec![
                (
                    "listen",
                    toml::Value::Array(vec![text(&format!("{}:4646", topology::SERVER_V4))]),
                ),
                (
                    "terminating_seconds",
                    toml::Value::Integer(s.filters.terminating_seconds as i64),
                ),
            ]),
        ),
        ("store", table(vec![("dir", text("store"))])),
        (
            "tls",
            table(vec![
                ("ca", text("pki/ca.pem")),
                ("cert", text("pki/server.pem")),
                ("key", text("pki/server.key")),
            ]),
        ),
        (
            "datapath",
            table(vec![
                (
                    "interfaces",
                    toml::Value::Array(vec![text(topology::SCR_IN)]),
                ),
                ("xdp_mode", text("auto")),
                ("pin_root", text(&pins.to_string_lossy())),
            ]),
        ),
        (
            "client",
            toml::Value::Array(vec![toml::Value::Table(client)]),
        ),
    ]);
    let server = toml::to_string(&server)?;
    std::fs::write(dir.join("server.toml"), server)?;
    let client_cfg = format!(
        "server = \"{}:4646\"\nserver_name = \"dots.lab\"\ntransport = \"dtls\"\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/customer.pem\"\nkey = \"pki/customer.key\"\n",
        topology::SERVER_V4
    );
    std::fs::write(dir.join("client.toml"), client_cfg)?;
    Ok(())
}

/// Starts the agent inside `ns`, its output (logged at info: the lab reads it) to `log`.
pub(crate) fn spawn_in(
    ns: &Netns,
    agent: &Path,
    args: &[&str],
    log: &Path,
    name: &'static str,
) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = ns
        .command(agent)?
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {} {}", agent.display(), args.join(" ")))?;
    Ok(Proc { name, child })
}

pub fn run(o: &LabOptions) -> Result<Summary> {
    let s = &o.scenario;
    let (pid, state) = harness::prepare("dots-lab")?;
    let tag = format!("dlab{pid}");
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/dots-lab-{pid}")));
    let say = |m: String| {
        if o.progress {
            println!("{m}");
        }
    };
    say(format!(
        "lab: scenario {:?}: {}\nlab: namespaces {tag}-inet, {tag}-scr, {tag}-cust; state in {}",
        s.name,
        s.description,
        state.0.display()
    ));
    let topo = Topology::build(&tag)?;
    let mut dests: Vec<_> = s.traffic.iter().map(|t| t.destination).collect();
    dests.sort();
    dests.dedup();
    for d in dests {
        topo.neighbour(d)?;
    }

    harness::pki_init(
        &o.agent,
        &state.0,
        &[
            "--server-name",
            "dots.lab",
            "--server-ip",
            topology::SERVER_V4,
            "--client",
            "customer",
        ],
    )?;
    write_configs(&state.0, s, &pins.0)?;

    // The scrubber: the DOTS server attaches XDP to its ingress.
    let server_log = state.0.join("server.log");
    let server_cfg = state.0.join("server.toml");
    let mut server = spawn_in(
        &topo.scrubber,
        &o.agent,
        &["server", "--config", &server_cfg.to_string_lossy()],
        &server_log,
        "server",
    )?;
    let filter = Filter::attached(
        &topo.scrubber,
        topology::SCR_IN,
        &pins.0,
        &mut server,
        &server_log,
    )?;
    say(format!(
        "lab: scrubber: dots-agent server on {}:4646 (DTLS), XDP on {} (log {})",
        topology::SERVER_V4,
        topology::SCR_IN,
        server_log.display()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());

    // The customer's receiver: counts arrivals per flow (by source prefix).
    let (counts, receiver) = start_receiver(s, &topo.customer, topology::CUST_IF, &stop)?;

    // The customer's DOTS client in threshold mode.
    let client_cfg = state.0.join("client.toml");
    let guard_log = state.0.join("guard.log");
    let (mut guard, events, connected) = start_guard(
        s,
        &topo.customer,
        &o.agent,
        &client_cfg,
        topology::CUST_IF,
        &guard_log,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n(server log:)\n{}", tail(&server_log)))?;
    say(format!(
        "lab: customer: DOTS client connected over {}, guarding {} (threshold {} pps)",
        connected["transport"].as_str().unwrap_or("?"),
        topology::CUST_IF,
        s.guard.threshold_pps
    ));

    // The generators, one thread per flow on the internet side.
    let gens = start_generators(
        s,
        &topo.inet,
        topology::INET_IF,
        (
            [0x02, 0x00, 0x5e, 0x00, 0x01, 0x01],
            trafficgen::parse_mac(topology::SCR_IN_MAC)?,
        ),
        o.sender,
        &stop,
        o.progress,
    )?;
    let sent = gens.sent();
    let (t0, t0_ms) = (gens.t0, gens.t0_unix_ms());

    // The run: sample the scrubber's drop counter every few ms (to time the first drop),
    // print and record rates every second.
    let roles = Roles::of(s);
    let mut prev = (0.0f64, sent.now(), counts.snapshot(), filter.dropped());
    let mut samples = Vec::new();
    let mut requested_ms: Option<u64> = None;
    let mut response: Option<(String, u64)> = None;
    let mut first_drop_ms: Option<u64> = None;
    let mut withdrawn: Option<(String, u64)> = None;
    let mut guard_done = false;
    let mut next_print = 1.0;
    let phase_at = |t: f64| {
        if t < s.phases.legit_seconds {
            "legit only"
        } else if t < s.phases.legit_seconds + s.phases.attack_seconds {
            "attack"
        } else {
            "attack over"
        }
    };
    // When the client last printed the server's telemetry (every 2 s at most).
    let mut telemetry_said = f64::MIN;
    loop {
        if interrupted() {
            bail!("interrupted: cleaning up");
        }
        let t = t0.elapsed().as_secs_f64();
        while let Ok(ev) = events.try_recv() {
            let GuardEvent { at, ms, what } = GuardEvent::parse(ev, t0_ms);
            match what {
                Guard::Threshold { rx_pps } => say(format!(
                    "{at:6.1}s  guard: received {} pps > threshold {}: requesting mitigation over DTLS",
                    fmt_rate(rx_pps),
                    fmt_rate(s.guard.threshold_pps as f64)
                )),
                Guard::Request => requested_ms = Some(ms),
                Guard::Response { code } => {
                    say(format!("{at:6.1}s  guard: server answered {code}"));
                    response = Some((code, ms));
                }
                Guard::Status(ev) if !ev["telemetry"].is_null() && at - telemetry_said >= 2.0 => {
                    let tm = &ev["telemetry"];
                    let pps = |k: &str| fmt_rate(tm[k].as_f64().unwrap_or(0.0));
                    say(format!(
                        "{at:6.1}s  guard: DOTS status {}: server telemetry: {} pps to the targets, {} pps dropped; top talker {} ({} pps)",
                        ev["status"].as_u64().unwrap_or(0),
                        pps("total_pps"),
                        pps("attack_pps"),
                        tm["top_talker"].as_str().unwrap_or("-"),
                        pps("top_talker_pps"),
                    ));
                    telemetry_said = at;
                }
                Guard::Withdraw { code } => {
                    say(format!("{at:6.1}s  guard: attack gone for {} s: withdrew the mitigation ({code})", s.guard.quiet_seconds));
                    withdrawn = Some((code, ms));
                }
                _ => {}
            }
        }
        if first_drop_ms.is_none() && filter.dropped() > 0 {
            first_drop_ms = Some(unix_ms());
        }
        if !guard_done {
            if let Ok(Some(_)) = guard.child.try_wait() {
                guard_done = true;
            }
        }
        if t >= next_print {
            let (pt, psent, precv, pdrop) = &prev;
            let now_sent = sent.now();
            let now_recv = counts.snapshot();
            let now_drop = filter.dropped();
            let dt = (t - pt).max(1e-3);
            let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
            let sample = Sample {
                t,
                phase: phase_at(t - 0.5),
                offered_legit: rate(roles.legit(&now_sent), roles.legit(psent)),
                offered_attack: rate(roles.attack(&now_sent), roles.attack(psent)),
                delivered_legit: rate(roles.legit(&now_recv), roles.legit(precv)),
                delivered_attack: rate(roles.attack(&now_recv), roles.attack(precv)),
                dropped: rate(now_drop, *pdrop),
            };
            say(format!(
                "{:6.1}s  {:<12} offered legit {:>7} attack {:>7} pps | delivered legit {:>7} attack {:>7} pps | XDP dropped {:>7} pps",
                t,
                sample.phase,
                fmt_rate(sample.offered_legit),
                fmt_rate(sample.offered_attack),
                fmt_rate(sample.delivered_legit),
                fmt_rate(sample.delivered_attack),
                fmt_rate(sample.dropped)
            ));
            samples.push(sample);
            prev = (t, now_sent, now_recv, now_drop);
            next_print += 1.0;
        }
        match harness::end(
            s,
            t,
            withdrawn.is_some() || guard_done,
            requested_ms.is_some(),
        ) {
            harness::End::Not => {}
            harness::End::Done => break,
            harness::End::Overrun => {
                say("lab: the guard has not withdrawn 20 s after the end; stopping".into());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(
            if requested_ms.is_some() && first_drop_ms.is_none() {
                1
            } else {
                5
            },
        ));
    }

    harness::end_traffic(&stop, gens, receiver, &mut guard)?;
    server.stop(Duration::from_secs(5));

    let offered = sent.now();
    let delivered = counts.snapshot();
    let flows = harness::flow_results(s, &offered, &delivered);
    let legit_offered = roles.legit(&offered);
    let legit_delivered = roles.legit(&delivered);
    let ms_since = |a: u64, b: u64| (b as f64 - a as f64).max(0.0);
    // Attack delivered between the first drop (+1 s for the sample in progress) and the end
    // of the attack phase, relative to what was offered then.
    let attack_end = s.phases.legit_seconds + s.phases.attack_seconds;
    let while_mitigating = first_drop_ms.and_then(|fd| {
        let from = (fd.saturating_sub(t0_ms)) as f64 / 1000.0 + 1.0;
        let win: Vec<&Sample> = samples
            .iter()
            .filter(|x| x.t - 1.0 >= from && x.t <= attack_end)
            .collect();
        let off: f64 = win.iter().map(|x| x.offered_attack).sum();
        (off > 0.0).then(|| 100.0 * win.iter().map(|x| x.delivered_attack).sum::<f64>() / off)
    });
    let summary = Summary {
        scenario: s.name.clone(),
        flows,
        attack_offered: roles.attack(&offered),
        attack_delivered: roles.attack(&delivered),
        filter_dropped: filter.dropped(),
        legit_offered,
        legit_delivered,
        legit_delivered_percent: if legit_offered > 0 {
            harness::percent(legit_delivered, legit_offered)
        } else {
            100.0
        },
        attack_delivered_while_mitigating_percent: while_mitigating,
        requested_at: requested_ms.map(|r| ms_since(t0_ms, r) / 1000.0),
        response_code: response.as_ref().map(|r| r.0.clone()),
        request_to_response_ms: requested_ms
            .zip(response.as_ref())
            .map(|(r, p)| ms_since(r, p.1)),
        request_to_first_drop_ms: requested_ms.zip(first_drop_ms).map(|(r, d)| ms_since(r, d)),
        withdrawn_at: withdrawn.as_ref().map(|w| ms_since(t0_ms, w.1) / 1000.0),
        withdraw_code: withdrawn.map(|w| w.0),
        receiver_drops: counts.socket_drops.load(Ordering::Relaxed),
        samples,
    };
    Ok(summary)
}

/// The summary table.
pub fn print_summary(s: &Summary) {
    println!("\n== summary: {}", s.scenario);
    harness::print_flows(&s.flows);
    let pct = harness::percent;
    println!();
    println!("attack packets offered            {:>12}", s.attack_offered);
    println!(
        "attack packets dropped (XDP)      {:>12}  ({:.1}% of offered; the rest arrived before the mitigation)",
        s.filter_dropped,
        pct(s.filter_dropped, s.attack_offered)
    );
    if let Some(p) = s.attack_delivered_while_mitigating_percent {
        println!("attack delivered while mitigating {:>11.2}%", p);
    }
    println!(
        "legitimate traffic delivered      {:>11.2}%  ({} of {})",
        s.legit_delivered_percent, s.legit_delivered, s.legit_offered
    );
    match (s.requested_at, &s.response_code) {
        (Some(at), Some(code)) => println!(
            "mitigation requested at           {:>10.1} s  (answer {code} after {:.0} ms)",
            at,
            s.request_to_response_ms.unwrap_or(0.0)
        ),
        _ => println!("mitigation requested              never (threshold not crossed)"),
    }
    match s.request_to_first_drop_ms {
        Some(ms) => println!("time from request to first drop   {ms:>9.0} ms"),
        None => println!("time from request to first drop   -"),
    }
    match (&s.withdrawn_at, &s.withdraw_code) {
        (Some(at), Some(code)) => {
            println!("mitigation withdrawn at           {at:>10.1} s  ({code})")
        }
        _ => println!("mitigation withdrawn              no"),
    }
    if s.receiver_drops > 0 {
        println!(
            "note: the receiver's socket dropped {} frames (it fell behind; delivered counts are low by that much)",
            s.receiver_drops
        );
    }
}
