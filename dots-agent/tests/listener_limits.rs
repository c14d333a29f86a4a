//! Every TCP listener is bounded (issue 13, item 5): the `dots-agent server` binary, run
//! with 256 descriptors (soft = hard, so raising gains nothing), shares them so that a
//! flood of slow, half-sent connections on /metrics and on the data channel cannot take
//! the signal channel's, and a flood on the signal channel's TLS port leaves the data
//! channel and /metrics answering. Counts are bounded, nothing is timed: each check waits
//! for its answer up to a limit. Also read from the binary's /metrics: the DTLS session
//! gauge counts the sessions that exist (issue 14, item 16).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::server_process::ServerProcess;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};

const LIMIT: u64 = 256;
/// Connections held open per flood: more than the server's whole descriptor limit.
const FLOOD: usize = 300;

fn free_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = s.local_addr().unwrap().port();
    // The UDP side of the signal port must be free too.
    std::net::UdpSocket::bind(("127.0.0.1", p)).map_or_else(|_| free_port(), |_| p)
}

fn start(dir: &Path, signal: u16, data: u16, metrics: u16) -> ServerProcess {
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{signal}\"]\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state\"\n[data]\nlisten = [\"127.0.0.1:{data}\"]\n[metrics]\nlisten = [\"127.0.0.1:{metrics}\"]\n\
             [[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dots-agent"));
    cmd.args([
        "server",
        "--config",
        dir.join("server.toml").to_str().unwrap(),
    ])
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stdout(Stdio::null());
    // SAFETY: setrlimit between fork and exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ServerProcess::spawn(&mut cmd)
}

fn client(dir: &Path, port: u16, transport: TransportChoice) -> ClientConfig {
    ClientConfig {
        server: format!("127.0.0.1:{port}"),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client-a.pem"),
            key: dir.join("client-a.key"),
        },
    }
}

/// A signal-channel GET over `transport` gets an answer (up to 3 attempts of 10 s).
async fn signal_answers(dir: &Path, port: u16, transport: TransportChoice) -> bool {
    for _ in 0..3 {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(10),
            Session::connect(&client(dir, port, transport)),
        )
        .await
        {
            let path = vec!["mitigate".to_string(), format!("cuid={}", s.cuid())];
            if let Ok(r) = s
                .request(coap_lite::RequestType::Get, &path, None, false)
                .await
            {
                return code_text(&r).starts_with('2') || code_text(&r) == "4.04";
            }
        }
    }
    false
}

/// GET /metrics answers 200 (up to 3 attempts, 10 s each).
fn metrics_answer(port: u16) -> bool {
    (0..3).any(|_| {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
    })
}

/// The body of GET /metrics, if it answers 200 within 10 s.
fn metrics_text(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// The value of the series named exactly `series` (name and labels) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The data channel answers curl (a real peer) with client-a's certificate.
fn data_answers(dir: &Path, port: u16) -> bool {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client-a.pem"))
        .arg("--key")
        .arg(dir.join("client-a.key"))
        .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
        .arg(format!("https://dots.example:{port}/.well-known/host-meta"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout) == "200"
}

/// `n` connections to `port`, each having sent `first` (possibly nothing) and then
/// stalling.
fn slow_connections(port: u16, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
            let _ = s.write_all(first);
            Some(s)
        })
        .collect()
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_on_one_listener_do_not_starve_the_others() {
    // This test holds a thousand sockets itself.
    dots_agent::server::limits::raise_nofile().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let (signal, data, metrics) = (free_port(), free_port(), free_port());
    let server = start(d, signal, data, metrics);
    let pid = server.child.id();
    let mut up = false;
    for _ in 0..50 {
        if metrics_answer(metrics) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = || server.log();
    assert!(up, "the server starts:\n{}", log());
    assert!(
        log().contains(&format!("open files limit {LIMIT}")),
        "the limit is logged:\n{}",
        log()
    );
    assert!(log().contains("connections at once per address: signal channel TLS "));

    // Half-sent requests on /metrics and silent connections on the data channel, more than
    // the server has descriptors.
    let held_metrics = slow_connections(metrics, FLOOD, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    let held_data = slow_connections(data, FLOOD, b"\x16\x03\x01");
    // The kernel may refuse a few connects once the accept queue is full; what is held is
    // still more than all of the server's descriptors.
    let held = held_metrics.len() + held_data.len();
    assert!(held > LIMIT as usize, "only {held} slow connections held");
    assert!(
        signal_answers(d, signal, TransportChoice::Tls).await,
        "signal channel over TLS during the flood:\n{}",
        log()
    );
    assert!(signal_answers(d, signal, TransportChoice::Dtls).await);
    let fds = descriptors(pid);
    assert!(fds < LIMIT as usize, "{fds} descriptors open");
    println!(
        "during {held} slow /metrics and data-channel connections: {fds} descriptors in the server"
    );
    drop(held_metrics);
    drop(held_data);

    // Silent connections on the signal channel's TLS port: /metrics and the data channel
    // still answer.
    let held_signal = slow_connections(signal, FLOOD, b"");
    assert!(
        held_signal.len() > LIMIT as usize / 2,
        "only {} slow connections held",
        held_signal.len()
    );
    let (m, dd) = (metrics_answer(metrics), data_answers(d, data));
    assert!(
        m && dd,
        "metrics {m}, data channel {dd} during the signal flood:\n{}",
        log()
    );
    assert!(signal_answers(d, signal, TransportChoice::Dtls).await);
    drop(held_signal);

    // After the floods, everything answers again, TLS signal included.
    assert!(signal_answers(d, signal, TransportChoice::Tls).await);
    assert!(metrics_answer(metrics));
}

/// Issue 14 item 16: `dots_signal_sessions{transport="dtls"}` counts sessions that exist.
/// One-shot DTLS clients (connect, ask, exit) are counted while they are there and not
/// after they leave; the gauge is read from the binary's /metrics.
#[tokio::test]
async fn one_shot_dtls_clients_leave_the_session_gauge_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let (signal, data, metrics) = (free_port(), free_port(), free_port());
    let server = start(d, signal, data, metrics);
    let dtls = "dots_signal_sessions{transport=\"dtls\"}";
    let gauge = || metrics_text(metrics).and_then(|t| sample(&t, dtls));
    let mut first = None;
    for _ in 0..50 {
        first = gauge();
        if first.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(first, Some(0.0), "the series exists at 0 from the start");

    let cfg = client(d, signal, TransportChoice::Dtls);
    let mut held = Session::connect(&cfg).await.unwrap();
    let path = vec!["mitigate".to_string(), format!("cuid={}", held.cuid())];
    let r = held
        .request(coap_lite::RequestType::Get, &path, None, false)
        .await;
    assert!(r.is_ok());
    for _ in 0..5 {
        assert!(signal_answers(d, signal, TransportChoice::Dtls).await);
    }
    // The five one-shot clients have gone; the held one is still there (bounded polling).
    let mut seen = None;
    for _ in 0..100 {
        seen = gauge();
        if seen == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, Some(1.0), "one session exists:\n{}", server.log());
    drop(held);
    for _ in 0..100 {
        seen = gauge();
        if seen == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, Some(0.0), "no session exists");
}
