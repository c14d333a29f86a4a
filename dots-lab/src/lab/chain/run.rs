//! Runs a chain scenario: four namespaces (internet, upstream scrubber, provider's scrubber,
//! customer), three `dots-agent server`s (the upstream scrubber and the provider's with XDP,
//! the customer's gateway without), the customer's guard asking its gateway, the
//! generators and the receiver; each hop sampled every second.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::net::{self, Configs};
use super::ChainSpec;
use crate::lab::actors::{start_generators, start_guard, start_receiver};
use crate::lab::harness::{self, Filter, Guard, GuardEvent, Roles};
use crate::lab::run::{fmt_rate, spawn_in, tail, FlowResult, LabOptions, Pins, StopOnDrop};
use crate::lab::topology::{interrupted, Netns, Proc};

/// Rates over one second, at each hop.
#[derive(Clone, Debug, Serialize)]
pub struct HopSample {
    pub t: f64,
    pub offered_attack: f64,
    pub offered_legit: f64,
    pub dropped_upstream: f64,
    pub dropped_provider: f64,
    pub delivered_attack: f64,
    pub delivered_legit: f64,
}

/// The customer's status as its guard last read it, and both filters' counters then.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReading {
    pub at: f64,
    pub status: u64,
    pub pkts_dropped: u64,
    pub provider: u64,
    pub upstream: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainSummary {
    pub scenario: String,
    pub flows: Vec<FlowResult>,
    pub attack_offered: u64,
    pub attack_delivered: u64,
    /// Packets each filter dropped (its ingress interface's counter).
    pub dropped_upstream: u64,
    pub dropped_provider: u64,
    pub legit_offered: u64,
    pub legit_delivered: u64,
    pub requested_at: Option<f64>,
    pub response_code: Option<String>,
    /// When the provider's scrubber carried the request upstream, and why (its log).
    pub escalated_at: Option<f64>,
    pub escalation: Option<String>,
    /// Each status the customer saw, from when.
    pub statuses: Vec<(f64, u64)>,
    pub last_status: Option<StatusReading>,
    pub withdrawn_at: Option<f64>,
    pub withdraw_code: Option<String>,
    pub receiver_drops: u64,
    pub samples: Vec<HopSample>,
}

/// Whether a UDP socket is bound to `addr` (an IPv4 host:port) in the calling thread's
/// network namespace (its /proc/thread-self/net/udp).
fn udp_listening(addr: &str) -> bool {
    let Some((ip, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let (Ok(ip), Ok(port)) = (ip.parse::<std::net::Ipv4Addr>(), port.parse::<u16>()) else {
        return false;
    };
    // The kernel prints the address as the native-endian u32 in hex.
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    std::fs::read_to_string("/proc/thread-self/net/udp").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&want))
    })
}

/// The reason the provider's log gives for escalating, once it has (its `escalating
/// mitigation ...` line).
fn escalation_in(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("escalating mitigation"))?;
    Some(line[line.find("escalating mitigation")?..].to_string())
}

