//! Signal-channel figures (a benchmark: it prints, it asserts nothing about time):
//! - time to mitigate: from sending a mitigation request over DTLS to its 2.01, which the
//!   server sends after the rules are written to the XDP maps (p50 / p99 over N requests);
//! - mitigation requests per second over one DTLS session;
//! - server memory per idle DTLS session with 1,000 and 10,000 sessions, each sending a
//!   heartbeat: the `dots-agent server` process's RSS before and after, divided by N.
//!
//! Run: `sudo scripts/bench.sh` (or `cargo bench -p dots-agent --bench signal_cost` as root).
//! Everything stays on 127.0.0.1.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::datapath::{LoadOptions, Mitigator, XdpDatapath};
use dots_agent::server::{config::Tls, dtls_context, serve_dtls, SharedEngine};
use dots_agent::signal::engine::{ClientPolicy, Engine};
use dots_agent::signal::message::{self, Lifetime, Scope};
use tokio::sync::Mutex;

const REQUESTS: u32 = 1000;

fn client(dir: &Path, addr: &str) -> ClientConfig {
    ClientConfig {
        server: addr.into(),
        transport: TransportChoice::Dtls,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client-a.pem"),
            key: dir.join("client-a.key"),
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn time_to_mitigate(dir: &Path) {
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/dots-bench-signal-{}",
        std::process::id()
    ));
    let mut o = LoadOptions::new(&root);
    o.max_entries.push(("SRC_RATE", 65_536));
    let dp = XdpDatapath::load(&o).expect("loading the XDP datapath (root?)");
    let policy = ClientPolicy {
        name: "client-a".into(),
        prefixes: vec!["198.18.0.0/15".parse().unwrap()],
        countermeasures: dots_agent::server::config::default_countermeasures(),
        acl: Vec::new(),
        allow_indefinite: false,
        max_lifetime: 86_400,
    };
    let mitigator: Box<dyn Mitigator> = Box::new(dp);
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(mitigator, vec![policy])));
    let tls = Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap().to_string();
    tokio::spawn(serve_dtls(udp, dtls_context(&tls).unwrap(), engine.clone()));

    let mut s = Session::connect(&client(dir, &addr))
        .await
        .expect("DTLS session");
    let mut times = Vec::with_capacity(REQUESTS as usize);
    let all = Instant::now();
    for i in 0..REQUESTS {
        let target = format!("198.18.{}.{}/32", i >> 8, i & 255).parse().unwrap();
        let body =
            message::encode_mitigation_request(&Scope::new(vec![target], Lifetime::Seconds(600)));
        let path = vec![
            "mitigate".into(),
            format!("cuid={}", s.cuid()),
            format!("mid={}", i + 1),
        ];
        let t0 = Instant::now();
        let r = s
            .request(RequestType::Put, &path, Some(body), false)
            .await
            .expect("request");
        times.push(t0.elapsed());
        assert_eq!(code_text(&r), "2.01", "request {i}");
    }
    let total = all.elapsed();
    let installed = engine.lock().await.mitigator().installed().len();
    times.sort();
    println!(
        "\nSignal channel over DTLS on loopback, XDP datapath (maps written before each 2.01)"
    );
    println!("  time to mitigate over {REQUESTS} requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal: p99 < 5 ms)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3);
    println!("  mitigation requests per second, one session, one at a time: {:.0} ({installed} mitigations live)",
        REQUESTS as f64 / total.as_secs_f64());
    drop(engine);
    let _ = XdpDatapath::purge(&root);
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
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_dots-agent"))
        .args(["server", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting dots-agent server");
    let addr = format!("127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.id());
    let started = Instant::now();
    let mut open = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        match Session::connect(&client(dir, &addr)).await {
            Ok(mut s) => {
                let r = s.heartbeat().await;
                if r.is_ok() {
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
        eprintln!("signal_cost: run as root (the XDP datapath needs it)");
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        time_to_mitigate(dir.path()).await;
        println!("\nServer memory per idle DTLS session (separate dots-agent server process, control plane only)");
        for n in [1_000, 10_000] {
            memory_per_session(dir.path(), n).await;
        }
    });
}
