//! `dots-agent client ... telemetry`: RFC 9244 telemetry from the client side, with the
//! figures measured on the client's own interface rather than typed in.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use coap_lite::RequestType;
use ipnet::IpNet;

use crate::client::Session;
use crate::signal::telemetry::{
    self, Baseline, PercentileSet, PipeCapacity, PreMitigation, SetupItem, TelemetryConfig, Unit,
    UnitClass,
};

#[derive(Subcommand, Debug)]
pub enum TelemetryCommand {
    /// Show the server's limits and this client's telemetry setup (or one tsid).
    Get {
        /// One telemetry setup (default: all of this client's, with the server's limits).
        #[arg(long)]
        tsid: Option<u32>,
    },
    /// Set the telemetry configuration (PUT tm-setup with current-config).
    Configure {
        /// Telemetry setup id: higher than the last one this client set.
        #[arg(long)]
        tsid: u32,
        /// Ask the server to add telemetry to mitigation status.
        #[arg(long)]
        server_originated: bool,
        /// measurement-interval code: 1 = 5 minutes, 2 = 10 minutes, 3 = 30 minutes, 4 = hour.
        #[arg(long, default_value_t = 1)]
        interval: u8,
        /// measurement-sample code: 1 = second, 2 = 5 s, 3 = 30 s, 4 = minute.
        #[arg(long, default_value_t = 1)]
        sample: u8,
        /// low,mid,high percentiles (e.g. 10,50,90).
        #[arg(long, default_value = "10,50,90")]
        percentiles: String,
        /// Minimum seconds between telemetry notifications.
        #[arg(long, default_value_t = 10)]
        notify_interval: u16,
    },
    /// Tell the server the capacity of a link (PUT tm-setup with total-pipe-capacity); the
    /// server caps cleaned traffic to it.
    Pipe {
        /// Telemetry setup id: higher than the last one this client set.
        #[arg(long)]
        tsid: u32,
        /// The link's name (link-id).
        #[arg(long, default_value = "uplink")]
        link: String,
        /// Capacity in megabit/s.
        #[arg(long)]
        mbps: u64,
    },
    /// Measure normal traffic on an interface and send it as a baseline.
    Baseline {
        /// Telemetry setup id: higher than the last one this client set.
        #[arg(long)]
        tsid: u32,
        /// The baseline's id within the setup.
        #[arg(long, default_value_t = 1)]
        id: u32,
        /// The interface to measure (needs root or CAP_NET_RAW).
        #[arg(long)]
        interface: String,
        /// How long to measure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Targets the baseline is for (none: the whole domain).
        #[arg(long = "target")]
        targets: Vec<IpNet>,
    },
    /// Measure traffic toward targets on an interface and send it, with the top talkers,
    /// as pre-mitigation telemetry (PUT tm).
    Report {
        /// Telemetry id: higher than the last one this client sent.
        #[arg(long)]
        tmid: u32,
        /// The interface to measure (needs root or CAP_NET_RAW).
        #[arg(long)]
        interface: String,
        /// How long to measure.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Target prefix the report is about (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<IpNet>,
        /// How many talkers to report.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Remove a setup (one tsid, or all with --all).
    Delete {
        /// The setup to remove.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        tsid: Option<u32>,
        /// Remove every setup of this client.
        #[arg(long)]
        all: bool,
    },
}

/// Both rate classes a person reads most easily.
const CLASSES: [UnitClass; 2] = [UnitClass::PacketsPerSecond, UnitClass::BitsPerSecond];

fn percentiles(text: &str) -> Result<PercentileSet> {
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--percentiles {text:?}: give three numbers like 10,50,90"))?;
    let [low, mid, high] = parts[..] else {
        bail!("--percentiles {text:?}: give three numbers like 10,50,90");
    };
    let h = |v: f64| -> Result<u32> {
        if !(0.0..=100.0).contains(&v) {
            bail!("--percentiles: {v} is not between 0 and 100");
        }
        Ok((v * 100.0).round() as u32)
    };
    Ok(PercentileSet {
        low: h(low)?,
        mid: h(mid)?,
        high: h(high)?,
    })
}

/// Runs one telemetry command; returns the response to print.
pub async fn run(s: &mut Session, cmd: &TelemetryCommand) -> Result<coap_lite::Packet> {
    let cuid = format!("cuid={}", s.cuid());
    let setup = |tsid: Option<u32>| {
        let mut p = vec!["tm-setup".to_string(), cuid.clone()];
        p.extend(tsid.map(|t| format!("tsid={t}")));
        p
    };
    let (method, path, body) = match cmd {
        TelemetryCommand::Get { tsid } => (RequestType::Get, setup(*tsid), None),
        TelemetryCommand::Configure {
            tsid,
            server_originated,
            interval,
            sample,
            percentiles: p,
            notify_interval,
        } => {
            let c = TelemetryConfig {
                measurement_interval: *interval,
                measurement_sample: *sample,
                percentiles: percentiles(p)?,
                server_originated: *server_originated,
                notify_interval: *notify_interval,
                ..TelemetryConfig::default()
            };
            let body = telemetry::encode_setup_put(&SetupItem::Config(c));
            (RequestType::Put, setup(Some(*tsid)), Some(body))
        }
        TelemetryCommand::Pipe { tsid, link, mbps } => {
            let pipe = PipeCapacity {
                link_id: link.clone(),
                unit: Unit::from_code(8).expect("megabit-ps"),
                capacity: *mbps,
            };
            let body = telemetry::encode_setup_put(&SetupItem::Pipes(vec![pipe]));
            (RequestType::Put, setup(Some(*tsid)), Some(body))
        }
        TelemetryCommand::Baseline {
            tsid,
            id,
            interface,
            seconds,
            targets,
        } => {
            eprintln!("measuring {interface} for {seconds} s ...");
            let m = measure(interface, *seconds, targets).await?;
            let baseline = Baseline {
                id: *id,
                targets: targets.clone(),
                normal: m.traffic(&CLASSES, &PercentileSet::default()),
                ..Baseline::default()
            };
            if baseline.normal.is_empty() {
                bail!("nothing measured on {interface}");
            }
            let body = telemetry::encode_setup_put(&SetupItem::Baselines(vec![baseline]));
            (RequestType::Put, setup(Some(*tsid)), Some(body))
        }
        TelemetryCommand::Report {
            tmid,
            interface,
            seconds,
            targets,
            top,
        } => {
            eprintln!("measuring {interface} for {seconds} s ...");
            let m = measure(interface, *seconds, targets).await?;
            let report = PreMitigation {
                targets: targets.clone(),
                total: m.traffic(&CLASSES, &PercentileSet::default()),
                attack: Vec::new(),
                talkers: m.top_talkers((*top).min(telemetry::MAX_TALKERS), &CLASSES),
                ..PreMitigation::default()
            };
            let body = telemetry::encode_pre_mitigation(&[(None, report)]);
            let path = vec!["tm".to_string(), cuid.clone(), format!("tmid={tmid}")];
            (RequestType::Put, path, Some(body))
        }
        TelemetryCommand::Delete { tsid, .. } => (RequestType::Delete, setup(*tsid), None),
    };
    s.request(method, &path, body, false).await
}

/// Measures on a blocking thread (the AF_PACKET counter reads synchronously).
async fn measure(
    interface: &str,
    seconds: u64,
    targets: &[IpNet],
) -> Result<crate::measure::Measurement> {
    let (i, t) = (interface.to_string(), targets.to_vec());
    tokio::task::spawn_blocking(move || crate::measure::measure(&i, seconds, &t))
        .await
        .context("the measuring thread")?
        .with_context(|| format!("measuring on {interface} (needs root or CAP_NET_RAW)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_read_with_clear_errors() {
        assert_eq!(
            percentiles("5, 50, 95").unwrap(),
            PercentileSet {
                low: 500,
                mid: 5000,
                high: 9500
            }
        );
        assert!(percentiles("10,50").is_err());
        assert!(percentiles("10,50,101").is_err());
        assert!(percentiles("a,b,c").is_err());
    }
}
