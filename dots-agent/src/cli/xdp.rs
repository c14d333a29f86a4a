//! `dots-agent xdp ...`: the datapath without DOTS, in the spirit of xdp-tools' xdp-filter.
//!
//! One writer per pinned filter: commands that change it (attach, detach, mitigation add
//! and remove) take the pin root's lock, as a server does for its lifetime. While a server
//! holds it, `mitigation add|remove|list` go through that server (found from the lock's
//! holder) and are kept in its store; attach and detach are refused, naming the server.
//! Without a server they change the pins directly. Operator mitigations keep the file's
//! `id`; the datapath holds them under ids of their own, never mistaken for a DOTS client's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Deserialize;

use super::xdp_status::{owner, render, status};
use crate::admin::{self, Request};
use crate::datapath::lock::{Holder, LockError, WriterLock};
use crate::datapath::{
    compile, AttachMode, DatapathError, DatapathId, LoadOptions, MitigationSpec, Mitigator,
    XdpDatapath, DEFAULT_AMPLIFICATION_PORTS, DEFAULT_PIN_ROOT,
};
use crate::engine::{operator_id, Added, OperatorView};

#[derive(Subcommand, Debug)]
pub enum XdpCommand {
    /// Load the XDP filter and attach it to interfaces (pinned: it keeps running after exit).
    Attach {
        /// Interface to attach to (repeat for several).
        #[arg(short, long = "interface", required = true)]
        interfaces: Vec<String>,
        /// native (driver), skb (generic) or auto (native, else skb with a note why).
        #[arg(long, value_enum, default_value = "auto")]
        mode: AttachMode,
        /// UDP source ports dropped by the amplification countermeasure (comma-separated).
        /// Default on first attach: the well-known reflection ports.
        #[arg(long, value_delimiter = ',')]
        amplification_ports: Option<Vec<u16>>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Detach from interfaces; with --purge also drop the pinned maps (all mitigations).
    Detach {
        /// Interface to detach from (repeat for several).
        #[arg(short, long = "interface")]
        interfaces: Vec<String>,
        /// Detach from every interface.
        #[arg(long)]
        all: bool,
        /// After detaching, remove the pinned maps too.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        pins: Pins,
    },
    /// Show interfaces, mitigations, counters and rates.
    Status {
        /// Seconds between the two samples rates are computed from (0: counters only).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Repeat until interrupted (on a terminal the screen is redrawn in place).
        #[arg(long)]
        watch: bool,
        /// Print JSON (with --watch: one object per line).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: Pins,
    },
    /// Install, replace, remove and list mitigations from TOML or JSON files.
    #[command(subcommand)]
    Mitigation(MitigationCommand),
}

#[derive(Subcommand, Debug)]
pub enum MitigationCommand {
    /// Install (or atomically replace) the mitigations in a file.
    Add {
        /// A TOML or JSON mitigation file (see examples/lab-mitigation.toml).
        file: PathBuf,
        #[command(flatten)]
        pins: Pins,
    },
    /// Check a mitigation file without touching the datapath.
    Check {
        /// A TOML or JSON mitigation file.
        file: PathBuf,
    },
    /// Remove a mitigation by id.
    Remove {
        /// The mitigation's id (as in `mitigation list`).
        id: u64,
        #[command(flatten)]
        pins: Pins,
    },
    /// List installed mitigations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: Pins,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Pins {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Where mitigations added without a server are kept (for names in `status`).
    #[arg(long, default_value = "/run/dots-agent")]
    pub state_dir: PathBuf,
}

impl Pins {
    fn spec_dir(&self) -> PathBuf {
        self.state_dir.join("xdp-mitigations")
    }

