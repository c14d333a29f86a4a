//! A spoofed ClientHello flood against the `dots-agent server` binary (a benchmark: it
//! prints figures, it asserts nothing). Each flood sends N real ClientHellos without a
//! cookie from random spoofed sources (a raw socket writing 127.x.y.z, random ports, to the
//! server on 127.0.0.1: loopback only), as fast as it can up to N in `--seconds`. Meanwhile
//! a real client (client-a's certificate) makes one DTLS handshake after another and asks
//! a GET; after each flood the server is left 5 s to settle. Printed per flood: hellos
//! sent and how fast, the server's RSS before / highest during / after, its threads and
//! descriptors, and the real client's handshakes (done, failed, median and slowest time).
//!
//! Run as root: `cargo bench -p dots-agent --bench dtls_flood -- [--hellos 20000]
//! [--seconds 2] [--floods 4] [--agent PATH]` (`--agent` measures another build of the
//! server, e.g. main's, the same way).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dots_agent::client::{ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::dtls_io::Datagrams;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream};

struct Options {
    hellos: u32,
    seconds: f64,
    floods: u32,
    agent: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        hellos: 20_000,
        seconds: 2.0,
        floods: 4,
        agent: PathBuf::from(env!("CARGO_BIN_EXE_dots-agent")),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--hellos" => o.hellos = value.parse().expect("--hellos N"),
            "--seconds" => o.seconds = value.parse().expect("--seconds S"),
            "--floods" => o.floods = value.parse().expect("--floods N"),
            "--agent" => o.agent = PathBuf::from(value),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    status_field(pid, "VmRSS:") as f64 / 1024.0
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A real ClientHello without a cookie, as any DTLS client sends first.
fn client_hello() -> Vec<u8> {
    let ctx = SslContext::builder(SslMethod::dtls_client())
        .unwrap()
        .build();
    let mut s = SslStream::new(Ssl::new(&ctx).unwrap(), Datagrams::default()).unwrap();
    let _ = s.connect();
    s.get_mut().outbox.remove(0)
}

/// Sends UDP datagrams with forged 127.0.0.0/8 sources through a raw socket.
struct Spoofer {
    fd: std::os::fd::OwnedFd,
    seed: u64,
}

impl Spoofer {
    fn new() -> Spoofer {
        // SAFETY: plain socket(2); the descriptor is owned from here.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Spoofer {
            fd,
            seed: std::process::id() as u64 | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: spread of sources, not secrecy.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// One datagram to 127.0.0.1:`port` from a random 127.a.b.c (a > 0) and port.
    fn send(&mut self, port: u16, payload: &[u8]) {
        let r = self.random();
        let src = [
            127u8,
            1 + (r as u8 % 254),
            (r >> 8) as u8,
            (r >> 16) as u8 | 1,
        ];
        let sport = 1024 + ((r >> 24) as u16 % 60_000);
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&[127, 0, 0, 1]);
        let udp_len = (8 + payload.len()) as u16;
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
        p.extend_from_slice(payload);
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto with a valid buffer and address.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &to as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn client(dir: &Path, port: u16) -> ClientConfig {
    ClientConfig {
        server: format!("127.0.0.1:{port}"),
        transport: TransportChoice::Dtls,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client-a.pem"),
            key: dir.join("client-a.key"),
        },
    }
}

/// Handshakes (each followed by one GET) until `stop`; their times, and failures.
async fn real_client(cfg: ClientConfig, stop: Arc<AtomicBool>) -> (Vec<Duration>, u32) {
    let (mut times, mut failed) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match Session::connect(&cfg).await {
            Ok(mut s) => {
                times.push(t.elapsed());
                let path = vec!["mitigate".to_string(), format!("cuid={}", s.cuid())];
                if s.request(coap_lite::RequestType::Get, &path, None, false)
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (times, failed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dtls_flood: run as root (a raw socket forges the sources)");
        std::process::exit(1);
    }
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    std::fs::write(
        d.join("server.toml"),
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{port}\"]\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state\"\n[[client]]\nname = \"client-a\"\nprefixes = [\"198.18.0.0/15\"]\n"
        ),
    )
    .unwrap();
    let mut server = Command::new(&o.agent)
        .args([
            "server",
            "--config",
            d.join("server.toml").to_str().unwrap(),
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dots-agent server");
    let pid = server.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Up once a real client gets an answer (bounded: 30 tries, 30 s at most).
    let up = rt.block_on(async {
        for _ in 0..30 {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), Session::connect(&client(d, port)))
                    .await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    });
    assert!(up, "the server did not answer within 30 s");
    println!(
        "dtls_flood: {} ({}), {} spoofed ClientHellos per flood within {} s, {} floods",
        o.agent.display(),
        pid,
        o.hellos,
        o.seconds,
        o.floods
    );
    println!(
        "{:>5} {:>9} {:>10} | {:>8} {:>8} {:>8} {:>7} {:>5} | {:>10} {:>6} {:>8} {:>8}",
        "flood",
        "sent",
        "hellos/s",
        "RSS MiB",
        "peak",
        "+5 s",
        "threads",
        "fds",
        "handshakes",
        "failed",
        "p50 ms",
        "max ms"
    );
    let hello = client_hello();
    let mut spoofer = Spoofer::new();
    for flood in 1..=o.floods {
        let before = rss_mib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let real = rt.spawn(real_client(client(d, port), stop.clone()));
        let started = Instant::now();
        let per_hello = Duration::from_secs_f64(o.seconds / o.hellos as f64);
        let mut peak = before;
        for i in 0..o.hellos {
            spoofer.send(port, &hello);
            if i % 1000 == 0 {
                peak = peak.max(rss_mib(pid));
            }
            let due = per_hello * (i + 1);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let sent_in = started.elapsed();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(rss_mib(pid));
        }
        stop.store(true, Ordering::Relaxed);
        let (mut times, failed) = rt.block_on(real).unwrap();
        times.sort();
        let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();
        println!(
            "{:>5} {:>9} {:>10.0} | {:>8.1} {:>8.1} {:>8.1} {:>7} {:>5} | {:>10} {:>6} {:>8.1} {:>8.1}",
            flood,
            o.hellos,
            o.hellos as f64 / sent_in.as_secs_f64(),
            before,
            peak,
            rss_mib(pid),
            status_field(pid, "Threads:"),
            descriptors(pid),
            times.len(),
            failed,
            ms(p50),
            ms(max)
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
