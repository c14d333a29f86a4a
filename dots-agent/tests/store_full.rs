//! A store that cannot be written (a small tmpfs the test mounts, filled up): nothing is
//! acknowledged that is not durable. The signal channel answers 5.03 and the data channel
//! 503, the datapath keeps what it had, reads are still served, the failures are counted;
//! after a restart exactly the acknowledged mitigations come back.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::control::ControlHandle;
use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::server::ServerConfig;
use dots_agent::signal::message::{self, Lifetime, Scope};

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// Fills the file system at `dir` until it refuses another byte (bounded by its size).
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = [0u8; 4096];
    for _ in 0..100_000 {
        if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
            return;
        }
    }
    panic!("the tmpfs never filled up");
}

async fn installed(control: &ControlHandle) -> usize {
    control
        .run(|c| c.engine.mitigator().installed().len())
        .await
        .unwrap()
}

fn curl_post(dir: &Path, port: u16, path: &str, body: &str) -> u16 {
    let file = dir.join("curl-body.json");
    std::fs::write(&file, body).unwrap();
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client-a.pem"))
        .arg("--key")
        .arg(dir.join("client-a.key"))
        .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
        .args([
            "-H",
            "Content-Type: application/yang-data+json",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("https://dots.example:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_that_the_store_could_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let tmpfs = Tmpfs::mount(&d.join("small"), "512k");
    std::fs::write(
        d.join("server.toml"),
        "[signal]\nlisten = [\"127.0.0.1:0\"]\n[data]\nlisten = [\"127.0.0.1:0\"]\n\
         [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [store]\ndir = \"small/state\"\n\
         [[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\ncountermeasures = {}\n",
    )
    .unwrap();
    let config = ServerConfig::load(&d.join("server.toml")).unwrap();
    let running = dots_agent::app::start(&config, Box::new(MemoryMitigator::new()))
        .await
        .unwrap();
    let client = ClientConfig {
        server: running.signal[0].to_string(),
        transport: TransportChoice::Dtls,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: d.join("ca.pem"),
            cert: d.join("client-a.pem"),
            key: d.join("client-a.key"),
        },
    };
    let mut s = Session::connect(&client).await.unwrap();
    let path = |s: &Session, mid: u32| {
        vec![
            "mitigate".to_string(),
            format!("cuid={}", s.cuid()),
            format!("mid={mid}"),
        ]
    };
    let put = |mid: u32| {
        let target = format!("2001:db8:6401:{:x}::/64", mid);
        message::encode_mitigation_request(&Scope::new(
            vec![target.parse().unwrap()],
            Lifetime::Seconds(3600),
        ))
    };
    for mid in 1..=5u32 {
        let r = s
            .request(RequestType::Put, &path(&s, mid), Some(put(mid)), false)
            .await
            .unwrap();
        assert_eq!(code_text(&r), "2.01");
    }
    fill(&tmpfs.0);

    // Requests until the store refuses one (each a new row; bounded).
    let mut acknowledged = 5;
    let mut refused = None;
    for mid in 6..=5000u32 {
        let r = s
            .request(RequestType::Put, &path(&s, mid), Some(put(mid)), false)
            .await
            .unwrap();
        match code_text(&r).as_str() {
            "2.01" => acknowledged += 1,
            other => {
                refused = Some((
                    other.to_string(),
                    String::from_utf8_lossy(&r.payload).to_string(),
                ));
                break;
            }
        }
    }
    let (code, diagnostic) = refused.expect("the full store refused a request within 5000");
    assert_eq!(code, "5.03", "{diagnostic}");
    assert!(diagnostic.contains("could not store"), "{diagnostic}");
    assert_eq!(
        installed(&running.control).await,
        acknowledged,
        "the refused request left the datapath as it was"
    );
    let failures = running
        .control
        .run(|c| c.engine.commit_failures())
        .await
        .unwrap();
    assert!(failures >= 1);
    // Reads are still served.
    let r = s
        .request(RequestType::Get, &path(&s, 1), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.05");
    // The data channel: a registration that cannot be stored is a 503, not a 201.
    let register = format!(
        "{{\"ietf-dots-data-channel:dots-client\":[{{\"cuid\":\"{}\"}}]}}",
        s.cuid()
    );
    let data_port = running.data[0].port();
    let status = tokio::task::spawn_blocking({
        let d = d.to_path_buf();
        move || {
            curl_post(
                &d,
                data_port,
                "/restconf/data/ietf-dots-data-channel:dots-data",
                &register,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 503);
    drop(s);
    drop(running);

    // Room again, and a restart: exactly what was acknowledged comes back.
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    tmpfs.resize("8m");
    let running = dots_agent::app::start(&config, Box::new(MemoryMitigator::new()))
        .await
        .unwrap();
    assert_eq!(installed(&running.control).await, acknowledged);
    let views = running
        .control
        .run(|c| c.engine.views(dots_agent::clock::unix_now()).len())
        .await
        .unwrap();
    assert_eq!(views, acknowledged, "acknowledged == restored");
    drop(running);
}
