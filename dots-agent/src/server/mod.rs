//! The DOTS server's listeners around the control plane: CoAP over DTLS on UDP and over TLS
//! on TCP (RFC 8323), both with mutual X.509 authentication; the data channel's HTTPS and
//! the Prometheus endpoint; and server.toml. `app` assembles them.

pub mod config;
mod dtls;
mod dtls_cookie;
pub mod heap;
pub mod https;
pub mod limits;
pub mod metrics;
mod tls;

use anyhow::{Context, Result};

pub use config::ServerConfig;
pub(crate) use dtls::{context as dtls_context, serve_dtls, DtlsSettings};
pub(crate) use tls::{acceptor, serve_tls};

use crate::control::sessions::Identity;

/// Who a (D)TLS peer is, from its certificate: its CN and its cuid (RFC 9132 §4.4.1.1).
pub(crate) fn identity(ssl: &openssl::ssl::SslRef) -> Result<Identity> {
    let cert = ssl.peer_certificate().context("no client certificate")?;
    Ok(Identity {
        cn: crate::pki::common_name(&cert).unwrap_or_default(),
        cuid: crate::pki::cuid(&cert)?,
    })
}

/// Loads the CA that client certificates must chain to, and our certificate and key, and
/// requires a client certificate (mutual authentication).
pub(crate) fn load_credentials(
    b: &mut openssl::ssl::SslContextBuilder,
    tls: &config::Tls,
) -> Result<()> {
    b.set_ca_file(&tls.ca)
        .with_context(|| format!("loading CA {}", tls.ca.display()))?;
    b.set_certificate_chain_file(&tls.cert)
        .with_context(|| format!("loading {}", tls.cert.display()))?;
    b.set_private_key_file(&tls.key, openssl::ssl::SslFiletype::PEM)
        .with_context(|| format!("loading {}", tls.key.display()))?;
    b.check_private_key()
        .context("the server key does not match its certificate")?;
    b.set_verify_callback(
        openssl::ssl::SslVerifyMode::PEER | openssl::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |ok, chain| {
            if !ok {
                log_refused_certificate(chain);
            }
            ok
        },
    );
    Ok(())
}

/// A server-side object for a connection from `peer` (its address for the logs).
pub(crate) fn peer_ssl(
    ctx: &openssl::ssl::SslContextRef,
    peer: std::net::SocketAddr,
) -> Result<openssl::ssl::Ssl> {
    let mut ssl = openssl::ssl::Ssl::new(ctx)?;
    dtls_cookie::init_peer(&mut ssl);
    dtls_cookie::set_peer(&ssl, peer);
    Ok(ssl)
}

/// We refuse a client's certificate: who sent it, whose it is, and why, at WARN.
fn log_refused_certificate(chain: &mut openssl::x509::X509StoreContextRef) {
    let peer = openssl::x509::X509StoreContext::ssl_idx()
        .ok()
        .and_then(|i| chain.ex_data(i))
        .and_then(dtls_cookie::peer)
        .map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
    let subject = chain.current_cert().map_or_else(
        || "(no certificate)".into(),
        |c| crate::tls_failure::subject(c.subject_name()),
    );
    tracing::warn!(
        "refused the client certificate of {peer} ({subject}, depth {}): {}",
        chain.error_depth(),
        chain.error().error_string()
    );
}

/// A failed handshake, at WARN: which side refused what (certificate problems on our side
/// are logged by the verify callback, with the subject).
pub(crate) fn log_handshake_failure(
    transport: &str,
    peer: std::net::SocketAddr,
    ssl: &openssl::ssl::SslRef,
    e: &openssl::ssl::Error,
) {
    let what = crate::tls_failure::Failure::of(e, ssl);
    tracing::warn!(
        "{transport} handshake with {peer} failed: {}",
        what.server_view()
    );
}
