//! Test hosts in network namespaces: each test makes its own (unique names), joins them
//! with veth pairs, runs code inside them on dedicated threads, and removes them on drop,
//! also when the test fails.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod bgp;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("dots-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that has entered this namespace (network only).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on this thread only (network namespaces are per thread).
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair (`a_if` in `a`, `b_if` in `b`), both up.
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl VethPair {
    pub fn new(tag: &str) -> VethPair {
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        let (a_if, b_if) = ("veth-a".to_string(), "veth-b".to_string());
        ip(&[
            "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ]);
        a.ip(&["link", "set", &a_if, "up"]);
        b.ip(&["link", "set", &b_if, "up"]);
        VethPair { a, b, a_if, b_if }
    }
}

/// A bpffs pin root of this test's own, removed on drop.
pub struct PinRoot(pub std::path::PathBuf);

impl PinRoot {
    pub fn new(tag: &str) -> PinRoot {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PinRoot(format!("/sys/fs/bpf/dots-{tag}-{}-{n}", std::process::id()).into())
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The usual DOTS end-to-end setup: a veth pair (side `a`: clients and attackers at
/// 192.0.2.1; side `b`: the DOTS server at [`SERVER_IP`]), a lab PKI with client-a, and a
/// pin root, all removed on drop.
pub struct Lab {
    pub pair: VethPair,
    pub dir: tempfile::TempDir,
    pub pins: PinRoot,
}

pub const SERVER_IP: &str = "192.0.2.2";

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let pair = VethPair::new(tag);
        pair.a
            .ip(&["addr", "add", "192.0.2.1/24", "dev", &pair.a_if]);
        pair.b
            .ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", &pair.b_if]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        dots_agent::pki::init(
            dir.path(),
            "dots.example",
            &[SERVER_IP.parse().expect("an address")],
            &["client-a".into()],
        )
        .expect("lab certificates");
        Lab {
            pair,
            dir,
            pins: PinRoot::new(&format!("{tag}pin")),
        }
    }

    /// Writes `server.toml` for a server on side `b`: the signal channel on
    /// [`SERVER_IP`]:4646, the XDP filter in native mode on `b`'s interface with this lab's
    /// pins, state in the lab directory, and client-a owning `prefixes` (TOML list items).
    /// `signal` adds lines to `[signal]`, `sections` adds whole sections, `client` adds lines
    /// to client-a's entry.
    pub fn server_config(
        &self,
        prefixes: &str,
        signal: &str,
        sections: &str,
        client: &str,
    ) -> std::path::PathBuf {
        let text = format!(
            r#"
[signal]
listen = ["{SERVER_IP}:4646"]
{signal}
[tls]
ca = "ca.pem"
cert = "server.pem"
key = "server.key"
[store]
dir = "state"
[datapath]
interfaces = ["{iface}"]
xdp_mode = "native"
pin_root = "{pins}"
{sections}
[[client]]
name = "client-a"
prefixes = [{prefixes}]
{client}
"#,
            iface = self.pair.b_if,
            pins = self.pins.0.display()
        );
        let path = self.dir.path().join("server.toml");
        std::fs::write(&path, text).expect("writing server.toml");
        path
    }

    /// client-a's configuration for the server's signal channel.
    pub fn client(
        &self,
        transport: dots_agent::client::TransportChoice,
    ) -> dots_agent::client::ClientConfig {
        let dir = self.dir.path();
        dots_agent::client::ClientConfig {
            server: format!("{SERVER_IP}:4646"),
            transport,
            server_name: "dots.example".into(),
            tls: dots_agent::client::ClientTls {
                ca: dir.join("ca.pem"),
                cert: dir.join("client-a.pem"),
                key: dir.join("client-a.key"),
            },
        }
    }
}

/// A DOTS server and client in namespaces, and attack traffic across a veth pair.
pub mod dots {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::path::Path;
    use std::time::Duration;

    use coap_lite::{Packet, RequestType};
    use dots_agent::af_packet::{FlowCount, FlowKey, PacketSocket};
    use dots_agent::client::{ClientConfig, Session};
    use dots_agent::server::ServerConfig;
    use dots_lab::packet::PacketSpec;
    use dots_lab::trafficgen::socket::send_paced;

    use super::{Netns, VethPair};

    /// Starts the server in namespace `ns`; it runs until the returned sender is used.
    pub fn start_server(
        ns: &Netns,
        config: &Path,
    ) -> (
        std::thread::JoinHandle<anyhow::Result<()>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let cfg = ServerConfig::load(config).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = ns.run(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(dots_agent::app::run_until(cfg, async {
                let _ = stop_rx.await;
            }))
        });
        (handle, stop_tx)
    }

    /// Connects, retrying while the server is still starting (loading its XDP program).
    pub async fn connect(cfg: &ClientConfig) -> Session {
        for _ in 0..50 {
            if let Ok(s) = Session::connect(cfg).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no connection to the server within 10 s");
    }

    /// Runs `f` with a tokio runtime on a thread inside namespace `ns`.
    pub fn in_ns<T: Send + 'static>(
        ns: &Netns,
        f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
    ) -> T {
        ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            f(&rt)
        })
        .join()
        .expect("namespace thread")
    }

    /// Sends one request on mitigation `mid` from namespace `ns`, connecting afresh (as a
    /// client that comes and goes would): the response.
    pub fn ask_mid(
        ns: &Netns,
        cfg: &ClientConfig,
        mid: u32,
        method: RequestType,
        body: Option<Vec<u8>>,
        efficacy: bool,
    ) -> anyhow::Result<Packet> {
        let cfg = cfg.clone();
        in_ns(ns, move |rt| {
            rt.block_on(async {
                let mut s = connect(&cfg).await;
                let path = vec![
                    "mitigate".into(),
                    format!("cuid={}", s.cuid()),
                    format!("mid={mid}"),
                ];
                s.request(method, &path, body, efficacy).await
            })
        })
    }

    pub fn attack(pair: &VethPair, count: u64, rate: u64) -> BTreeMap<FlowKey, FlowCount> {
        let b_if = pair.b_if.clone();
        let receiver = pair.b.run(move || {
            PacketSocket::open(&b_if)
                .unwrap()
                .count_flows(Duration::from_millis(1500))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let a_if = pair.a_if.clone();
        pair.a
            .run(move || {
                let frames =
                    vec![PacketSpec::udp("192.0.2.77", "198.51.100.10", 123, 4444).build()];
                send_paced(
                    &PacketSocket::open(&a_if).unwrap(),
                    &frames,
                    count,
                    rate,
                    Duration::from_secs(5),
                )
                .unwrap()
            })
            .join()
            .unwrap();
        receiver.join().unwrap()
    }

    pub fn arrived(c: &BTreeMap<FlowKey, FlowCount>) -> u64 {
        c.iter()
            .filter(|(k, _)| k.sport == 123)
            .map(|(_, v)| v.packets)
            .sum()
    }
    /// GET `path` from `addr` inside `ns` (HTTP/1.1, connection closed after the answer):
    /// the status code and the body, or None if nothing answers.
    pub fn http_get(ns: &Netns, addr: &'static str, path: String) -> Option<(u16, String)> {
        ns.run(move || {
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut raw = String::new();
            s.read_to_string(&mut raw).ok()?;
            let (head, body) = raw.split_once("\r\n\r\n")?;
            let code = head.split_whitespace().nth(1)?.parse().ok()?;
            // Prometheus answers queries with a content length; chunked bodies are not expected.
            Some((code, body.to_string()))
        })
        .join()
        .ok()
        .flatten()
    }
}