    pub(super) fn saved_spec(&self, id: u32) -> Option<MitigationSpec> {
        let text = std::fs::read_to_string(self.spec_dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Who may change the pinned filter now.
enum Writer {
    /// This command: nobody else holds the lock.
    Here(Box<XdpDatapath>),
    /// A running server, through its control socket.
    Server { holder: Holder, socket: PathBuf },
}

/// Opens the pinned filter as its writer, or finds the server that is.
fn writer(pins: &Pins) -> Result<Writer> {
    match XdpDatapath::adopt_pinned(&pins.pin_root) {
        Ok(dp) => Ok(Writer::Here(Box::new(dp))),
        Err(DatapathError::Locked(LockError::Held { holder, .. })) => {
            match admin::socket_of(holder.pid) {
                Some(socket) => Ok(Writer::Server { holder, socket }),
                None => bail!(
                    "the pinned XDP datapath at {} is in use by {holder}, which has no control \
                     socket: stop it first",
                    pins.pin_root.display()
                ),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The control socket of the server that holds the pins, if one does.
fn server_socket(pins: &Pins) -> Option<PathBuf> {
    let holder = crate::datapath::lock::holder(&pins.pin_root)?;
    admin::socket_of(holder.pid)
}

/// What the server holding the pins says each datapath id is (empty without a server).
fn server_names(socket: Option<&Path>) -> BTreeMap<u64, String> {
    socket
        .and_then(|s| admin::call(s, &Request::Names).ok())
        .and_then(|v| serde_json::from_value::<Vec<(u64, String)>>(v).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// The operator mitigations' files, for the names of their ACL entries: from the server's
/// store while one runs, else as this command line kept them under --state-dir.
fn operator_specs(
    pins: &Pins,
    socket: Option<&Path>,
    dp: &XdpDatapath,
) -> BTreeMap<u32, MitigationSpec> {
    let stored: Vec<OperatorView> = socket
        .and_then(|s| admin::call(s, &Request::OperatorList).ok())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut specs: BTreeMap<u32, MitigationSpec> = stored
        .into_iter()
        .filter_map(|v| Some((v.id, v.spec?)))
        .collect();
    for raw in dp.installed() {
        if let DatapathId::Operator(n) = DatapathId::from_raw(raw) {
            if let std::collections::btree_map::Entry::Vacant(e) = specs.entry(n) {
                if let Some(s) = pins.saved_spec(n) {
                    e.insert(s);
                }
            }
        }
    }
    specs
}

/// Refuses a change a server should make (attach, detach) while one holds the pins.
fn lock_for_change(pins: &Pins, what: &str) -> Result<Option<WriterLock>> {
    if !pins.pin_root.exists() {
        return Ok(None);
    }
    WriterLock::acquire(&pins.pin_root, "the pinned XDP datapath")
        .map(Some)
        .map_err(|e| match e {
            LockError::Held { holder, .. } => anyhow::anyhow!(
                "the pinned XDP datapath at {} is in use by {holder}: it {what} its [datapath] \
             interfaces itself; stop it first to change them by hand",
                pins.pin_root.display()
            ),
            other => other.into(),
        })
}

/// A mitigation file: one mitigation at top level, or several as `[[mitigation]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MitigationFile {
    mitigation: Vec<MitigationSpec>,
}

pub fn read_mitigation_file(path: &Path) -> Result<Vec<MitigationSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let specs = if is_json {
        match serde_json::from_str::<MitigationFile>(&text) {
            Ok(f) => f.mitigation,
            Err(_) => vec![serde_json::from_str::<MitigationSpec>(&text)
                .with_context(|| format!("{} is not a mitigation (JSON)", path.display()))?],
        }
    } else {
        match toml::from_str::<MitigationFile>(&text) {
            Ok(f) => f.mitigation,
            Err(_) => vec![toml::from_str::<MitigationSpec>(&text)
                .with_context(|| format!("{} is not a mitigation (TOML)", path.display()))?],
        }
    };
    let mut ids = std::collections::HashSet::new();
    for s in &specs {
        compile::validate(s).with_context(|| format!("{}: mitigation {}", path.display(), s.id))?;
        operator_id(s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !ids.insert(s.id) {
            bail!("{}: mitigation id {} appears twice", path.display(), s.id);
        }
    }
    Ok(specs)
}

pub fn run(cmd: XdpCommand) -> Result<()> {
    match cmd {
        XdpCommand::Attach {
            interfaces,
            mode,
            amplification_ports,
            pins,
        } => attach(&pins, &interfaces, mode, amplification_ports),
        XdpCommand::Detach {
            interfaces,
            all,
            purge,
            pins,
        } => detach(&pins, interfaces, all, purge),
        XdpCommand::Status {
            interval,
            watch,
            json,
            pins,
        } => loop {
            let socket = server_socket(&pins);
            let specs = XdpDatapath::open_pinned(&pins.pin_root)
                .map(|dp| operator_specs(&pins, socket.as_deref(), &dp))
                .unwrap_or_default();
            let report = status(&pins, interval, &server_names(socket.as_deref()), &specs)?;
            if json && watch {
                println!("{}", serde_json::to_string(&report)?);
            } else if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    // Cursor home, clear the screen: the next sample replaces the last.
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", render(&report));
            }
            if !watch {
                return Ok(());
            }
            if interval <= 0.0 {
                std::thread::sleep(Duration::from_secs(1));
            }
        },
        XdpCommand::Mitigation(m) => run_mitigation(m),
    }
}

fn attach(
    pins: &Pins,
    interfaces: &[String],
    mode: AttachMode,
    amplification_ports: Option<Vec<u16>>,
) -> Result<()> {
    // Every interface is checked before anything is loaded or attached.
    crate::datapath::check_interfaces(interfaces)?;
    drop(lock_for_change(pins, "attaches")?);
    let fresh = !XdpDatapath::is_pinned(&pins.pin_root);
    let mut dp = match fresh {
        true => XdpDatapath::load(&LoadOptions::new(&pins.pin_root)),
        false => XdpDatapath::adopt_pinned(&pins.pin_root),
    }
    .context("loading the XDP datapath")?;
    let result = (|| -> Result<Vec<crate::datapath::AttachOutcome>> {
        match amplification_ports {
            Some(p) => dp.set_amplification_ports(&p)?,
            None if dp.amplification_ports()?.is_empty() => {
                dp.set_amplification_ports(DEFAULT_AMPLIFICATION_PORTS)?
            }
            None => {}
        }
        Ok(dp.attach_all(interfaces, mode)?)
    })();
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            drop(dp);
            if fresh {
                let _ = XdpDatapath::purge(&pins.pin_root);
            }
            return Err(e.context("nothing was attached"));
        }
    };
    for out in &outcomes {
        let iface = &out.interface;
        if let Some(why) = &out.fallback {
            eprintln!("note: {iface}: {why}");
        }
        match (out.replaced, mode) {
            (false, _) => println!("{iface}: attached in {} mode", out.mode),
            (true, AttachMode::Auto) => {
                println!("{iface}: already attached; program replaced atomically")
            }
            (true, m) => println!(
                "{iface}: already attached; program replaced atomically in its current mode \
                 (--mode {} not applied: `dots-agent xdp detach -i {iface}` first to change it)",
                format!("{m:?}").to_lowercase()
            ),
        }
    }
    println!("maps and links pinned under {}", dp.pin_dir().display());
    Ok(())
}

fn detach(pins: &Pins, interfaces: Vec<String>, all: bool, purge: bool) -> Result<()> {
    if !all && interfaces.is_empty() && !purge {
        bail!("name interfaces with --interface, or use --all");
    }
    let _lock = lock_for_change(pins, "detaches")?;
    let targets = match all {
        true => XdpDatapath::attached(&pins.pin_root),
        false => interfaces,
    };
    if all && targets.is_empty() {
        println!(
            "not attached to any interface (no links pinned under {})",
            pins.pin_root.display()
        );
    }
    for iface in &targets {
        if XdpDatapath::detach(&pins.pin_root, iface)? {
            println!("{iface}: detached");
        } else {
            println!("{iface}: was not attached (nothing to detach)");
        }
    }
    if purge {
        if !XdpDatapath::is_pinned(&pins.pin_root) {
            println!(
                "nothing pinned under {}: no maps to remove",
                pins.pin_root.display()
            );
            return Ok(());
        }
        let held = XdpDatapath::open_pinned(&pins.pin_root)
            .map(|d| d.installed().len())
            .unwrap_or(0);
        XdpDatapath::purge(&pins.pin_root)?;
        let _ = std::fs::remove_dir_all(pins.spec_dir());
        println!("pinned maps removed ({held} mitigation(s) with them)");
    }
    Ok(())
}

fn run_mitigation(cmd: MitigationCommand) -> Result<()> {
    match cmd {
        MitigationCommand::Check { file } => {
            let specs = read_mitigation_file(&file)?;
            println!(
                "{}: {} mitigation(s), all valid",
                file.display(),
                specs.len()
            );
            Ok(())
        }
        MitigationCommand::Add { file, pins } => {
            let specs = read_mitigation_file(&file)?;
            match writer(&pins)? {
                Writer::Here(dp) => add_here(&pins, *dp, &specs),
                Writer::Server { holder, socket } => {
                    let v = admin::call(
                        &socket,
                        &Request::OperatorAdd {
                            specs: specs.clone(),
                        },
                    )?;
                    let done: Vec<(u32, Added)> = serde_json::from_value(v)?;
                    for ((id, added), s) in done.iter().zip(&specs) {
                        let what = match added {
                            Added::Installed => "installed",
                            Added::Replaced => "replaced",
                            Added::Unchanged => "unchanged (already installed as it is)",
                        };
                        println!(
                            "mitigation {id}: {what} ({} targets, {} ACL entries) through the server, {holder}; kept in its store",
                            s.targets.len(),
                            s.acl.len()
                        );
                    }
                    Ok(())
                }
            }
        }
        MitigationCommand::Remove { id, pins } => {
            let id = u32::try_from(id).context("operator mitigation ids go up to 4294967295")?;
            let counts = match writer(&pins)? {
                Writer::Here(mut dp) => {
                    let c = dp.remove(DatapathId::Operator(id).raw())?;
                    let _ = std::fs::remove_file(pins.spec_dir().join(format!("{id}.json")));
                    c.map(|c| (c.in_scope.packets, c.dropped_total().packets))
                }
                Writer::Server { socket, .. } => {
                    let v = admin::call(&socket, &Request::OperatorRemove { id })?;
                    serde_json::from_value(v)?
                }
            };
            match counts {
                Some((in_scope, dropped)) => println!(
                    "mitigation {id}: removed ({in_scope} packets in scope, {dropped} dropped)"
                ),
                None => {
                    bail!("no mitigation {id} is installed (see `dots-agent xdp mitigation list`)")
                }
            }
            Ok(())
        }
        MitigationCommand::List { json, pins } => list(&pins, json),
    }
}

/// Installs from a file with no server running: straight into the pins, the specs kept
/// under --state-dir for names in `status`.
fn add_here(pins: &Pins, mut dp: XdpDatapath, specs: &[MitigationSpec]) -> Result<()> {
    std::fs::create_dir_all(pins.spec_dir())
        .with_context(|| format!("creating {}", pins.spec_dir().display()))?;
    for s in specs {
        let id = operator_id(s).map_err(anyhow::Error::msg)?;
        let dp_spec = crate::engine::operator_datapath_spec(id, s);
        let replacing = dp.installed().contains(&dp_spec.id);
        let t0 = Instant::now();
        dp.install(&dp_spec)
            .with_context(|| format!("installing mitigation {id}"))?;
        let path = pins.spec_dir().join(format!("{id}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(s)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "mitigation {id}: {} ({} targets, {} ACL entries) in {:.1} ms",
            if replacing { "replaced" } else { "installed" },
            s.targets.len(),
            s.acl.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Every mitigation in the pinned filter, named by its owner.
fn list(pins: &Pins, json: bool) -> Result<()> {
    let dp = XdpDatapath::open_pinned(&pins.pin_root)?;
    let socket = server_socket(pins);
    let names = server_names(socket.as_deref());
    // Operator mitigations pinned while no server ran, which the running server's store
    // does not hold.
    let unmanaged: Vec<u32> = match &socket {
        Some(s) => {
            serde_json::from_value::<Vec<OperatorView>>(admin::call(s, &Request::OperatorList)?)?
                .into_iter()
                .filter(|o| o.spec.is_none())
                .map(|o| o.id)
                .collect()
        }
        None => Vec::new(),
    };
    let rows: Vec<(u64, Option<u32>, String, Vec<String>)> = dp
        .installed()
        .into_iter()
        .map(|id| {
            let mut who = owner(id, &names);
            let operator_id = match DatapathId::from_raw(id) {
                DatapathId::Operator(n) => Some(n),
                _ => None,
            };
            if operator_id.is_some_and(|n| unmanaged.contains(&n)) {
                who.push_str(" (not in the server's store: add it through the server to keep it)");
            }
            let targets = dp.targets(id).unwrap_or_default();
            (
                id,
                operator_id,
                who,
                targets.iter().map(|t| t.to_string()).collect(),
            )
        })
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, op, who, t)| {
                serde_json::json!({"datapath_id": id, "operator_id": op, "owner": who, "targets": t})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if rows.is_empty() {
        println!("no mitigations installed");
    } else {
        for (_, _, who, t) in rows {
            println!("{who}: {}", t.join(" "));
        }
    }
    Ok(())
}
