//! `dots-lab traffic ...`: send, generate and count raw frames on an interface (labs and tests).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::packet::{PacketSpec, L4};
use crate::trafficgen::socket::send_paced;
use dots_agent::af_packet::PacketSocket;

#[derive(Subcommand, Debug)]
pub enum TrafficCommand {
    /// Send frames out of an interface (sources spread over a prefix).
    Send {
        #[command(flatten)]
        flow: FlowArgs,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Packets per second (0: as fast as possible).
        #[arg(long, default_value_t = 10_000)]
        pps: u64,
        /// Give up after this many seconds even if not all were sent.
        #[arg(long, default_value_t = 30)]
        max_seconds: u64,
        /// Destination MAC (default: broadcast).
        #[arg(long, default_value = "ff:ff:ff:ff:ff:ff")]
        dst_mac: String,
    },
    /// Send fast (XDP live frames: BPF_PROG_RUN redirecting template frames out of the
    /// interface, a random source of the prefix per packet), at a set rate for a set time.
    Generate {
        #[command(flatten)]
        flow: FlowArgs,
        /// Packets per second (0: as fast as the kernel runs).
        #[arg(long, default_value_t = 0)]
        pps: u64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Destination MAC (default: the interface's peer must accept broadcast).
        #[arg(long, default_value = "ff:ff:ff:ff:ff:ff")]
        dst_mac: String,
        /// XDP live frames, an AF_PACKET socket, or live frames where the kernel allows them.
        #[arg(long, value_enum, default_value_t = crate::trafficgen::Backend::Auto)]
        sender: crate::trafficgen::Backend,
    },
    /// Count the IP frames arriving on an interface, per flow.
    Count {
        #[arg(short, long)]
        interface: String,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Sum arrivals by source prefix instead of per flow: NAME=PREFIX (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, IpNet)>,
        #[arg(long)]
        json: bool,
    },
}

/// What to send: the same for the socket sender and the fast generator.
#[derive(clap::Args, Debug)]
pub struct FlowArgs {
    #[arg(short, long)]
    interface: String,
    /// Source address or prefix; a prefix sends from up to 4096 of its addresses.
    #[arg(long, value_parser = parse_source)]
    src: IpNet,
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, value_enum, default_value = "udp")]
    proto: Proto,
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// TCP flags, comma-separated (syn, ack, rst, fin).
    #[arg(long, value_delimiter = ',', default_value = "syn")]
    tcp_flags: Vec<String>,
    #[arg(long, default_value_t = 18)]
    payload: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Proto {
    Udp,
    Tcp,
    Icmp,
}

fn parse_source(s: &str) -> std::result::Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a prefix"))
}

fn parse_label(s: &str) -> std::result::Result<(String, IpNet), String> {
    let (name, prefix) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PREFIX"))?;
    let prefix = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok((name.to_string(), prefix))
}

