//! The data channel (RFC 8783) over real HTTPS with mutual authentication on loopback:
//! curl (an independent HTTP client, with client certificates) and our own client against
//! the server, bodies from `tests/fixtures/rfc8783` (modelled on the RFC's examples), the
//! signal channel's alias-name join, and a restart from the store. The datapath is the
//! in-memory one; `tests/data_xdp.rs` runs the same ACLs on XDP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::server::{https, ServerConfig};
use dots_agent::signal::message::{self, AclActivation, ActivationType, Lifetime, Scope};
use serde_json::{json, Value};

const D: &str = "/restconf/data/ietf-dots-data-channel:dots-data";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rfc8783")
            .join(name),
    )
    .unwrap()
}

struct Server {
    data_port: u16,
    signal_addr: String,
    running: dots_agent::app::Running,
}

impl Server {
    /// The datapath's rule sets (mitigations and baselines).
    async fn installed(&self) -> Vec<u64> {
        self.running
            .control
            .run(|c| c.engine.mitigator().installed())
            .await
            .unwrap()
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        r#"
[signal]
listen = ["127.0.0.1:0"]
[data]
listen = ["127.0.0.1:0"]
[store]
dir = "state"
[tls]
ca = "ca.pem"
cert = "server.pem"
key = "server.key"
[[client]]
name = "client-a"
prefixes = ["198.51.100.0/24", "2001:db8:6401::/48"]
countermeasures = {}
[[client]]
name = "client-b"
prefixes = ["203.0.113.0/24"]
"#,
    )
    .unwrap();
    path
}

/// The server as the composition root assembles it, on ephemeral loopback ports and an
/// in-memory datapath.
async fn start(dir: &Path) -> Server {
    let config = ServerConfig::load(&dir.join("server.toml")).unwrap();
    let running = dots_agent::app::start(&config, Box::new(MemoryMitigator::new()))
        .await
        .unwrap();
    Server {
        data_port: running.data[0].port(),
        signal_addr: running.signal[0].to_string(),
        running,
    }
}

fn client_config(dir: &Path, server: &str, name: &str) -> ClientConfig {
    ClientConfig {
        server: server.into(),
        transport: TransportChoice::Tls,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        },
    }
}

fn cuid_of(dir: &Path, name: &str) -> String {
    let pem = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
    dots_agent::pki::cuid(&openssl::x509::X509::from_pem(&pem).unwrap()).unwrap()
}

/// One curl request: (HTTP status, body parsed as JSON or as text). Status 0 = curl failed
/// (e.g. the TLS handshake was refused).
struct Curl {
    dir: PathBuf,
    port: u16,
}

impl Curl {
    async fn call(
        &self,
        who: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, Value) {
        let dir = self.dir.clone();
        let (port, who, method, path) = (
            self.port,
            who.to_string(),
            method.to_string(),
            path.to_string(),
        );
        let body = body.map(str::to_string);
        let content_type = content_type.to_string();
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new("curl");
            c.args(["-sS", "--max-time", "10", "-X", &method])
                .arg("--cacert")
                .arg(dir.join("ca.pem"))
                .arg("--cert")
                .arg(dir.join(format!("{who}.pem")))
                .arg("--key")
                .arg(dir.join(format!("{who}.key")))
                .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
                .args(["-w", "\n%{http_code}"]);
            if let Some(b) = &body {
                // Through a file: some bodies are larger than an argument may be.
                let file = dir.join("curl-body.json");
                std::fs::write(&file, b).unwrap();
                c.args([
                    "-H",
                    &format!("Content-Type: {content_type}"),
                    "--data-binary",
                ])
                .arg(format!("@{}", file.display()));
            }
            c.arg(format!("https://dots.example:{port}{path}"));
            let out = c.output().expect("running curl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
            let status: u16 = code.trim().parse().unwrap_or(0);
            let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
            (status, v)
        })
        .await
        .unwrap()
    }

    async fn send(&self, who: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call(who, method, path, body, "application/yang-data+json")
            .await
    }
}

