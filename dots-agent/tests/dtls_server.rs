//! The DTLS server's defences. Cookie exchange: a ClientHello without a cookie (what a
//! spoofed source can send) draws only a HelloVerifyRequest no larger than itself, so the
//! server cannot be used as an amplifier. Duplicate detection: a retransmitted request is
//! answered again, not processed twice. A forged hello from a client's address leaves its
//! session alone (RFC 6347 §4.2.8); a real new handshake from there replaces it. Sessions
//! that end (close_notify) or fall silent (the idle bound) are gone from the count.

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

/// A DTLS client driven by hand over a UDP socket of the test's own, so that the test can
/// send forged datagrams from the client's address and port.
struct RawClient {
    sock: tokio::net::UdpSocket,
    s: SslStream<Datagrams>,
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn client_context(d: &std::path::Path) -> SslContext {
    use openssl::ssl::{SslFiletype, SslOptions, SslVerifyMode};
    let mut b = SslContext::builder(SslMethod::dtls_client()).unwrap();
    b.set_ca_file(d.join("ca.pem")).unwrap();
    b.set_certificate_chain_file(d.join("client-a.pem"))
        .unwrap();
    b.set_private_key_file(d.join("client-a.key"), SslFiletype::PEM)
        .unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.set_options(SslOptions::NO_QUERY_MTU);
    b.build()
}

impl RawClient {
    /// A completed handshake with `server` from `sock` (a fresh socket if None).
    async fn connect(
        d: &std::path::Path,
        server: std::net::SocketAddr,
        sock: Option<tokio::net::UdpSocket>,
    ) -> RawClient {
        use openssl::ssl::ErrorCode;
        let mut ssl = Ssl::new(&client_context(d)).unwrap();
        ssl.set_mtu(1200).unwrap();
        let s = SslStream::new(ssl, Datagrams::default()).unwrap();
        let sock = match sock {
            Some(s) => s,
            None => {
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                s.connect(server).await.unwrap();
                s
            }
        };
        let mut c = RawClient { sock, s };
        let mut buf = vec![0u8; 65_535];
        for _ in 0..50 {
            match c.s.connect() {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => panic!("handshake: {e}"),
            }
            c.flush().await;
            let n = tokio::time::timeout(WAIT, c.sock.recv(&mut buf))
                .await
                .expect("the server answers the handshake")
                .unwrap();
            c.s.get_mut().inbox.push_back(buf[..n].to_vec());
        }
        c.flush().await;
        c
    }

    async fn flush(&mut self) {
        for d in std::mem::take(&mut self.s.get_mut().outbox) {
            self.sock.send(&d).await.unwrap();
        }
    }

    /// Sends `p` and returns the response (datagrams that are not this session's, such as
    /// a HelloVerifyRequest drawn by a forged hello, are skipped).
    async fn exchange(&mut self, p: &coap_lite::Packet) -> coap_lite::Packet {
        use openssl::ssl::ErrorCode;
        self.s.ssl_write(&p.to_bytes().unwrap()).unwrap();
        self.flush().await;
        let mut buf = vec![0u8; 65_535];
        for _ in 0..20 {
            let n = tokio::time::timeout(WAIT, self.sock.recv(&mut buf))
                .await
                .expect("the session answers")
                .unwrap();
            if buf[0] == 22 && buf[3] == 0 && buf[4] == 0 {
                continue; // epoch 0: not the session's
            }
            self.s.get_mut().inbox.push_back(buf[..n].to_vec());
            match self.s.ssl_read(&mut buf) {
                Ok(n) => return coap_lite::Packet::from_bytes(&buf[..n]).unwrap(),
                Err(e) if e.code() == ErrorCode::WANT_READ => continue,
                Err(e) => panic!("DTLS read: {e}"),
            }
        }
        panic!("no response in 20 datagrams");
    }
}

fn cuid_of(d: &std::path::Path) -> String {
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(d.join("client-a.pem")).unwrap()).unwrap();
    dots_agent::pki::cuid(&cert).unwrap()
}

/// A confirmable request on /.well-known/dots/mitigate/cuid=../mid=1.
fn mitigate(d: &std::path::Path, method: coap_lite::RequestType, id: u16) -> coap_lite::Packet {
    use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(method);
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = id;
    p.set_token(id.to_be_bytes().to_vec());
    for seg in [
        ".well-known".to_string(),
        "dots".into(),
        "mitigate".into(),
        format!("cuid={}", cuid_of(d)),
        "mid=1".into(),
    ] {
        p.add_option(CoapOption::UriPath, seg.into_bytes());
    }
    if method == RequestType::Put {
        p.set_content_format(ContentFormat::ApplicationDotsCbor);
        p.payload = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rfc9132-fig8.cbor"
        ))
        .unwrap();
    }
    p
}

