//! DTLS cookie exchange: a ClientHello without a cookie (what a spoofed source can send)
//! draws only a HelloVerifyRequest no larger than itself, so the server cannot be used as
//! an amplifier.

use std::sync::Arc;

use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::dtls_io::Datagrams;
use dots_agent::server::{config::Tls, dtls_context, serve_dtls, SharedEngine};
use dots_agent::signal::engine::Engine;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream};
use tokio::sync::Mutex;

#[tokio::test]
async fn a_hello_without_cookie_gets_a_smaller_hello_verify_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let tls = Tls {
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
    };
    let mitigator: Box<dyn Mitigator> = Box::new(MemoryMitigator::new());
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(mitigator, vec![])));
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = udp.local_addr().unwrap();
    tokio::spawn(serve_dtls(udp, dtls_context(&tls).unwrap(), engine));

    // A real ClientHello, as a DTLS client would send it first.
    let ctx = SslContext::builder(SslMethod::dtls_client())
        .unwrap()
        .build();
    let mut s = SslStream::new(Ssl::new(&ctx).unwrap(), Datagrams::default()).unwrap();
    let _ = s.connect(); // wants to read: the hello is in the outbox
    let hello = s.get_mut().outbox.remove(0);
    assert_eq!(
        (hello[0], hello[13]),
        (22, 1),
        "handshake record carrying a ClientHello"
    );

    // Two sources (as a spoofer would use many): each gets one small answer.
    for _ in 0..2 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&hello, server).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(3), sock.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
        assert_eq!((buf[0], buf[13]), (22, 3), "a HelloVerifyRequest");
        assert!(
            n <= hello.len(),
            "no amplification: {n} bytes answer a {}-byte hello",
            hello.len()
        );
    }
}
