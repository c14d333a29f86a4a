//! Certificate failures tell the truth (issue 14, item 6): the client says which side
//! refused what (the server refused our certificate: expired, unknown CA; or we refused
//! the server's: not from our CA, not for server_name), over DTLS and over TLS; the server
//! logs each at WARN with the peer's address and, for a certificate it refused, the
//! certificate's subject. The server is the `dots-agent server` binary, its log read from
//! its stderr.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::server_process::ServerProcess;
use dots_agent::client::{ClientConfig, ClientTls, Session, TransportChoice};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509NameBuilder, X509};

/// The server binary; signal channel on `port` (UDP and TCP), data channel on `port` + 1.
fn start_server(dir: &Path, port: u16) -> ServerProcess {
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "[signal]\nlisten = [\"127.0.0.1:{port}\"]\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [data]\nlisten = [\"127.0.0.1:{}\"]\n\
             [store]\ndir = \"state\"\n[[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n",
            port + 1
        ),
    )
    .unwrap();
    ServerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_dots-agent"))
            .args([
                "server",
                "--config",
                dir.join("server.toml").to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null()),
    )
}

fn config(
    port: u16,
    transport: TransportChoice,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> ClientConfig {
    ClientConfig {
        server: format!("127.0.0.1:{port}"),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        },
    }
}

/// client-a's certificate from `dir`'s CA, which expired yesterday.
fn expired_certificate(dir: &Path) {
    let ca = X509::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let ca_key =
        openssl::pkey::PKey::private_key_from_pem(&std::fs::read(dir.join("ca.key")).unwrap())
            .unwrap();
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key =
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "client-a").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now - 10 * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now - 86_400).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    b.append_extension(KeyUsage::new().digital_signature().build().unwrap())
        .unwrap();
    b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    std::fs::write(dir.join("expired.pem"), b.build().to_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join("expired.key"),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
}

fn wrong_name_of(cfg: &ClientConfig) -> ClientConfig {
    let mut c = cfg.clone();
    c.server_name = "dots.invalid".into();
    c
}

/// The error text of a connection attempt (it must fail).
async fn refused(cfg: &ClientConfig) -> String {
    match Session::connect(cfg).await {
        Ok(_) => panic!("{cfg:?}: the handshake succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

/// A port whose UDP and TCP sides are free, and whose next port is free for TCP.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if p < u16::MAX
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free pair of ports");
}

#[tokio::test]
async fn each_side_says_what_it_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = d.join("other");
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    dots_agent::pki::init(&other, "dots.example", &[], &["client-a".into()]).unwrap();
    expired_certificate(d);
    let port = free_port_pair();
    let server = start_server(d, port);
    let good = config(
        port,
        TransportChoice::Dtls,
        &d.join("ca.pem"),
        &d.join("client-a.pem"),
        &d.join("client-a.key"),
    );
    // Up: a good client connects (bounded: 50 tries).
    let mut up = false;
    for _ in 0..50 {
        if Session::connect(&good).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "the server answers a good client:\n{}", server.log());

    for transport in [TransportChoice::Dtls, TransportChoice::Tls] {
        let t = format!("{transport:?}").to_uppercase();
        // Our certificate has expired: the server refuses it and says why.
        let e = refused(&config(
            port,
            transport,
            &d.join("ca.pem"),
            &d.join("expired.pem"),
            &d.join("expired.key"),
        ))
        .await;
        assert!(
            e.contains(&format!("{t} handshake with 127.0.0.1:{port} failed"))
                && e.contains("the server refused our certificate (certificate expired)")
                && e.contains("expired on"),
            "{t}: {e}"
        );
        // Our certificate is from a CA the server does not trust.
        let e = refused(&config(
            port,
            transport,
            &d.join("ca.pem"),
            &other.join("client-a.pem"),
            &other.join("client-a.key"),
        ))
        .await;
        assert!(
            e.contains("the server refused our certificate (unknown ca)")
                && e.contains("does not trust the CA"),
            "{t}: {e}"
        );
        // We do not trust the server's CA.
        let e = refused(&config(
            port,
            transport,
            &other.join("ca.pem"),
            &other.join("client-a.pem"),
            &other.join("client-a.key"),
        ))
        .await;
        assert!(
            e.contains("we refused the server's certificate (")
                && e.contains("CN=dots.example")
                && (e.contains("unable to get local issuer certificate")
                    || e.contains("self-signed certificate in certificate chain"))
                && e.contains("not issued by the CA we trust"),
            "{t}: {e}"
        );
        // The server's certificate is not for the name we asked for.
        let mut wrong_name = good.clone();
        wrong_name.transport = transport;
        wrong_name.server_name = "dots.invalid".into();
        let e = refused(&wrong_name).await;
        assert!(
            e.contains("we refused the server's certificate")
                && e.contains("hostname mismatch")
                && e.contains("server_name \"dots.invalid\""),
            "{t}: {e}"
        );
    }

    // The data channel (HTTPS): the same, with an expired certificate and with a server
    // name the server's certificate does not carry.
    let data = format!("127.0.0.1:{}", port + 1);
    let expired = config(
        port,
        TransportChoice::Tls,
        &d.join("ca.pem"),
        &d.join("expired.pem"),
        &d.join("expired.key"),
    );
    let e =
        dots_agent::data::client::request(&expired, &data, "GET", "/.well-known/host-meta", None)
            .await
            .map(|r| r.status)
            .map_err(|e| format!("{e:#}"));
    let e = e.expect_err("the data channel refuses an expired certificate");
    assert!(
        e.contains(&format!("TLS handshake with {data} failed"))
            && e.contains("the server refused our certificate (certificate expired)"),
        "data channel: {e}"
    );
    let e = dots_agent::data::client::request(&wrong_name_of(&good), &data, "GET", "/", None)
        .await
        .map(|r| r.status)
        .map_err(|e| format!("{e:#}"))
        .expect_err("a server name its certificate does not carry");
    assert!(
        e.contains("we refused the server's certificate") && e.contains("hostname mismatch"),
        "data channel: {e}"
    );

    // The server's side, at WARN, with the peer's address and the subject.
    for parts in [
        &[
            "WARN",
            "refused the client certificate of 127.0.0.1:",
            "CN=client-a",
            "certificate has expired",
        ][..],
        &[
            "WARN",
            "refused the client certificate of 127.0.0.1:",
            "O=dots-agent lab, CN=client-a",
            "unable to get local issuer certificate",
        ][..],
        &[
            "WARN",
            "DTLS handshake with 127.0.0.1:",
            "the client refused our certificate (unknown ca)",
        ][..],
        &[
            "WARN",
            ": TLS handshake with 127.0.0.1:",
            "the client refused our certificate",
        ][..],
    ] {
        assert!(
            server.logged(parts),
            "no log line with {parts:?}:\n{}",
            server.log()
        );
    }
}
