//! The DOTS server's listeners around the control plane: CoAP over DTLS on UDP and over TLS
//! on TCP (RFC 8323), both with mutual X.509 authentication; the data channel's HTTPS and
//! the Prometheus endpoint; and server.toml. `app` assembles them.

pub mod config;
mod dtls;
pub mod https;
pub mod metrics;
mod tls;

use anyhow::{Context, Result};

pub use config::ServerConfig;
pub(crate) use dtls::{context as dtls_context, serve_dtls};
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
    b.set_verify(
        openssl::ssl::SslVerifyMode::PEER | openssl::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    );
    Ok(())
}
