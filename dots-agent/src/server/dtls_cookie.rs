//! The DTLS server context and its cookies (RFC 6347 §4.2.1).
//!
//! OpenSSL's `DTLSv1_listen` does the stateless exchange; it asks these callbacks for a
//! cookie and to check one. A cookie is HMAC-SHA256 under a per-process secret over the
//! peer's address and port and the current minute, so it proves the peer receives at that
//! address, needs no state to check, and expires: one made in the current or the previous
//! minute is accepted. (A cookie computed by hand from the raw ClientHello, without
//! OpenSSL, would still need `DTLSv1_listen` afterwards: only it prepares an object to
//! continue from a hello with message_seq 1, so OpenSSL computes it here.)

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use anyhow::Result;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslRef, SslVersion,
};

/// How long a cookie is valid: the window it was made in and the next.
const WINDOW_SECONDS: u64 = 60;

/// The largest record we send. OpenSSL sizes every DTLS session's write buffer, kept for the
/// session's life, from it: 16 KiB by default, for records that never exceed a datagram
/// here (CoAP messages of at most `MAX_DATAGRAM`, 1,152 bytes, larger bodies go in blocks;
/// handshake messages are fragmented to the MTU). 2 KiB leaves room and saves 14 KiB per
/// session. (`SSL_free_buffers` would save more, but OpenSSL 3.0 never sets a DTLS write
/// buffer up again after it, so the next record is written through a NULL pointer.)
const MAX_SEND_FRAGMENT: libc::c_long = 2048;

fn set_max_send_fragment(b: &mut SslContextBuilder, bytes: libc::c_long) {
    // SSL_CTX_set_max_send_fragment is a macro over SSL_CTX_ctrl(SSL_CTRL_SET_MAX_SEND_FRAGMENT
    // = 52), not wrapped by the openssl crate.
    // SAFETY: a valid SSL_CTX pointer and a control command taking a number.
    unsafe {
        openssl_sys::SSL_CTX_ctrl(b.as_ptr(), 52, bytes, std::ptr::null_mut());
    }
}

/// The peer a server-side object is talking to, for the cookie callbacks (the listening
/// object serves every address in turn).
fn peer_index() -> openssl::ex_data::Index<Ssl, Mutex<Option<SocketAddr>>> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, Mutex<Option<SocketAddr>>>> =
        OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("an OpenSSL ex_data index"))
}

/// Gives `ssl` a place for its peer's address.
pub fn init_peer(ssl: &mut Ssl) {
    ssl.set_ex_data(peer_index(), Mutex::new(None));
}

/// The peer `ssl` talks to from now on (`init_peer` first).
pub fn set_peer(ssl: &SslRef, peer: SocketAddr) {
    if let Some(m) = ssl.ex_data(peer_index()) {
        *m.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
    }
}

pub fn peer(ssl: &SslRef) -> Option<SocketAddr> {
    *ssl.ex_data(peer_index())?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn window_now() -> u64 {
    crate::clock::unix_now() / WINDOW_SECONDS
}

fn cookie(key: &PKey<Private>, peer: &SocketAddr, window: u64) -> Result<Vec<u8>, ErrorStack> {
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    match peer {
        SocketAddr::V4(a) => signer.update(&a.ip().octets())?,
        SocketAddr::V6(a) => signer.update(&a.ip().octets())?,
    }
    signer.update(&peer.port().to_be_bytes())?;
    signer.update(&window.to_be_bytes())?;
    signer.sign_to_vec()
}

/// Does `offered` match a cookie for `peer` made in `window` or the one before?
fn cookie_valid(key: &PKey<Private>, peer: &SocketAddr, window: u64, offered: &[u8]) -> bool {
    [window, window.saturating_sub(1)].iter().any(|w| {
        cookie(key, peer, *w)
            .is_ok_and(|c| c.len() == offered.len() && openssl::memcmp::eq(&c, offered))
    })
}

pub fn context(tls: &super::config::Tls) -> Result<SslContext> {
    let mut b = SslContextBuilder::new(SslMethod::dtls_server())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    super::load_credentials(&mut b, tls)?;
    b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
    // Idle sessions give their record buffers back (most sessions are idle most of the time).
    // (OpenSSL 3.0 honours this for TLS only: a DTLS object keeps its read and write buffers.)
    b.set_mode(SslMode::RELEASE_BUFFERS);
    set_max_send_fragment(&mut b, MAX_SEND_FRAGMENT);
    let mut secret = [0u8; 32];
    openssl::rand::rand_bytes(&mut secret)?;
    let key = PKey::hmac(&secret)?;
    let verify_key = key.clone();
    b.set_cookie_generate_cb(move |ssl, out| {
        let peer = peer(ssl).ok_or_else(ErrorStack::get)?;
        let c = cookie(&key, &peer, window_now())?;
        let n = c.len().min(out.len());
        out[..n].copy_from_slice(&c[..n]);
        Ok(n)
    });
    b.set_cookie_verify_cb(move |ssl, offered| {
        peer(ssl).is_some_and(|p| cookie_valid(&verify_key, &p, window_now(), offered))
    });
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_bound_to_the_address_and_expires() {
        let key = PKey::hmac(b"a secret of the test, 32 bytes..").unwrap();
        let a: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let c = cookie(&key, &a, 100).unwrap();
        assert!(cookie_valid(&key, &a, 100, &c));
        assert!(
            cookie_valid(&key, &a, 101, &c),
            "the next window still accepts it"
        );
        assert!(!cookie_valid(&key, &a, 102, &c), "expired");
        assert!(!cookie_valid(
            &key,
            &"192.0.2.7:40001".parse().unwrap(),
            100,
            &c
        ));
        assert!(!cookie_valid(
            &key,
            &"192.0.2.8:40000".parse().unwrap(),
            100,
            &c
        ));
        assert!(!cookie_valid(&key, &a, 100, &c[..31]));
        let other = PKey::hmac(b"another secret of the test......").unwrap();
        assert!(!cookie_valid(&other, &a, 100, &c));
    }
}
