//! Signal-channel figures (a benchmark: it prints, it asserts nothing about time), measured on
//! the `dots-agent server` binary itself, so that the server is exactly what the composition
//! root assembles: the XDP filter attached to a veth pair in a network namespace this bench
//! creates (pins in a bpffs directory of its own), the data channel on, and client-a holding
//! an activate-when-mitigating ACL that rides on each of its mitigations.
//!
//! - time to mitigate: from sending a mitigation request over DTLS to its 2.01, which the
//!   server sends after the rules are written to the XDP maps (p50 / p99 over 1,000 requests);
//! - mitigation requests per second over one DTLS session, one at a time;
//! - PUT latency over one TLS session while the client's mitigations grow to 4,000 (p50 / p99
//!   per thousand held; goal: p99 < 5 ms at 3,000-4,000 held);
//! - restart: the server killed (SIGKILL) with 4,000 stored mitigations, started again: time
//!   until it answers a request, and until a GET returns all of them (goal: < 5 s);
//! - server memory per idle DTLS session with 1,000 and 10,000 sessions, each sending a
//!   heartbeat: the process's RSS before and after, divided by N (control plane only).
//!
//! `-- --memory` runs only the memory phase; `DOTS_MEMORY_SESSIONS=N,M` sets its session counts
//! (default 1000,10000); `DOTS_MEMORY_WRAP=heaptrack` runs its server under heaptrack.
//!
//! Each phase has a time budget; a server too slow to finish it is reported with what it
//! reached. Run: `sudo scripts/bench.sh` (or `cargo bench -p dots-agent --bench signal_cost`
//! as root). Addresses: 127.0.0.1 in the bench's namespace, and 127.0.0.1 on the host for the
//! memory figures.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};