fn error_tag(v: &Value) -> &str {
    v["ietf-restconf:errors"]["error"][0]["error-tag"]
        .as_str()
        .unwrap_or("")
}

fn error_message(v: &Value) -> &str {
    v["ietf-restconf:errors"]["error"][0]["error-message"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_and_error_path_over_curl_and_our_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dots_agent::pki::init(
        dir,
        "dots.example",
        &[],
        &["client-a".into(), "client-b".into(), "client-x".into()],
    )
    .unwrap();
    write_config(dir);
    let server = start(dir).await;
    let curl = Curl {
        dir: dir.to_path_buf(),
        port: server.data_port,
    };
    let cuid = cuid_of(dir, "client-a");
    let c = format!("{D}/dots-client={cuid}");
    let register = fixture("register.json").replace("dz6pHjaADkaFTbjr0JGBpw", &cuid);

    // Discovery and capabilities.
    let (s, v) = curl
        .send("client-a", "GET", "/.well-known/host-meta", None)
        .await;
    assert_eq!(s, 200);
    assert!(
        v.as_str()
            .unwrap()
            .contains("rel='restconf' href='/restconf'"),
        "{v}"
    );
    let (s, v) = curl
        .send("client-a", "GET", &format!("{D}/capabilities"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["ietf-dots-data-channel:capabilities"]["ipv6"]["flow-label"],
        false
    );
    assert_eq!(
        v["ietf-dots-data-channel:capabilities"]["tcp"]["flags-bitmask"],
        true
    );

    // Registration: our client registers; curl sees the duplicate and the foreign cases.
    let ours = client_config(dir, "unused:1", "client-a");
    let data_server = format!("127.0.0.1:{}", server.data_port);
    let r = dots_agent::data::client::request(
        &ours,
        &data_server,
        "POST",
        D,
        Some(register.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let (s, v) = curl.send("client-a", "POST", D, Some(&register)).await;
    assert_eq!((s, error_tag(&v)), (409, "data-exists"));
    let (s, v) = curl.send("client-a", "PUT", &c, Some(&register)).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = curl.send("client-b", "POST", D, Some(&register)).await;
    assert_eq!(
        (s, error_tag(&v)),
        (409, "data-exists"),
        "client-b may not register client-a's cuid (a cuid collision, RFC 9132 §4.4.1.3)"
    );
    let (s, v) = curl
        .send("client-x", "GET", &format!("{D}/capabilities"), None)
        .await;
    assert_eq!(
        (s, error_tag(&v)),
        (403, "access-denied"),
        "an unconfigured certificate"
    );
    let b_cuid = cuid_of(dir, "client-b");
    let (s, _) = curl
        .send(
            "client-b",
            "GET",
            &format!("{D}/dots-client={b_cuid}/aliases"),
            None,
        )
        .await;
    assert_eq!(s, 404, "client-b is not registered");

    // Aliases.
    let (s, v) = curl
        .send("client-a", "GET", &format!("{c}/aliases"), None)
        .await;
    assert_eq!(
        (s, v),
        (
            200,
            serde_json::json!({"ietf-dots-data-channel:aliases": {}})
        ),
        "none yet: an empty container"
    );
    let (s, v) = curl
        .send("client-a", "POST", &c, Some(&fixture("aliases.json")))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = curl
        .send("client-a", "POST", &c, Some(&fixture("aliases.json")))
        .await;
    assert_eq!((s, error_tag(&v)), (409, "data-exists"));
    let (s, v) = curl
        .send("client-a", "GET", &format!("{c}/aliases?content=all"), None)
        .await;
    assert_eq!(s, 200);
    let alias = &v["ietf-dots-data-channel:aliases"]["alias"][0];
    assert_eq!(
        (alias["name"].as_str(), alias["pending-lifetime"].as_i64()),
        (Some("https1"), Some(10080))
    );
    assert_eq!(
        alias["target-prefix"],
        json!(["2001:db8:6401::1/128", "2001:db8:6401::2/128"])
    );
    let (s, _) = curl
        .send("client-b", "GET", &format!("{c}/aliases"), None)
        .await;
    assert_eq!(
        s, 409,
        "client-b may not read client-a's aliases (the cuid is a's)"
    );
    let web = r#"{"ietf-dots-data-channel:alias": [{"name": "web", "target-prefix": ["198.51.100.80/28"], "target-fqdn": ["www.example.com"]}]}"#;
    let (s, _) = curl
        .send(
            "client-a",
            "PUT",
            &format!("{c}/aliases/alias=web"),
            Some(web),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = curl
        .send(
            "client-a",
            "PUT",
            &format!("{c}/aliases/alias=web"),
            Some(web),
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = curl
        .send("client-a", "GET", &format!("{c}/aliases/alias=web"), None)
        .await;
    assert_eq!(
        (s, &v["ietf-dots-data-channel:alias"][0]["target-fqdn"][0]),
        (200, &json!("www.example.com"))
    );
    let (s, v) = curl
        .send(
            "client-a",
            "PUT",
            &format!("{c}/aliases/alias=other"),
            Some(web),
        )
        .await;
    assert_eq!(
        (s, error_tag(&v)),
        (400, "invalid-value"),
        "name differs from the URI"
    );
    let foreign =
        r#"{"ietf-dots-data-channel:alias": [{"name": "f", "target-prefix": ["203.0.113.0/24"]}]}"#;
    let (s, v) = curl
        .send(
            "client-a",
            "PUT",
            &format!("{c}/aliases/alias=f"),
            Some(foreign),
        )
        .await;
    assert_eq!((s, error_tag(&v)), (403, "access-denied"));
    let (s, _) = curl
        .send(
            "client-a",
            "DELETE",
            &format!("{c}/aliases/alias=web"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = curl
        .send(
            "client-a",
            "DELETE",
            &format!("{c}/aliases/alias=web"),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // ACLs: the RFC's sample (activate-when-mitigating: nothing live yet).
    let (s, v) = curl
        .send("client-a", "POST", &c, Some(&fixture("acls.json")))
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(server.installed().await.is_empty());
    let (s, v) = curl
        .send("client-a", "POST", &c, Some(&fixture("acls.json")))
        .await;
    assert_eq!((s, error_tag(&v)), (409, "data-exists"));
    // An immediate IPv6 ACL with a rate limit, put first: live at once (the baseline).
    let (s, v) = curl
        .send(
            "client-a",
            "PUT",
            &format!("{c}/acls/acl=test-acl-ipv6-udp?insert=first"),
            Some(&fixture("acl-ipv6-udp.json")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(server.installed().await.len(), 1);
    let (s, v) = curl
        .send("client-a", "GET", &format!("{c}/acls?content=all"), None)
        .await;
    assert_eq!(s, 200);
    let acls = v["ietf-dots-data-channel:acls"]["acl"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        acls.iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["test-acl-ipv6-udp", "sample-ipv4-acl"]
    );
    assert_eq!(
        acls[0]["aces"]["ace"][0]["statistics"]["matched-packets"],
        "0"
    );
    let (s, v) = curl
        .send(
            "client-a",
            "GET",
            &format!("{c}/acls/acl=sample-ipv4-acl?content=nonconfig"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let acl = &v["ietf-dots-data-channel:acls"]["acl"][0];
    assert!(
        acl.get("type").is_none() && acl["pending-lifetime"].as_i64() == Some(10080),
        "{v}"
    );
    // The whole client, and dots-data with only the caller's own client in it.
    let (s, v) = curl.send("client-a", "GET", &c, None).await;
    assert_eq!(s, 200);
    let me = &v["ietf-dots-data-channel:dots-client"][0];
    assert_eq!(
        (
            me["cuid"].as_str(),
            me["acls"]["acl"].as_array().map(Vec::len)
        ),
        (Some(cuid.as_str()), Some(2))
    );
    assert_eq!(me["aliases"]["alias"][0]["name"], "https1");
    let (s, v) = curl.send("client-b", "GET", D, None).await;
    assert_eq!(s, 200);
    assert!(
        v["ietf-dots-data-channel:dots-data"]
            .get("dots-client")
            .is_none(),
        "client-b sees no one: {v}"
    );
    // What the datapath cannot express is refused, by name, and not stored.
    let (s, v) = curl
        .send(
            "client-a",
            "POST",
            &c,
            Some(&fixture("acl-unsupported-flow-label.json")),
        )
        .await;
    assert_eq!((s, error_tag(&v)), (400, "invalid-value"));
    assert!(error_message(&v).contains("flow-label"), "{v}");
    let (s, _) = curl
        .send(
            "client-a",
            "GET",
            &format!("{c}/acls/acl=flow-label-acl"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Destinations outside the client's prefixes.
    let foreign_acl = fixture("acls.json")
        .replace("198.51.100.0/24", "203.0.113.0/24")
        .replace("sample-ipv4-acl", "foreign");
    let (s, v) = curl.send("client-a", "POST", &c, Some(&foreign_acl)).await;
    assert_eq!((s, error_tag(&v)), (403, "access-denied"));
    // Malformed bodies, unknown elements, media types, sizes, paths and methods.
    let (s, v) = curl
        .send(
            "client-a",
            "POST",
            &c,
            Some("{\"ietf-dots-data-channel:acls\": "),
        )
        .await;
    assert_eq!((s, error_tag(&v)), (400, "malformed-message"));
    let (s, v) = curl
        .send(
            "client-a",
            "POST",
            &c,
            Some(&fixture("acls.json").replace("\"type\"", "\"colour\"")),
        )
        .await;
    assert_eq!((s, error_tag(&v)), (400, "unknown-element"));
    let (s, v) = curl
        .call(
            "client-a",
            "POST",
            &c,
            Some(&fixture("acls.json")),
            "text/plain",
        )
        .await;
    assert_eq!(s, 415, "{v}");
    let big = "x".repeat(https::MAX_BODY + 1);
    let (s, v) = curl.send("client-a", "POST", &c, Some(&big)).await;
    assert_eq!((s, error_tag(&v)), (413, "too-big"));
    let (s, _) = curl
        .send("client-a", "GET", &format!("{c}/nothing"), None)
        .await;
    assert_eq!(s, 404);
    let (s, v) = curl
        .send("client-a", "PATCH", &format!("{c}/acls"), None)
        .await;
    assert_eq!((s, error_tag(&v)), (405, "operation-not-supported"));
    let (s, _) = curl
        .send("client-a", "DELETE", &format!("{c}/acls/acl=nope"), None)
        .await;
    assert_eq!(s, 404);

    // The signal channel's alias-name resolves through the aliases, and the client's
    // activate-when-mitigating ACL goes live with the mitigation.
    let mut session = Session::connect(&client_config(dir, &server.signal_addr, "client-a"))
        .await
        .unwrap();
    let mut scope = Scope::new(Vec::new(), Lifetime::Seconds(3600));
    scope.alias_name = vec!["https1".into()];
    let path = vec![
        "mitigate".to_string(),
        format!("cuid={cuid}"),
        "mid=1".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &path,
            Some(message::encode_mitigation_request(&scope)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let installed = server.installed().await;
    assert_eq!(
        installed.len(),
        2,
        "the mitigation and the client's baseline"
    );
    let who = cuid.clone();
    let st = server
        .running
        .control
        .run(move |c| {
            c.engine
                .status(&who, Some(1), dots_agent::clock::unix_now())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        st[0].scope.target_prefix.len(),
        2,
        "the alias's two prefixes"
    );
    let mut unknown = Scope::new(Vec::new(), Lifetime::Seconds(3600));
    unknown.alias_name = vec!["nope".into()];
    let path2 = vec![
        "mitigate".to_string(),
        format!("cuid={cuid}"),
        "mid=2".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &path2,
            Some(message::encode_mitigation_request(&unknown)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.00");
    // RFC 9133: acl-list in a mitigation request switches an ACL's activation type.
    let mut control = Scope::new(
        vec!["198.51.100.0/28".parse().unwrap()],
        Lifetime::Seconds(3600),
    );
    control.acl_list = vec![AclActivation {
        acl_name: "sample-ipv4-acl".into(),
        activation_type: ActivationType::Deactivate,
    }];
    let path3 = vec![
        "mitigate".to_string(),
        format!("cuid={cuid}"),
        "mid=3".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &path3,
            Some(message::encode_mitigation_request(&control)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let (_, v) = curl
        .send(
            "client-a",
            "GET",
            &format!("{c}/acls/acl=sample-ipv4-acl"),
            None,
        )
        .await;
    assert_eq!(
        v["ietf-dots-data-channel:acls"]["acl"][0]["activation-type"],
        "deactivate"
    );
    control.acl_list[0].acl_name = "no-such-acl".into();
    let path4 = vec![
        "mitigate".to_string(),
        format!("cuid={cuid}"),
        "mid=4".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &path4,
            Some(message::encode_mitigation_request(&control)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.00", "an unknown acl-name");
    drop(session);

    // A restart: everything comes back from the store.
    drop(server);
    let server = start(dir).await;
    let curl = Curl {
        dir: dir.to_path_buf(),
        port: server.data_port,
    };
    let (s, v) = curl
        .send("client-a", "GET", &format!("{c}/acls"), None)
        .await;
    assert_eq!(
        (
            s,
            v["ietf-dots-data-channel:acls"]["acl"]
                .as_array()
                .map(Vec::len)
        ),
        (200, Some(2))
    );
    let (s, _) = curl
        .send(
            "client-a",
            "GET",
            &format!("{c}/aliases/alias=https1"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        server.installed().await.len(),
        3,
        "two mitigations and the baseline restored"
    );

    // Unregistering removes aliases and ACLs; the ACL leaves the datapath.
    let (s, _) = curl.send("client-a", "DELETE", &c, None).await;
    assert_eq!(s, 204);
    assert_eq!(server.installed().await.len(), 2, "only the mitigations");
    let r = dots_agent::data::client::request(
        &ours,
        &format!("127.0.0.1:{}", server.data_port),
        "GET",
        &format!("{c}/aliases"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dots_agent::pki::init(dir, "dots.example", &[], &["client-a".into()]).unwrap();
    write_config(dir);
    let other = tmp.path().join("other");
    dots_agent::pki::init(&other, "dots.example", &[], &["client-a".into()]).unwrap();
    let server = start(dir).await;
    // Our CA for the server, the other CA's client certificate.
    std::fs::copy(other.join("client-a.pem"), dir.join("stranger.pem")).unwrap();
    std::fs::copy(other.join("client-a.key"), dir.join("stranger.key")).unwrap();
    let curl = Curl {
        dir: dir.to_path_buf(),
        port: server.data_port,
    };
    let (s, _) = curl
        .send("stranger", "GET", &format!("{D}/capabilities"), None)
        .await;
    assert_eq!(s, 0, "no HTTP status: the TLS handshake failed");
    let (s, _) = curl
        .send("client-a", "GET", &format!("{D}/capabilities"), None)
        .await;
    assert_eq!(s, 200);
}

/// Runs `dots-agent client --config client.toml data --server ... <args>`; returns (exit
/// code, stdout, stderr).
async fn cli(dir: &Path, port: u16, args: &[&str]) -> (i32, String, String) {
    let mut full: Vec<String> = vec![
        "client".into(),
        "--config".into(),
        dir.join("client.toml").display().to_string(),
        "data".into(),
        "--server".into(),
        format!("127.0.0.1:{port}"),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_dots-agent"))
            .args(&full)
            .output()
            .expect("running dots-agent");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dots_agent::pki::init(dir, "dots.example", &[], &["client-a".into()]).unwrap();
    write_config(dir);
    std::fs::write(
        dir.join("client.toml"),
        "server = \"127.0.0.1:1\"\nserver_name = \"dots.example\"\n[tls]\nca = \"ca.pem\"\ncert = \"client-a.pem\"\nkey = \"client-a.key\"\n",
    )
    .unwrap();
    let server = start(dir).await;
    let port = server.data_port;

    let (code, out, err) = cli(dir, port, &["register"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("201 registered"), "{out}");
    let (code, out, _) = cli(dir, port, &["register"]).await;
    assert_eq!((code, out.starts_with("204")), (0, true), "a refresh");

    let aliases = dir.join("aliases.toml");
    std::fs::write(
        &aliases,
        "[[alias]]\nname = \"web\"\ntarget-prefix = [\"198.51.100.80/28\"]\ntarget-protocol = [6]\n\n[[alias.target-port-range]]\nlower-port = 443\n",
    )
    .unwrap();
    let (code, out, err) = cli(dir, port, &["alias", "put", aliases.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(dir, port, &["alias", "list"]).await;
    assert!(
        out.contains("web") && out.contains("198.51.100.80/28") && out.contains("443"),
        "{out}"
    );

    let acls = dir.join("acls.json");
    std::fs::write(&acls, fixture("acls.json")).unwrap();
    let (code, out, err) = cli(dir, port, &["acl", "put", acls.to_str().unwrap()]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "201 acl sample-ipv4-acl created"),
        "{err}"
    );
    let first = dir.join("first.json");
    std::fs::write(&first, fixture("acl-ipv6-udp.json")).unwrap();
    let (code, _, err) = cli(
        dir,
        port,
        &["acl", "put", "--insert", "first", first.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(dir, port, &["acl", "list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("test-acl-ipv6-udp") && lines[2].starts_with("sample-ipv4-acl"),
        "{out}"
    );
    assert!(
        lines[2].contains("rule1")
            && lines[2].contains("drop")
            && lines[2].contains("src=192.0.2.0/24"),
        "{out}"
    );
    let (_, out, _) = cli(dir, port, &["--json", "acl", "get", "sample-ipv4-acl"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["ietf-dots-data-channel:acls"]["acl"][0]["aces"]["ace"][0]["statistics"]
            ["matched-packets"],
        "0"
    );
    let (_, out, _) = cli(dir, port, &["capabilities"]).await;
    assert!(out.contains("ipv6  cannot:  ecn flow-label"), "{out}");

    // Refusals: the RESTCONF error on stderr, exit 3.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, fixture("acl-unsupported-flow-label.json")).unwrap();
    let (code, _, err) = cli(dir, port, &["acl", "put", bad.to_str().unwrap()]).await;
    assert_eq!(code, 3);
    assert!(
        err.contains("400 invalid-value") && err.contains("flow-label"),
        "{err}"
    );
    let (code, _, err) = cli(dir, port, &["acl", "delete", "nope"]).await;
    assert_eq!((code, err.contains("404")), (3, true), "{err}");
    let (code, _, err) = cli(dir, port, &["acl", "put", "/nonexistent.json"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("reading /nonexistent.json"), "{err}");

    let (code, out, _) = cli(dir, port, &["alias", "delete", "web"]).await;
    assert_eq!((code, out.trim()), (0, "204 alias web deleted"));
    let (code, out, _) = cli(dir, port, &["unregister"]).await;
    assert_eq!((code, out.trim().starts_with("204")), (0, true));
}

/// curl offers HTTP/2 (ALPN h2) and gets it; the same request as HTTP/1.1 gets the same
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_spoken_when_the_client_offers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dots_agent::pki::init(dir, "dots.example", &[], &["client-a".into()]).unwrap();
    write_config(dir);
    let server = start(dir).await;
    let port = server.data_port;
    let dir = dir.to_path_buf();
    let versions = tokio::task::spawn_blocking(move || {
        ["--http2", "--http1.1"].map(|v| {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", v, "-o", "/dev/null"])
                .args(["-w", "%{http_version} %{http_code}"])
                .arg("--cacert")
                .arg(dir.join("ca.pem"))
                .arg("--cert")
                .arg(dir.join("client-a.pem"))
                .arg("--key")
                .arg(dir.join("client-a.key"))
                .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
                .arg(format!("https://dots.example:{port}{D}/capabilities"))
                .output()
                .expect("running curl");
            String::from_utf8_lossy(&out.stdout).to_string()
        })
    })
    .await
    .unwrap();
    assert_eq!(versions, ["2 200".to_string(), "1.1 200".to_string()]);
}

/// RFC 9244 telemetry targets over a real DTLS session: a baseline on ports and a
/// protocol is accepted and read back, an alias-name in a baseline and in pre-mitigation
/// telemetry resolves through the client's data-channel aliases, an FQDN is refused with
/// 4.00 naming it, and the baselines survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_targets_over_dtls() {
    use ciborium::value::Value;
    use dots_agent::signal::{cbor, diag};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dots_agent::pki::init(dir, "dots.example", &[], &["client-a".into()]).unwrap();
    write_config(dir);
    let server = start(dir).await;
    let cuid = cuid_of(dir, "client-a");
    let data = client_config(dir, "unused:1", "client-a");
    let data_server = format!("127.0.0.1:{}", server.data_port);
    let register = fixture("register.json").replace("dz6pHjaADkaFTbjr0JGBpw", &cuid);
    let r = dots_agent::data::client::request(
        &data,
        &data_server,
        "POST",
        D,
        Some(register.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let c = format!("{D}/dots-client={cuid}");
    let aliases = fixture("aliases.json");
    let r = dots_agent::data::client::request(
        &data,
        &data_server,
        "POST",
        &c,
        Some(aliases.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    let mut signal = client_config(dir, &server.signal_addr, "client-a");
    signal.transport = TransportChoice::Dtls;
    let mut session = Session::connect(&signal).await.unwrap();
    let texts = |v: &[&str]| Value::Array(v.iter().map(|t| Value::Text((*t).into())).collect());
    let baseline = |target: Vec<(u64, Value)>| {
        let mut b = vec![(163, cbor::uint(1))];
        b.extend(target);
        b.push((
            139,
            Value::Array(vec![cbor::map(vec![
                (134, cbor::uint(1)),
                (143, cbor::uint(1000)),
            ])]),
        ));
        cbor::encode(&cbor::map(vec![(
            203,
            cbor::map(vec![(
                129,
                Value::Array(vec![cbor::map(vec![(
                    174,
                    Value::Array(vec![cbor::map(b)]),
                )])]),
            )]),
        )]))
    };
    let setup = |tsid: Option<u32>| {
        let mut p = vec!["tm-setup".to_string(), format!("cuid={cuid}")];
        p.extend(tsid.map(|t| format!("tsid={t}")));
        p
    };
    let ranges = Value::Array(vec![
        cbor::map(vec![(8, cbor::uint(443))]),
        cbor::map(vec![(8, cbor::uint(8000)), (9, cbor::uint(8080))]),
    ]);
    let r = session
        .request(
            RequestType::Put,
            &setup(Some(1)),
            Some(baseline(vec![
                (6, texts(&["198.51.100.0/24"])),
                (7, ranges),
                (10, Value::Array(vec![cbor::uint(6)])),
            ])),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        code_text(&r),
        "2.01",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    let r = session
        .request(
            RequestType::Put,
            &setup(Some(2)),
            Some(baseline(vec![(13, texts(&["https1"]))])),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        code_text(&r),
        "2.01",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    let r = session
        .request(
            RequestType::Put,
            &setup(Some(3)),
            Some(baseline(vec![(11, texts(&["www.example.com"]))])),
            false,
        )
        .await
        .unwrap();
    let diagnostic = String::from_utf8_lossy(&r.payload).to_string();
    assert_eq!(code_text(&r), "4.00");
    assert!(diagnostic.contains("target-fqdn (11)"), "{diagnostic}");

    async fn read_back(session: &mut Session, path: &[String]) -> serde_json::Value {
        let r = session
            .request(RequestType::Get, path, None, false)
            .await
            .unwrap();
        assert_eq!(code_text(&r), "2.05");
        dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).unwrap())
    }
    let check = |j: &serde_json::Value| {
        let entries = &j["ietf-dots-telemetry:telemetry-setup"]["telemetry"];
        assert_eq!(
            entries.as_array().map(Vec::len),
            Some(2),
            "tsids 1 and 2 only: {j}"
        );
        let ports = &entries[0]["baseline"][0];
        assert_eq!(ports["target-port-range"][1]["upper-port"], 8080, "{j}");
        assert_eq!(ports["target-port-range"][0]["lower-port"], 443, "{j}");
        assert_eq!(ports["target-protocol"][0], 6, "{j}");
        let alias = &entries[1]["baseline"][0];
        assert_eq!(alias["alias-name"][0], "https1", "{j}");
        assert_eq!(
            alias["target-prefix"],
            serde_json::json!(["2001:db8:6401::1/128", "2001:db8:6401::2/128"]),
            "the alias's prefixes: {j}"
        );
        assert_eq!(alias["target-port-range"][0]["lower-port"], 443, "{j}");
    };
    check(&read_back(&mut session, &setup(None)).await);

    // Pre-mitigation telemetry: an alias-name is a target; an FQDN is refused by name.
    let tm = |target: Vec<(u64, Value)>| {
        cbor::encode(&cbor::map(vec![(
            208,
            cbor::map(vec![(
                138,
                Value::Array(vec![cbor::map(vec![
                    (189, cbor::map(target)),
                    (
                        145,
                        Value::Array(vec![cbor::map(vec![
                            (134, cbor::uint(1)),
                            (143, cbor::uint(9)),
                        ])]),
                    ),
                ])]),
            )]),
        )]))
    };
    let tm_path = vec![
        "tm".to_string(),
        format!("cuid={cuid}"),
        "tmid=1".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &tm_path,
            Some(tm(vec![(13, texts(&["https1"]))])),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        code_text(&r),
        "2.04",
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    let r = session
        .request(RequestType::Get, &tm_path, None, false)
        .await
        .unwrap();
    let j = diag::to_json(&cbor::parse(&r.payload).unwrap());
    let target = &j["ietf-dots-telemetry:telemetry"]["pre-or-ongoing-mitigation"][0]["target"];
    assert_eq!(target["target-prefix"][0], "2001:db8:6401::1/128", "{j}");
    assert_eq!(target["alias-name"][0], "https1", "{j}");
    let tm_path2 = vec![
        "tm".to_string(),
        format!("cuid={cuid}"),
        "tmid=2".to_string(),
    ];
    let r = session
        .request(
            RequestType::Put,
            &tm_path2,
            Some(tm(vec![(11, texts(&["www.example.com"]))])),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.00");
    assert!(String::from_utf8_lossy(&r.payload).contains("target-fqdn (11)"));
    drop(session);

    // A restart: the baselines, with their ports, protocols and alias, come back.
    drop(server);
    let server = start(dir).await;
    let mut signal = client_config(dir, &server.signal_addr, "client-a");
    signal.transport = TransportChoice::Dtls;
    let mut session = Session::connect(&signal).await.unwrap();
    check(&read_back(&mut session, &setup(None)).await);
}
