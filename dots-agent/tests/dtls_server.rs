//! The DTLS server's defences. Cookie exchange: a ClientHello without a cookie (what a
//! spoofed source can send) draws only a HelloVerifyRequest no larger than itself, so the
//! server cannot be used as an amplifier. Duplicate detection: a retransmitted request is
//! answered again, not processed twice.

mod common;

use dots_agent::dtls_io::Datagrams;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream};

use common::signal;

#[tokio::test]
async fn a_hello_without_cookie_gets_a_smaller_hello_verify_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", "").await;
    let server = running.signal[0];

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

/// A request retransmitted with the same message id (RFC 7252 §4.5) is answered again with
/// the same response, not processed twice: the repeat of a create is another 2.01, not the
/// 2.04 of a refresh.
#[tokio::test]
async fn a_retransmitted_request_gets_the_same_answer() {
    use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};

    use openssl::ssl::{ErrorCode, SslFiletype, SslOptions, SslVerifyMode};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", signal::CLIENT_A).await;
    let server = running.signal[0];

    let mut b = SslContext::builder(SslMethod::dtls_client()).unwrap();
    b.set_ca_file(d.join("ca.pem")).unwrap();
    b.set_certificate_chain_file(d.join("client-a.pem"))
        .unwrap();
    b.set_private_key_file(d.join("client-a.key"), SslFiletype::PEM)
        .unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.set_options(SslOptions::NO_QUERY_MTU);
    let mut ssl = Ssl::new(&b.build()).unwrap();
    ssl.set_mtu(1200).unwrap();
    let mut s = SslStream::new(ssl, Datagrams::default()).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    for _ in 0..50 {
        match s.connect() {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => panic!("handshake: {e}"),
        }
        for d in std::mem::take(&mut s.get_mut().outbox) {
            sock.send(&d).await.unwrap();
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        s.get_mut().inbox.push_back(buf[..n].to_vec());
    }
    for d in std::mem::take(&mut s.get_mut().outbox) {
        sock.send(&d).await.unwrap();
    }
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(d.join("client-a.pem")).unwrap()).unwrap();
    let cuid = dots_agent::pki::cuid(&cert).unwrap();
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Put);
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = 4242;
    p.set_token(vec![7]);
    for seg in [
        ".well-known",
        "dots",
        "mitigate",
        &format!("cuid={cuid}"),
        "mid=1",
    ] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.set_content_format(ContentFormat::ApplicationDotsCbor);
    p.payload = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rfc9132-fig8.cbor"
    ))
    .unwrap();
    let bytes = p.to_bytes().unwrap();
    let mut codes = Vec::new();
    for _ in 0..2 {
        s.ssl_write(&bytes).unwrap();
        for d in std::mem::take(&mut s.get_mut().outbox) {
            sock.send(&d).await.unwrap();
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        s.get_mut().inbox.push_back(buf[..n].to_vec());
        let n = s.ssl_read(&mut buf).unwrap();
        let r = Packet::from_bytes(&buf[..n]).unwrap();
        assert_eq!(
            (r.header.get_type(), r.header.message_id),
            (MessageType::Acknowledgement, 4242)
        );
        codes.push(dots_agent::client::code_text(&r));
    }
    assert_eq!(codes, vec!["2.01", "2.01"]);
}
