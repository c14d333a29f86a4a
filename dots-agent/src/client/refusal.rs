//! A failed handshake told as the operator needs it: which side refused what, and what to
//! check, with what our own files say (our certificate's dates and issuer, server_name,
//! the CA we trust).

use openssl::asn1::Asn1Time;
use openssl::x509::X509;

use super::ClientConfig;
use crate::tls_failure::{subject, Failure};

/// The error for a handshake with `server` over `transport` ("DTLS" or "TLS") that
/// failed as `failure` says; `cfg` names our certificate, the CA we trust and server_name.
pub fn explain(
    cfg: &ClientConfig,
    server: &str,
    transport: &str,
    failure: &Failure,
) -> anyhow::Error {
    let mut text = format!(
        "{transport} handshake with {server} failed: {}",
        failure.client_view()
    );
    if let Some(hint) = hint(cfg, failure) {
        text.push_str(": ");
        text.push_str(&hint);
    }
    anyhow::anyhow!(text)
}

fn our_certificate(cfg: &ClientConfig) -> Option<X509> {
    X509::from_pem(&std::fs::read(&cfg.tls.cert).ok()?).ok()
}

fn hint(cfg: &ClientConfig, failure: &Failure) -> Option<String> {
    let cert_path = cfg.tls.cert.display();
    match failure {
        Failure::PeerRefused(alert) => {
            let ours = our_certificate(cfg)?;
            let now = Asn1Time::days_from_now(0).ok()?;
            let who = subject(ours.subject_name());
            Some(match alert.as_str() {
                "certificate expired" if ours.not_after() < now => format!(
                    "ours ({cert_path}, {who}) expired on {}; get a new one",
                    ours.not_after()
                ),
                "certificate expired" | "bad certificate" if ours.not_before() > now => format!(
                    "ours ({cert_path}, {who}) is valid only from {}; check the clocks",
                    ours.not_before()
                ),
                "unknown ca" => format!(
                    "it does not trust the CA that issued ours ({cert_path}, issued by {}); \
                     use a certificate from the server's CA",
                    subject(ours.issuer_name())
                ),
                "certificate required" => {
                    format!("it wants a client certificate ({cert_path}, {who})")
                }
                _ => format!("our certificate is {cert_path} ({who})"),
            })
        }
        Failure::WeRefused { reason, .. } => Some(
            if reason.contains("hostname mismatch") || reason.contains("IP address mismatch") {
                format!(
                    "it is not for server_name \"{}\" (set server_name to a name it carries)",
                    cfg.server_name
                )
            } else if reason.contains("local issuer") || reason.contains("self-signed") {
                format!(
                    "it is not issued by the CA we trust ([tls] ca = {})",
                    cfg.tls.ca.display()
                )
            } else if reason.contains("expired") || reason.contains("not yet valid") {
                "the server's certificate is outside its validity dates (or our clock is)".into()
            } else {
                format!("we trust the CA in {}", cfg.tls.ca.display())
            },
        ),
        Failure::Other(_) => None,
    }
}
