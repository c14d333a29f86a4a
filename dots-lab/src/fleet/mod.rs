//! `dots-lab fleet`: a DOTS server steering a scrubber fleet through BGP FlowSpec, in
//! namespaces of its own on this machine (TEST-NET and 2001:db8:: only), with the real
//! daemons: the server's gobgpd as route reflector, three nodes each with gobgpd and
//! `dots-agent follow` (XDP on its own veth), a bird2 border router, Prometheus scraping
//! the nodes.
//!
//! - [`daemons`]: gobgpd, bird2, Prometheus and a gobgpd table watcher (shared with the
//!   FlowSpec tests);
//! - [`topology`]: the fleet's namespaces, links and processes;
//! - [`measure`]: `dots-lab fleet measure`, bench-style figures (not a CI test);
//! - [`attack`]: the lab scenario (`dots-lab run examples/scenarios/fleet.toml`, or
//!   `dots-lab fleet attack`): one attack spread over the nodes, each node's drops and the
//!   summed DOTS status; [`report`]: its summary and plot.

pub mod attack;
pub mod daemons;
pub mod measure;
pub mod report;
pub mod topology;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use coap_lite::RequestType;
use dots_agent::client::{code_text, Session, TransportChoice};
use ipnet::IpNet;

use topology::Fleet;

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Times from the DOTS 2.01 to the rule live on every node and at the border router,
    /// withdrawal, the fleet's drops in the DOTS status, one node killed -9 and restarted.
    Measure(measure::MeasureArgs),
    /// The lab scenario (as `dots-lab run examples/scenarios/fleet.toml`): an attack spread
    /// over the nodes, each node's drops and the DOTS status that sums them, every second;
    /// a plot of them.
    Attack(attack::AttackArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Scrubber nodes (each: a namespace, gobgpd, dots-agent follow, XDP on its veth).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The dots-agent binary (default: the one next to this dots-lab binary).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

pub fn run(c: FleetCommand) -> Result<()> {
    match c {
        FleetCommand::Measure(a) => measure::run(&a),
        FleetCommand::Attack(a) => attack::cli(&a),
    }
}

/// The target of a run's mitigation `k`: 198.51.100.(20+k)/32 for the first 200, then
/// 2001:db8:6401::(k)/128 (both inside the lab client's prefixes).
pub fn target(k: usize) -> IpNet {
    if k < 200 {
        format!("198.51.100.{}/32", 20 + k)
    } else {
        format!("2001:db8:6401::{k:x}/128")
    }
    .parse()
    .expect("a prefix")
}

enum Ask {
    Put(u32, IpNet),
    Delete(u32),
    /// The mitigation's `pkts-dropped` in its status.
    Dropped(u32),
}

/// The answer and when it arrived.
pub struct Answer {
    pub code: String,
    pub at: Instant,
    /// The same moment on the wall clock (what the daemons' own stamps compare with).
    pub wall: SystemTime,
    pub dropped: Option<u64>,
}

/// The customer's DOTS client (DTLS, one session) on a thread in the customer namespace,
/// asked one request at a time.
pub struct DotsClient {
    tx: Option<Sender<(Ask, Sender<Result<Answer>>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A request to the client's thread and where its answer goes.
type Asked = (Ask, Sender<Result<Answer>>);

impl DotsClient {
    pub fn start(fleet: &Fleet) -> Result<DotsClient> {
        let cfg = fleet.scratch.client(TransportChoice::Dtls);
        let (tx, rx): (Sender<Asked>, Receiver<Asked>) = mpsc::channel();
        let thread = fleet.scratch.topo.customer.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                let mut session = Session::connect(&cfg).await;
                for (ask, reply) in rx {
                    let answer = match &mut session {
                        Ok(s) => one(s, ask).await,
                        Err(e) => Err(anyhow!("connecting to the DOTS server: {e}")),
                    };
                    let _ = reply.send(answer);
                }
            })
        })?;
        Ok(DotsClient {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn ask(&self, a: Ask) -> Result<Answer> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("the client has stopped"))?
            .send((a, tx))
            .map_err(|_| anyhow!("the client thread has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the client thread has stopped"))?
    }

    /// PUT mitigation `mid` for `target`; fails unless the server answers 2.01.
    pub fn put(&self, mid: u32, target: IpNet) -> Result<Answer> {
        let a = self.ask(Ask::Put(mid, target))?;
        if a.code != "2.01" {
            bail!("PUT mid={mid} ({target}): the server answered {}", a.code);
        }
        Ok(a)
    }

    /// DELETE mitigation `mid`; fails unless the server answers 2.02.
    pub fn delete(&self, mid: u32) -> Result<Answer> {
        let a = self.ask(Ask::Delete(mid))?;
        if a.code != "2.02" {
            bail!("DELETE mid={mid}: the server answered {}", a.code);
        }
        Ok(a)
    }

    /// The `pkts-dropped` of mitigation `mid`'s status (this box's and the fleet's).
    pub fn dropped(&self, mid: u32) -> Result<u64> {
        let a = self.ask(Ask::Dropped(mid))?;
        a.dropped
            .ok_or_else(|| anyhow!("GET mid={mid}: {} without pkts-dropped", a.code))
    }
}

impl Drop for DotsClient {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn one(s: &mut Session, ask: Ask) -> Result<Answer> {
    let cuid = s.cuid().to_string();
    let (code, payload) = match ask {
        Ask::Put(mid, target) => {
            let code = crate::proof::put(s, mid, target).await?;
            (code, None)
        }
        Ask::Delete(mid) => (crate::proof::delete(s, mid).await?, None),
        Ask::Dropped(mid) => {
            let r = s
                .request(
                    RequestType::Get,
                    &crate::proof::mitigate_path(&cuid, mid),
                    None,
                    false,
                )
                .await?;
            (code_text(&r), Some(r.payload))
        }
    };
    let (at, wall) = (Instant::now(), SystemTime::now());
    let dropped = payload.and_then(|p| {
        let v =
            dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse_response(&p).ok()?);
        v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"].as_u64()
    });
    Ok(Answer {
        code,
        at,
        wall,
        dropped,
    })
}
