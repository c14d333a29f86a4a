//! The lab's network: three namespaces joined by two veth pairs.
//!
//! ```text
//!  internet (attackers, users)      scrubber (dots-agent server, XDP)      customer
//!  inet0 ---------------------- scr-in   [routes]   scr-out ------------------ cust0
//!  192.0.2.1                    192.0.2.254          198.51.100.1             198.51.100.10
//!  2001:db8:100::1              2001:db8:100::254    2001:db8:6401::1         2001:db8:6401::10
//! ```
//!
//! The generator writes the scrubber's MAC into its frames, so they are routed onwards like
//! real transit traffic; static neighbour entries spare ARP/NDP. Everything lives in
//! namespaces named after the process id and is removed by [`Lab::drop`], also on errors and
//! on Ctrl-C/SIGTERM (see [`install_signal_handlers`]).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

pub const INET_IF: &str = "inet0";
pub const SCR_IN: &str = "scr-in";
pub const SCR_OUT: &str = "scr-out";
pub const CUST_IF: &str = "cust0";
pub const SCR_IN_MAC: &str = "02:00:5e:00:01:02";
pub const CUST_MAC: &str = "02:00:5e:00:02:02";
pub const SERVER_V4: &str = "198.51.100.1";
pub const TARGET_V4: &str = "198.51.100.10";
pub const TARGET_V6: &str = "2001:db8:6401::10";

/// Set by SIGINT/SIGTERM; long loops check it and return, so the Drop impls clean up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set [`INTERRUPTED`] instead of killing the process outright.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (is it installed? scripts/setup.sh)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace (named, under /run/netns), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Netns> {
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Writes a sysctl inside the namespace (/proc/sys/net follows the writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run_in(move || {
            std::fs::write(&path, &value).with_context(|| format!("writing {path}"))
        })?
    }

    /// Runs `f` on a thread that has entered this namespace and waits for it.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)?
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {} panicked", self.name))
    }

    /// Starts `f` on a thread that has entered this namespace (network only).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = std::fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns affects this thread only; file is a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                // Running `f` in the wrong namespace would send traffic elsewhere: stop.
                eprintln!(
                    "lab: setns into a lab namespace failed: {}",
                    std::io::Error::last_os_error()
                );
                std::process::abort();
            }
            f()
        }))
    }

    /// A command that will run inside this namespace. The namespace is entered with setns
    /// between fork and exec (not `ip netns exec`, which remounts /sys and hides bpffs).
    pub fn command(&self, program: &Path) -> Result<Command> {
        command_in(&self.path(), program)
    }
}

/// A command that will run inside the network namespace at `netns` (/run/netns/NAME),
/// entered with setns between fork and exec (see [`Netns::command`]).
pub fn command_in(netns: &Path, program: &Path) -> Result<Command> {
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let mut c = Command::new(program);
    // SAFETY: only setns(2), async-signal-safe, runs in the child before exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    /// Asks it to stop (SIGTERM) and waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: std::time::Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = std::time::Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(std::time::Duration::from_secs(3));
    }
}

/// The three namespaces, wired; dropping it deletes them (and with them the veth pairs).
pub struct Topology {
    pub inet: Netns,
    pub scrubber: Netns,
    pub customer: Netns,
}

impl Topology {
    pub fn build(tag: &str) -> Result<Topology> {
        Self::build_with(tag, 1)
    }

    /// With `queues` receive and transmit queues on the internet-scrubber veth pair: a
    /// veth delivers to the peer's queue of the sender's transmit queue, each with a NAPI
    /// of its own, so senders on different CPUs make the filter run on both.
    pub fn build_with(tag: &str, queues: u32) -> Result<Topology> {
        let q = queues.max(1).to_string();
        let t = Topology {
            inet: Netns::create(format!("{tag}-inet"))?,
            scrubber: Netns::create(format!("{tag}-scr"))?,
            customer: Netns::create(format!("{tag}-cust"))?,
        };
        run(
            "ip",
            &[
                "link",
                "add",
                INET_IF,
                "address",
                "02:00:5e:00:01:01",
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &t.inet.name,
                "type",
                "veth",
                "peer",
                "name",
                SCR_IN,
                "address",
                SCR_IN_MAC,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &t.scrubber.name,
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "add",
                SCR_OUT,
                "address",
                "02:00:5e:00:02:01",
                "netns",
                &t.scrubber.name,
                "type",
                "veth",
                "peer",
                "name",
                CUST_IF,
                "address",
                CUST_MAC,
                "netns",
                &t.customer.name,
            ],
        )?;
        for (ns, ifname, addrs) in [
            (&t.inet, INET_IF, ["192.0.2.1/24", "2001:db8:100::1/64"]),
            (
                &t.scrubber,
                SCR_IN,
                ["192.0.2.254/24", "2001:db8:100::254/64"],
            ),
            (
                &t.scrubber,
                SCR_OUT,
                ["198.51.100.1/24", "2001:db8:6401::1/64"],
            ),
            (
                &t.customer,
                CUST_IF,
                ["198.51.100.10/24", "2001:db8:6401::10/64"],
            ),
        ] {
            for a in addrs {
                let mut args = vec!["addr", "add", a, "dev", ifname];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        // The scrubber routes; sources are spoofed, so no reverse-path filter.
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.scr-in.rp_filter", "0"),
        ] {
            t.scrubber.sysctl(k, v)?;
        }
        t.scrubber
            .ip(&["-6", "route", "add", "2001:db8:6401::/48", "dev", SCR_OUT])?;
        t.neighbour(TARGET_V4.parse().expect("constant"))?;
        t.neighbour(TARGET_V6.parse().expect("constant"))?;
        // A veth only takes XDP-redirected frames when its peer runs NAPI: GRO on turns it
        // on even before the scrubber's XDP program is attached.
        let _ = t.scrubber.run_in(|| {
            Command::new("ethtool")
                .args(["-K", SCR_IN, "gro", "on"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        });
        Ok(t)
    }

    /// A static neighbour entry on the scrubber for a customer address (no ARP/NDP).
    pub fn neighbour(&self, addr: std::net::IpAddr) -> Result<()> {
        self.scrubber.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            CUST_MAC,
            "dev",
            SCR_OUT,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }
}