pub fn run(cmd: TrafficCommand) -> Result<()> {
    match cmd {
        TrafficCommand::Generate {
            flow:
                FlowArgs {
                    interface,
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    tcp_flags,
                    payload,
                },
            pps,
            seconds,
            dst_mac,
            sender,
        } => {
            use crate::trafficgen::{self, Flow, Pace, Protocol, Sender};
            if !(0.0..=3600.0).contains(&seconds) {
                bail!("--seconds must be between 0 and 3600");
            }
            let flow = Flow {
                sources: src.trunc(),
                destination: dst,
                protocol: match proto {
                    Proto::Udp => Protocol::Udp,
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Icmp => Protocol::Icmp,
                },
                source_port: sport,
                destination_port: dport,
                tcp_flags: trafficgen::parse_tcp_flags(&tcp_flags)?,
                payload,
                dst_mac: trafficgen::parse_mac(&dst_mac)?,
                src_mac: trafficgen::interface_mac(&interface)?,
            };
            let t = flow.template()?;
            let (sender, fallback) = Sender::open(&t, &interface, sender)?;
            if fallback.is_some() {
                eprintln!(
                    "{}",
                    trafficgen::announce(sender.name(), fallback.as_deref())
                );
            }
            let sent = std::sync::atomic::AtomicU64::new(0);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let start = std::time::Instant::now();
            let n = sender.run(
                Pace {
                    pps,
                    duration: Duration::from_secs_f64(seconds),
                    count: u64::MAX,
                },
                &sent,
                &stop,
            )?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "sent {n} packets in {secs:.2} s ({:.0} pps) from {} source(s) on {interface} ({})",
                n as f64 / secs.max(1e-9),
                t.sources,
                sender.name()
            );
            Ok(())
        }
        TrafficCommand::Send {
            flow:
                FlowArgs {
                    interface,
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    tcp_flags,
                    payload,
                },
            count,
            pps,
            max_seconds,
            dst_mac,
        } => {
            if src.addr().is_ipv4() != dst.is_ipv4() {
                bail!("--src {src} and --dst {dst} are of different address families");
            }
            if payload > 1400 {
                bail!("--payload {payload} is larger than 1400 bytes");
            }
            let flags = crate::trafficgen::parse_tcp_flags(&tcp_flags)?;
            let l4 = match proto {
                Proto::Udp => L4::Udp { sport, dport },
                Proto::Tcp => L4::Tcp {
                    sport,
                    dport,
                    flags,
                },
                Proto::Icmp => L4::Icmp {
                    kind: if dst.is_ipv4() { 8 } else { 128 },
                    code: 0,
                },
            };
            let mac = crate::trafficgen::parse_mac(&dst_mac)?;
            let frames: Vec<Vec<u8>> = src
                .hosts()
                .take(4096)
                .map(|s| {
                    let mut p = PacketSpec::new(s, dst, l4);
                    p.payload_len = payload;
                    p.dst_mac = mac;
                    p.build()
                })
                .collect();
            let sock = PacketSocket::open(&interface)
                .with_context(|| format!("opening a raw socket on {interface}"))?;
            let sent = send_paced(&sock, &frames, count, pps, Duration::from_secs(max_seconds))?;
            println!(
                "sent {sent} frames from {} source(s) on {interface}",
                frames.len().min(count as usize)
            );
            Ok(())
        }
        TrafficCommand::Count {
            interface,
            seconds,
            labels,
            json,
        } => {
            if !(0.0..=3600.0).contains(&seconds) {
                bail!("--seconds must be between 0 and 3600");
            }
            let sock = PacketSocket::open(&interface)
                .with_context(|| format!("opening a raw socket on {interface}"))?;
            let counts = sock.count_flows(Duration::from_secs_f64(seconds))?;
            if !labels.is_empty() {
                let mut sums: Vec<(String, u64)> =
                    labels.iter().map(|(n, _)| (n.clone(), 0)).collect();
                let mut other = 0u64;
                for (k, c) in &counts {
                    match labels.iter().position(|(_, p)| p.contains(&k.src)) {
                        Some(i) => sums[i].1 += c.packets,
                        None => other += c.packets,
                    }
                }
                sums.push(("other".into(), other));
                if json {
                    let v: serde_json::Map<String, serde_json::Value> =
                        sums.into_iter().map(|(n, c)| (n, c.into())).collect();
                    println!("{}", serde_json::Value::Object(v));
                } else {
                    for (n, c) in sums {
                        println!("{n} {c}");
                    }
                }
                return Ok(());
            }
            if json {
                let v: Vec<_> = counts.iter().map(|(k, c)| serde_json::json!({"flow": k, "packets": c.packets, "bytes": c.bytes})).collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "{:<40} {:<40} {:>5} {:>6} {:>6} {:>10}",
                    "SOURCE", "DESTINATION", "PROTO", "SPORT", "DPORT", "PACKETS"
                );
                for (k, c) in &counts {
                    println!(
                        "{:<40} {:<40} {:>5} {:>6} {:>6} {:>10}",
                        k.src, k.dst, k.proto, k.sport, k.dport, c.packets
                    );
                }
            }
            Ok(())
        }
    }
}