/// Polls the server's open-session count (every 100 ms, for up to `seconds`) until it is
/// `want`; returns the last count seen.
async fn sessions_become(running: &dots_agent::app::Running, want: usize, seconds: u64) -> usize {
    let mut seen = usize::MAX;
    for _ in 0..seconds * 10 {
        seen = running.control.run(|c| c.session_count()).await.unwrap();
        if seen == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    seen
}

/// RFC 6347 §4.2.8: a datagram from the client's own address and port that looks like a
/// ClientHello (the 14-byte forgery of issue 13, and a whole hello without cookie) does
/// not end the authenticated session: the next request on it is answered.
#[tokio::test]
async fn a_forged_hello_from_the_clients_address_leaves_the_session_alone() {
    use coap_lite::RequestType;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", signal::CLIENT_A).await;
    let server = running.signal[0];
    let mut c = RawClient::connect(d, server, None).await;
    let r = c.exchange(&mitigate(d, RequestType::Put, 1)).await;
    assert_eq!(dots_agent::client::code_text(&r), "2.01");

    // Type 22 (handshake), epoch 0, record length 1, byte 13 = 1 (ClientHello).
    let forged = [22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 1];
    c.sock.send(&forged).await.unwrap();
    // A whole ClientHello without cookie, as a restarting client (or a spoofer) sends.
    let ctx = SslContext::builder(SslMethod::dtls_client())
        .unwrap()
        .build();
    let mut other = SslStream::new(Ssl::new(&ctx).unwrap(), Datagrams::default()).unwrap();
    let _ = other.connect();
    let hello = other.get_mut().outbox.remove(0);
    c.sock.send(&hello).await.unwrap();

    let r = c.exchange(&mitigate(d, RequestType::Get, 2)).await;
    assert_eq!(
        dots_agent::client::code_text(&r),
        "2.05",
        "the session still answers after the forged hellos"
    );
    assert_eq!(sessions_become(&running, 1, 1).await, 1);
}

/// A client that restarts on the same address and port completes a new handshake (with a
/// cookie): its new session serves it and the old one is gone.
#[tokio::test]
async fn a_new_handshake_from_the_same_port_replaces_the_session() {
    use coap_lite::RequestType;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", signal::CLIENT_A).await;
    let server = running.signal[0];
    let mut first = RawClient::connect(d, server, None).await;
    let r = first.exchange(&mitigate(d, RequestType::Put, 1)).await;
    assert_eq!(dots_agent::client::code_text(&r), "2.01");
    assert_eq!(sessions_become(&running, 1, 5).await, 1);

    let mut second = RawClient::connect(d, server, Some(first.sock)).await;
    let r = second.exchange(&mitigate(d, RequestType::Get, 2)).await;
    assert_eq!(dots_agent::client::code_text(&r), "2.05");
    assert_eq!(
        sessions_become(&running, 1, 5).await,
        1,
        "the old session was replaced, not kept beside the new one"
    );
}

/// Spoofed hellos from many ports cost the server no session, no handshake and no task:
/// each draws a HelloVerifyRequest, and a real client still connects.
#[tokio::test]
async fn hellos_without_cookies_leave_no_state() {
    use coap_lite::RequestType;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", signal::CLIENT_A).await;
    let server = running.signal[0];
    let ctx = SslContext::builder(SslMethod::dtls_client())
        .unwrap()
        .build();
    let mut answered = 0;
    for _ in 0..200 {
        let mut s = SslStream::new(Ssl::new(&ctx).unwrap(), Datagrams::default()).unwrap();
        let _ = s.connect();
        let hello = s.get_mut().outbox.remove(0);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&hello, server).await.unwrap();
        let mut buf = [0u8; 2048];
        if let Ok(Ok((_, _))) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await {
            if (buf[0], buf[13]) == (22, 3) {
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 200, "every hello drew a HelloVerifyRequest");
    assert_eq!(sessions_become(&running, 0, 1).await, 0);
    let mut c = RawClient::connect(d, server, None).await;
    let r = c.exchange(&mitigate(d, RequestType::Put, 1)).await;
    assert_eq!(dots_agent::client::code_text(&r), "2.01");
}

/// One-shot clients (connect, ask, exit) leave no session behind: the client says
/// close_notify when it goes, and the server ends the session then.
#[tokio::test]
async fn one_shot_clients_leave_no_sessions() {
    use dots_agent::client::{ClientConfig, ClientTls, Session, TransportChoice};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", signal::CLIENT_A).await;
    let cfg = ClientConfig {
        server: running.signal[0].to_string(),
        transport: TransportChoice::Dtls,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: d.join("ca.pem"),
            cert: d.join("client-a.pem"),
            key: d.join("client-a.key"),
        },
    };
    for _ in 0..5 {
        let mut s = Session::connect(&cfg).await.unwrap();
        let path = vec!["mitigate".to_string(), format!("cuid={}", s.cuid())];
        let r = s
            .request(coap_lite::RequestType::Get, &path, None, false)
            .await
            .unwrap();
        assert!(r.header.code != coap_lite::MessageClass::Empty);
        drop(s);
    }
    assert_eq!(sessions_become(&running, 0, 10).await, 0);
}

/// A client that vanishes without a word is ended after the idle bound
/// (`[signal] dtls_idle_seconds`, here 1 s).
#[tokio::test]
async fn a_silent_session_ends_after_the_idle_bound() {
    use coap_lite::RequestType;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(d, "dots.example", &[], &["client-a".into()]).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "dtls_idle_seconds = 1", signal::CLIENT_A).await;
    let mut c = RawClient::connect(d, running.signal[0], None).await;
    let r = c.exchange(&mitigate(d, RequestType::Get, 1)).await;
    assert!(r.header.code != coap_lite::MessageClass::Empty);
    assert_eq!(sessions_become(&running, 1, 5).await, 1);
    drop(c); // no close_notify
    assert_eq!(sessions_become(&running, 0, 15).await, 0);
}