pub fn run(o: &LabOptions) -> Result<ChainSummary> {
    let s = &o.scenario;
    let chain: &ChainSpec = s
        .chain
        .as_ref()
        .context("not a chain scenario (no [chain])")?;
    let (pid, state) = harness::prepare("dots-lab-chain")?;
    let tag = format!("dchain{pid}");
    let up_pins = Pins(PathBuf::from(format!("/sys/fs/bpf/dots-lab-{pid}-up")));
    let prov_pins = Pins(PathBuf::from(format!("/sys/fs/bpf/dots-lab-{pid}-prov")));
    let say = |m: String| {
        if o.progress {
            println!("{m}");
        }
    };
    say(format!(
        "lab: scenario {:?}: {}\nlab: namespaces {tag}-inet, -up, -prov, -cust; state in {}",
        s.name,
        s.description,
        state.0.display()
    ));
    let inet = Netns::create(format!("{tag}-inet"))?;
    let up = Netns::create(format!("{tag}-up"))?;
    let prov = Netns::create(format!("{tag}-prov"))?;
    let cust = Netns::create(format!("{tag}-cust"))?;
    net::wire(&inet.name, &up.name, &prov.name, Some(&cust.name))?;

    // Certificates, as the operators would make them (one lab CA for all three here).
    harness::pki_init(
        &o.agent,
        &state.0,
        &[
            "--server-name",
            "dots.lab",
            "--client",
            "customer",
            "--client",
            "gateway",
            "--client",
            "provider",
        ],
    )?;
    let configs = Configs {
        pki: "pki/",
        server_name: "dots.lab",
        customer: "customer",
        terminating_seconds: s.filters.terminating_seconds,
    };
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let p = state.0.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let up_cfg = write(
        "upstream.toml",
        configs.upstream(&up_pins.0, &super::policy_toml(&chain.upstream)?),
    )?;
    let prov_cfg = write(
        "provider.toml",
        configs.provider(
            &prov_pins.0,
            &chain.escalate(),
            &super::policy_toml(&s.filters)?,
        ),
    )?;
    let gw_cfg = write("gateway.toml", configs.gateway())?;
    let client_cfg = write(
        "client.toml",
        format!(
            "server = \"{}\"\nserver_name = \"dots.lab\"\ntransport = \"dtls\"\n\
             [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/customer.pem\"\nkey = \"pki/customer.key\"\n",
            net::GATEWAY_SERVER
        ),
    )?;

    // The three agents, each in its own network.
    let server =
        |ns: &Netns, cfg: &Path, log: &str, name: &'static str| -> Result<(Proc, PathBuf)> {
            let log = state.0.join(log);
            let p = spawn_in(
                ns,
                &o.agent,
                &["server", "--config", &cfg.to_string_lossy()],
                &log,
                name,
            )?;
            Ok((p, log))
        };
    let (mut up_server, up_log) = server(&up, &up_cfg, "upstream.log", "upstream scrubber")?;
    let up_filter = Filter::attached(&up, net::UP_IN, &up_pins.0, &mut up_server, &up_log)?;
    let (mut prov_server, prov_log) =
        server(&prov, &prov_cfg, "provider.log", "provider's scrubber")?;
    let prov_filter = Filter::attached(
        &prov,
        net::PROV_IN,
        &prov_pins.0,
        &mut prov_server,
        &prov_log,
    )?;
    let (mut gateway, gw_log) = server(&cust, &gw_cfg, "gateway.log", "customer's gateway")?;
    // The guard gives up on a refused first datagram: wait for the gateway's socket.
    let t = std::time::Instant::now();
    while !cust.run_in(|| udp_listening(net::GATEWAY_SERVER))? {
        if let Ok(Some(st)) = gateway.child.try_wait() {
            bail!("the customer's gateway exited ({st}):\n{}", tail(&gw_log));
        }
        if t.elapsed() > Duration::from_secs(20) || interrupted() {
            bail!(
                "the customer's gateway did not listen within 20 s:\n{}",
                tail(&gw_log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let capacity = chain
        .capacity_pps
        .map(|c| format!("{c} packets/s"))
        .into_iter()
        .chain(chain.capacity_bps.map(|c| format!("{c} bit/s")))
        .collect::<Vec<_>>()
        .join(" or ");
    say(format!(
        "lab: upstream scrubber: dots-agent server on {}, XDP on {}\n\
         lab: provider's scrubber: dots-agent server on {}, XDP on {}, escalates upstream above {capacity}\n\
         lab: customer's gateway: dots-agent server on {} (no datapath), relays to the provider",
        net::UPSTREAM_SERVER,
        net::UP_IN,
        net::PROVIDER_SERVER,
        net::PROV_IN,
        net::GATEWAY_SERVER
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let (counts, receiver) = start_receiver(s, &cust, net::CUST_IF, &stop)?;
    let guard_log = state.0.join("guard.log");
    let (mut guard, events, connected) =
        start_guard(s, &cust, &o.agent, &client_cfg, net::CUST_IF, &guard_log)
            .map_err(|e| anyhow::anyhow!("{e:#}\n(gateway log:)\n{}", tail(&gw_log)))?;
    say(format!(
        "lab: customer: DOTS client connected to its gateway over {}, guarding {} (threshold {} pps)",
        connected["transport"].as_str().unwrap_or("?"),
        net::CUST_IF,
        s.guard.threshold_pps
    ));
    let gens = start_generators(
        s,
        &inet,
        net::INET_IF,
        (net::INET_MAC, net::UP_IN_MAC),
        o.sender,
        &stop,
        o.progress,
    )?;
    let sent = gens.sent();
    let (t0, t0_ms) = (gens.t0, gens.t0_unix_ms());

    let roles = Roles::of(s);
    let drops = || (up_filter.dropped(), prov_filter.dropped());
    let mut prev = (0.0f64, sent.now(), counts.snapshot(), drops());
    let mut sm = ChainSummary {
        scenario: s.name.clone(),
        flows: Vec::new(),
        attack_offered: 0,
        attack_delivered: 0,
        dropped_upstream: 0,
        dropped_provider: 0,
        legit_offered: 0,
        legit_delivered: 0,
        requested_at: None,
        response_code: None,
        escalated_at: None,
        escalation: None,
        statuses: Vec::new(),
        last_status: None,
        withdrawn_at: None,
        withdraw_code: None,
        receiver_drops: 0,
        samples: Vec::new(),
    };
    let mut guard_done = false;
    let mut next_second = 1.0;
    let mut status_said = f64::MIN;
    loop {
        if interrupted() {
            bail!("interrupted: cleaning up");
        }
        let t = t0.elapsed().as_secs_f64();
        while let Ok(ev) = events.try_recv() {
            let GuardEvent { at, what, .. } = GuardEvent::parse(ev, t0_ms);
            match what {
                Guard::Threshold { rx_pps } => say(format!(
                    "{at:6.1}s  customer: received {} pps > threshold {}: asking its gateway for mitigation",
                    fmt_rate(rx_pps),
                    fmt_rate(s.guard.threshold_pps as f64)
                )),
                Guard::Request => sm.requested_at = Some(at),
                Guard::Response { code } => {
                    say(format!("{at:6.1}s  customer: its gateway answered {code}"));
                    sm.response_code = Some(code);
                }
                Guard::Status(ev) => {
                    let status = ev["status"].as_u64().unwrap_or(0);
                    let (upstream, provider) = drops();
                    let reading = StatusReading {
                        at,
                        status,
                        pkts_dropped: ev["pkts_dropped"].as_u64().unwrap_or(0),
                        provider,
                        upstream,
                    };
                    let changed = sm.statuses.last().is_none_or(|(_, s)| *s != status);
                    if changed {
                        sm.statuses.push((at, status));
                    }
                    if changed || at - status_said >= 3.0 {
                        say(format!(
                            "{at:6.1}s  customer: DOTS status {status} ({}), pkts-dropped {} (filters: provider {provider} + upstream {upstream})",
                            super::status_name(status),
                            reading.pkts_dropped
                        ));
                        status_said = at;
                    }
                    sm.last_status = Some(reading);
                }
                Guard::Withdraw { code } => {
                    say(format!("{at:6.1}s  customer: attack gone for {} s: withdrew the mitigation ({code})", s.guard.quiet_seconds));
                    sm.withdrawn_at = Some(at);
                    sm.withdraw_code = Some(code);
                }
                Guard::Other => {}
            }
        }
        if !guard_done {
            guard_done = matches!(guard.child.try_wait(), Ok(Some(_)));
        }
        if t >= next_second {
            if sm.escalation.is_none() {
                if let Some(why) = escalation_in(&prov_log) {
                    say(format!("{t:6.1}s  provider's scrubber: {why}"));
                    sm.escalated_at = Some(t);
                    sm.escalation = Some(why);
                }
            }
            let (pt, psent, precv, pdrop) = &prev;
            let (now_sent, now_recv, now_drop) = (sent.now(), counts.snapshot(), drops());
            let dt = (t - pt).max(1e-3);
            let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
            let x = HopSample {
                t,
                offered_attack: rate(roles.attack(&now_sent), roles.attack(psent)),
                offered_legit: rate(roles.legit(&now_sent), roles.legit(psent)),
                dropped_upstream: rate(now_drop.0, pdrop.0),
                dropped_provider: rate(now_drop.1, pdrop.1),
                delivered_attack: rate(roles.attack(&now_recv), roles.attack(precv)),
                delivered_legit: rate(roles.legit(&now_recv), roles.legit(precv)),
            };
            say(format!(
                "{t:6.1}s  attack offered {:>7} pps | dropped upstream {:>7} provider {:>7} | to the customer: attack {:>7} legit {:>7} pps",
                fmt_rate(x.offered_attack),
                fmt_rate(x.dropped_upstream),
                fmt_rate(x.dropped_provider),
                fmt_rate(x.delivered_attack),
                fmt_rate(x.delivered_legit)
            ));
            sm.samples.push(x);
            prev = (t, now_sent, now_recv, now_drop);
            next_second += 1.0;
        }
        let guard_finished = sm.withdrawn_at.is_some() || guard_done;
        match harness::end(s, t, guard_finished, sm.requested_at.is_some()) {
            harness::End::Not => {}
            harness::End::Done => break,
            harness::End::Overrun => {
                say("lab: the customer has not withdrawn 20 s after the end; stopping".into());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    harness::end_traffic(&stop, gens, receiver, &mut guard)?;
    let (offered, delivered) = (sent.now(), counts.snapshot());
    sm.flows = harness::flow_results(s, &offered, &delivered);
    (sm.dropped_upstream, sm.dropped_provider) = drops();
    sm.attack_offered = roles.attack(&offered);
    sm.attack_delivered = roles.attack(&delivered);
    sm.legit_offered = roles.legit(&offered);
    sm.legit_delivered = roles.legit(&delivered);
    sm.receiver_drops = counts.socket_drops.load(Ordering::Relaxed);
    Ok(sm)
}