/// Mitigations the client ends up holding (the XDP datapath holds 4,096).
const HELD: u32 = 4000;
/// Of which created over DTLS for the time-to-mitigate figures.
const DTLS_REQUESTS: u32 = 1000;
const SIGNAL_PORT: u16 = 4646;
const DATA_PORT: u16 = 4443;
/// Per phase: a server slower than this is reported with what it reached.
const BUDGET: Duration = Duration::from_secs(150);

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bench's network namespace with a veth pair for the XDP filter; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("dots-bench-signal-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
        ]);
        ns.ip(&["link", "set", "bench0", "up"]);
        ns.ip(&["link", "set", "bench1", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    fn file(&self) -> std::fs::File {
        std::fs::File::open(format!("/run/netns/{}", self.name)).expect("the namespace's file")
    }

    /// Runs `f` (async) on a thread inside the namespace (network only), on a runtime of
    /// its own.
    fn block_on<T: Send + 'static, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        let file = self.file();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .expect("the bench thread")
    }

    /// Starts a command inside the namespace (setns between fork and exec: `ip netns exec`
    /// would remount /sys and hide bpffs).
    fn spawn(&self, cmd: &mut Command) -> Child {
        let fd = self.file();
        // SAFETY: only async-signal-safe calls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("starting a process in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn client(dir: &Path, addr: &str, transport: TransportChoice) -> ClientConfig {
    ClientConfig {
        server: addr.into(),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client-a.pem"),
            key: dir.join("client-a.key"),
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 / p99 / max` of unsorted samples, in ms.
fn summary(samples: &[Duration]) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&s, 0.5)),
        ms(percentile(&s, 0.99)),
        ms(s.last().copied().unwrap_or_default())
    )
}

fn target(i: u32) -> ipnet::IpNet {
    format!("198.18.{}.{}/32", i >> 8, i & 255).parse().unwrap()
}

/// PUT mitigate/cuid/mid=i+1 for target(i); the time to its response.
async fn put(s: &mut Session, i: u32) -> Result<Duration, String> {
    let body =
        message::encode_mitigation_request(&Scope::new(vec![target(i)], Lifetime::Seconds(3600)));
    let path = vec![
        "mitigate".into(),
        format!("cuid={}", s.cuid()),
        format!("mid={}", i + 1),
    ];
    let t0 = Instant::now();
    let r = s
        .request(RequestType::Put, &path, Some(body), false)
        .await
        .map_err(|e| format!("request {i}: {e:#}"))?;
    let took = t0.elapsed();
    match code_text(&r).as_str() {
        "2.01" | "2.04" => Ok(took),
        other => Err(format!(
            "request {i}: {other} {}",
            String::from_utf8_lossy(&r.payload)
        )),
    }
}

/// How many mitigations a GET of all of the client's returns (over TLS).
async fn count_held(dir: &Path) -> Result<usize, String> {
    let mut s = Session::connect(&client(
        dir,
        &format!("127.0.0.1:{SIGNAL_PORT}"),
        TransportChoice::Tls,
    ))
    .await
    .map_err(|e| format!("{e:#}"))?;
    let path = vec!["mitigate".into(), format!("cuid={}", s.cuid())];
    let r = s
        .request(RequestType::Get, &path, None, false)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if code_text(&r) != "2.05" {
        return Err(format!("GET: {}", code_text(&r)));
    }
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse_response(&r.payload).map_err(|e| e.to_string())?,
    );
    Ok(v["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        .as_array()
        .map_or(0, Vec::len))
}

struct Server {
    ns: Netns,
    dir: PathBuf,
    pins: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn config(dir: &Path, pins: &Path) -> PathBuf {
        let path = dir.join("server.toml");
        std::fs::write(
            &path,
            format!(
                "[signal]\nlisten = [\"127.0.0.1:{SIGNAL_PORT}\"]\n[data]\nlisten = [\"127.0.0.1:{DATA_PORT}\"]\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                 [store]\ndir = \"state\"\n\
                 [datapath]\ninterfaces = [\"bench0\"]\nxdp_mode = \"auto\"\npin_root = \"{}\"\n\
                 [[client]]\nname = \"client-a\"\nprefixes = [\"198.18.0.0/15\"]\n",
                pins.display()
            ),
        )
        .unwrap();
        path
    }

    /// Starts the server; returns the time until its signal channel answers a request (a
    /// heartbeat over TLS): bound sockets alone do not count.
    fn start(&mut self) -> Option<Duration> {
        let config = self.dir.join("server.toml");
        let started = Instant::now();
        self.child = Some(
            self.ns.spawn(
                Command::new(env!("CARGO_BIN_EXE_dots-agent"))
                    .args(["server", "--config", config.to_str().unwrap()])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            ),
        );
        let dir = self.dir.clone();
        let answering = self.ns.block_on(move || async move {
            let cfg = client(
                &dir,
                &format!("127.0.0.1:{SIGNAL_PORT}"),
                TransportChoice::Tls,
            );
            while started.elapsed() < BUDGET {
                let attempt = async {
                    let mut s = Session::connect(&cfg).await?;
                    s.heartbeat().await
                };
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    if code_text(&r) == "2.04" {
                        return Some(started.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        });
        if answering.is_none() {
            eprintln!("the server did not answer within {BUDGET:?}");
        }
        answering
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Registers client-a on the data channel with an activate-when-mitigating ACL of two
/// entries (both inside its prefixes), as an operator's customer would.
async fn data_channel_acl(dir: PathBuf) {
    let cfg = client(&dir, "127.0.0.1:0", TransportChoice::Tls);
    let cuid = dots_agent::data::client::cuid_of(&cfg).unwrap();
    let server = format!("127.0.0.1:{DATA_PORT}");
    let d = "/restconf/data/ietf-dots-data-channel:dots-data";
    let reg = format!("{{\"ietf-dots-data-channel:dots-client\": [{{\"cuid\": \"{cuid}\"}}]}}");
    let r = dots_agent::data::client::request(&cfg, &server, "POST", d, Some(reg.as_bytes()))
        .await
        .expect("registering on the data channel");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let acl = r#"{"ietf-dots-data-channel:acls": {"acl": [{"name": "bench", "type": "ipv4-acl-type",
        "activation-type": "activate-when-mitigating", "aces": {"ace": [
        {"name": "udp-9999", "matches": {"ipv4": {"protocol": 17, "destination-ipv4-network": "198.18.0.0/15"},
          "udp": {"destination-port-range-or-operator": {"operator": "eq", "port": 9999}}},
          "actions": {"forwarding": "drop"}},
        {"name": "from-test-net", "matches": {"ipv4": {"source-ipv4-network": "192.0.2.0/24",
          "destination-ipv4-network": "198.18.0.0/15"}}, "actions": {"forwarding": "drop"}}]}}]}}"#;
    let r = dots_agent::data::client::request(
        &cfg,
        &server,
        "POST",
        &format!("{d}/dots-client={cuid}"),
        Some(acl.as_bytes()),
    )
    .await
    .expect("an ACL over the data channel");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// 1,000 PUTs over one DTLS session: time to mitigate and requests per second.
async fn dtls_phase(dir: PathBuf) -> (Vec<Duration>, Duration, Option<String>) {
    let addr = format!("127.0.0.1:{SIGNAL_PORT}");
    let mut s = Session::connect(&client(&dir, &addr, TransportChoice::Dtls))
        .await
        .expect("DTLS session");
    let mut times = Vec::new();
    let all = Instant::now();
    for i in 0..DTLS_REQUESTS {
        if all.elapsed() > BUDGET {
            return (times, all.elapsed(), Some("time budget spent".into()));
        }
        match put(&mut s, i).await {
            Ok(t) => times.push(t),
            Err(e) => return (times, all.elapsed(), Some(e)),
        }
    }
    (times, all.elapsed(), None)
}

/// PUTs over one TLS session until the client holds HELD; (held before the PUT, its time).
async fn tls_phase(dir: PathBuf, from: u32) -> (Vec<(u32, Duration)>, Option<String>) {
    let addr = format!("127.0.0.1:{SIGNAL_PORT}");
    let mut s = Session::connect(&client(&dir, &addr, TransportChoice::Tls))
        .await
        .expect("TLS session");
    let mut times = Vec::new();
    let started = Instant::now();
    for i in from..HELD {
        if started.elapsed() > BUDGET {
            return (times, Some("time budget spent".into()));
        }
        match put(&mut s, i).await {
            Ok(t) => times.push((i, t)),
            Err(e) => return (times, Some(e)),
        }
    }
    (times, None)
}

fn xdp_phases(dir: &Path) {
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/dots-bench-signal-{}",
        std::process::id()
    ));
    Server::config(dir, &pins);
    let mut server = Server {
        ns: Netns::new(),
        dir: dir.to_path_buf(),
        pins,
        child: None,
    };
    if server.start().is_none() {
        return;
    }
    server.ns.block_on({
        let dir = dir.to_path_buf();
        move || data_channel_acl(dir)
    });
    println!("\nSignal channel of the dots-agent server binary: XDP attached on a veth pair, data channel on, an activate-when-mitigating ACL of 2 entries");
    let (times, total, stopped) = server.ns.block_on({
        let dir = dir.to_path_buf();
        move || dtls_phase(dir)
    });
    println!(
        "  time to mitigate over DTLS on loopback, {} requests (maps written before each 2.01): {} (goal: p99 < 5 ms)",
        times.len(),
        summary(&times)
    );
    println!(
        "  mitigation requests per second, one DTLS session, one at a time: {:.0}",
        times.len() as f64 / total.as_secs_f64()
    );
    if let Some(why) = stopped {
        println!("  DTLS phase stopped after {} requests: {why}", times.len());
    }
    let from = times.len() as u32;
    println!(
        "  the store's disk, one commit (synced): {}",
        disk_commit_latency(dir)
    );
    let (puts, stopped) = server.ns.block_on({
        let dir = dir.to_path_buf();
        move || tls_phase(dir, from)
    });
    let held = from + puts.len() as u32;
    println!(
        "  PUT over one TLS session as the client's mitigations grow ({held} held at the end):"
    );
    for k in 0..HELD.div_ceil(1000) {
        let slice: Vec<Duration> = puts
            .iter()
            .filter(|(i, _)| *i / 1000 == k)
            .map(|(_, t)| *t)
            .collect();
        if !slice.is_empty() {
            println!(
                "    {:>5}-{:<5} held: {:>4} PUTs, {}{}",
                k * 1000,
                (k + 1) * 1000,
                slice.len(),
                summary(&slice),
                if k == 3 { " (goal: p99 < 5 ms)" } else { "" }
            );
        }
    }
    if let Some(why) = stopped {
        println!("  TLS phase stopped at {held} held: {why}");
    }
    println!(
        "  the store's disk, one commit (synced): {}",
        disk_commit_latency(dir)
    );
    // Restart: kill -9, start again, wait until it listens and until all are back.
    server.kill();
    let Some(listening) = server.start() else {
        println!(
            "  restart (kill -9) with {held} stored mitigations: not listening after {BUDGET:?}"
        );
        return;
    };
    let started = Instant::now();
    let restored = server.ns.block_on({
        let dir = dir.to_path_buf();
        move || async move {
            loop {
                match count_held(&dir).await {
                    Ok(n) if n as u32 >= held => return Ok(n),
                    Ok(n) if started.elapsed() > BUDGET => {
                        return Err(format!("{n} after {BUDGET:?}"))
                    }
                    Err(e) if started.elapsed() > BUDGET => return Err(e),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    });
    match restored {
        Ok(n) => println!(
            "  restart (kill -9) with {held} stored mitigations: answering after {:.2} s, all {n} in a GET after {:.2} s (goal: < 5 s)",
            listening.as_secs_f64(),
            (listening + started.elapsed()).as_secs_f64()
        ),
        Err(e) => println!(
            "  restart (kill -9) with {held} stored mitigations: answering after {:.2} s; not all restored: {e}",
            listening.as_secs_f64()
        ),
    }
}

/// What a commit costs on the store's disk right now (the journal syncs at each commit, so
/// every accepted change pays it; on a shared machine it moves with the neighbours' I/O).
fn disk_commit_latency(dir: &Path) -> String {
    use dots_agent::engine::journal::{Change, Journal};
    let Ok(mut store) = dots_agent::store::Store::open(&dir.join("disk-probe")) else {
        return "(could not open a store)".into();
    };
    let mut times = Vec::new();
    let round = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for i in 0..200u32 {
        // A new document each time: a commit that changes nothing might not write.
        let change = Change::Mitigation {
            cuid: "probe".into(),
            mid: i,
            doc: Some(format!("{round} {}", "x".repeat(300))),
        };
        let t0 = Instant::now();
        if store.commit(&[change]).is_err() {
            return "(a commit failed)".into();
        }
        times.push(t0.elapsed());
    }
    summary(&times)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain setrlimit call with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

async fn memory_per_session(dir: &Path, sessions: usize) {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let config = dir.join(format!("server-{sessions}.toml"));
    std::fs::write(
        &config,
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{port}\"]\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state-{sessions}\"\n[[client]]\nname = \"client-a\"\nprefixes = [\"198.18.0.0/15\"]\n"
        ),
    )
    .unwrap();
    // DOTS_MEMORY_WRAP=heaptrack: where the memory goes (the RSS printed is then the wrapper's).
    let wrapped = std::env::var("DOTS_MEMORY_WRAP").is_ok();
    let mut server = match std::env::var("DOTS_MEMORY_WRAP") {
        Ok(w) => {
            let mut c = Command::new(w);
            c.arg(env!("CARGO_BIN_EXE_dots-agent"));
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_dots-agent")),
    };
    let mut server = server
        .args(["server", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dots-agent server");
    let addr = format!("127.0.0.1:{port}");
    // A wrapped server takes seconds to start.
    tokio::time::sleep(Duration::from_millis(if wrapped { 8000 } else { 500 })).await;
    let before = rss_kib(server.id());
    let started = Instant::now();
    let mut open = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        match Session::connect(&client(dir, &addr, TransportChoice::Dtls)).await {
            Ok(mut s) => {
                if s.heartbeat().await.is_ok() {
                    open.push(s);
                }
            }
            Err(e) => {
                eprintln!("session {}: {e:#}", open.len());
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(server.id());
    let per = (after.saturating_sub(before)) as f64 / open.len().max(1) as f64;
    println!(
        "  {} idle DTLS sessions (each sent a heartbeat), opened in {:.1} s: server RSS {} -> {} KiB, {:.1} KiB per session (goal: < 64 KiB)",
        open.len(),
        started.elapsed().as_secs_f64(),
        before,
        after,
        per
    );
    drop(open);
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("signal_cost: run as root (namespaces and XDP need it)");
        std::process::exit(1);
    }
    raise_fd_limit(65_536);
    let dir = tempfile::tempdir().unwrap();
    dots_agent::pki::init(
        dir.path(),
        "dots.example",
        &["127.0.0.1".parse().unwrap()],
        &["client-a".into()],
    )
    .unwrap();
    // `--memory`: only the memory figures (they need no namespace, and take a minute).
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--memory") {
        xdp_phases(dir.path());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("\nServer memory per idle DTLS session (separate dots-agent server process, control plane only)");
        let counts: Vec<usize> = std::env::var("DOTS_MEMORY_SESSIONS")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000, 10_000]);
        for n in counts {
            memory_per_session(dir.path(), n).await;
        }
    });
}
