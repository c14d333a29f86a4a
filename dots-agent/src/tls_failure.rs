//! Why a (D)TLS handshake failed, told from either side: the peer refused (its alert says
//! what, e.g. `certificate expired`, `unknown ca`), or we refused its certificate (the
//! verification result says why), or something else. OpenSSL's own text mixes the two
//! ("certificate verify failed" is ours, "sslv3 alert bad certificate" is theirs).

use openssl::ssl::SslRef;
use openssl::x509::{X509NameRef, X509VerifyResult};

/// Alerts by which a peer refuses a certificate (RFC 5246 §7.2.2, RFC 8446 §6.2).
const CERTIFICATE_ALERTS: &[&str] = &[
    "bad certificate",
    "unsupported certificate",
    "certificate revoked",
    "certificate expired",
    "certificate unknown",
    "unknown ca",
    "certificate required",
    "access denied",
    "decrypt error",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer sent this alert (e.g. "certificate expired").
    PeerRefused(String),
    /// We refused the peer's certificate (subject, if known) for this reason.
    WeRefused {
        reason: String,
        subject: Option<String>,
    },
    Other(String),
}

/// "CN=client-a, O=..." of a certificate name.
pub fn subject(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = String::from_utf8_lossy(e.data().as_slice());
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty subject)".into()
    } else {
        parts.join(", ")
    }
}

/// The alert text in an OpenSSL reason such as "sslv3 alert certificate expired".
fn alert_of(reason: &str) -> Option<String> {
    reason
        .split_once("alert ")
        .map(|(_, a)| a.trim().to_string())
}

impl Failure {
    /// Classifies a handshake error of `ssl`. Also takes the error of a first read or
    /// write: with TLS 1.3 a client's handshake completes before the server has checked
    /// its certificate, so the server's refusal arrives then.
    pub fn of(e: &openssl::ssl::Error, ssl: &SslRef) -> Failure {
        let reasons: Vec<String> = e
            .ssl_error()
            .map(|stack| {
                stack
                    .errors()
                    .iter()
                    .filter_map(|x| x.reason().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Self::from_parts(
            &reasons,
            ssl.verify_result(),
            || peer_subject(ssl),
            &e.to_string(),
        )
    }

    fn from_parts(
        reasons: &[String],
        verify: X509VerifyResult,
        subject: impl FnOnce() -> Option<String>,
        text: &str,
    ) -> Failure {
        if let Some(alert) = reasons.iter().find_map(|r| alert_of(r)) {
            return Failure::PeerRefused(alert);
        }
        if verify != X509VerifyResult::OK
            && reasons
                .iter()
                .any(|r| r.contains("certificate verify failed"))
        {
            return Failure::WeRefused {
                reason: verify.error_string().to_string(),
                subject: subject(),
            };
        }
        if reasons
            .iter()
            .any(|r| r.contains("peer did not return a certificate"))
        {
            return Failure::WeRefused {
                reason: "it sent no certificate".into(),
                subject: None,
            };
        }
        Failure::Other(if reasons.is_empty() {
            text.to_string()
        } else {
            reasons.join("; ")
        })
    }

    fn about_certificates(&self) -> bool {
        match self {
            Failure::PeerRefused(a) => CERTIFICATE_ALERTS.contains(&a.as_str()),
            Failure::WeRefused { .. } => true,
            Failure::Other(_) => false,
        }
    }

    /// As the server tells it.
    pub fn server_view(&self) -> String {
        match self {
            Failure::PeerRefused(a) if self.about_certificates() => {
                format!("the client refused our certificate ({a})")
            }
            Failure::PeerRefused(a) => format!("the client ended the handshake ({a})"),
            Failure::WeRefused { reason, subject } => format!(
                "we refused the client's certificate{}: {reason}",
                subject
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            Failure::Other(t) => t.clone(),
        }
    }

    /// As the client tells it.
    pub fn client_view(&self) -> String {
        match self {
            Failure::PeerRefused(a) if self.about_certificates() => {
                format!("the server refused our certificate ({a})")
            }
            Failure::PeerRefused(a) => format!("the server ended the handshake ({a})"),
            Failure::WeRefused { reason, subject } => format!(
                "we refused the server's certificate{}: {reason}",
                subject
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            Failure::Other(t) => t.clone(),
        }
    }
}

/// The peer's refusal found in one link of an error chain (an OpenSSL error, or an I/O
/// error carrying one): with TLS 1.3 a server checks our certificate after our side of the
/// handshake completed, so its alert comes with the first read, wrapped by whoever read.
pub fn peer_refusal_in(link: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let ssl = link.downcast_ref::<openssl::ssl::Error>().or_else(|| {
        link.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<openssl::ssl::Error>()
    })?;
    ssl.ssl_error()?
        .errors()
        .iter()
        .find_map(|x| alert_of(x.reason()?))
        .map(Failure::PeerRefused)
}

/// The peer's certificate subject, also when its verification failed (then only the
/// chain it sent is kept).
fn peer_subject(ssl: &SslRef) -> Option<String> {
    if let Some(c) = ssl.peer_certificate() {
        return Some(subject(c.subject_name()));
    }
    ssl.peer_cert_chain()
        .and_then(|chain| chain.iter().next().map(|c| subject(c.subject_name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(reasons: &[&str], verify: X509VerifyResult) -> Failure {
        let r: Vec<String> = reasons.iter().map(|s| s.to_string()).collect();
        Failure::from_parts(&r, verify, || Some("CN=dots.example".into()), "raw")
    }

    #[test]
    fn each_side_is_named() {
        let expired = of(&["sslv3 alert certificate expired"], X509VerifyResult::OK);
        assert_eq!(expired, Failure::PeerRefused("certificate expired".into()));
        assert_eq!(
            expired.client_view(),
            "the server refused our certificate (certificate expired)"
        );
        assert_eq!(
            of(&["tlsv1 alert unknown ca"], X509VerifyResult::OK).server_view(),
            "the client refused our certificate (unknown ca)"
        );
        // X509_V_ERR_CERT_HAS_EXPIRED is 10.
        // SAFETY: a valid X509_V_ERR code.
        let ours = of(&["certificate verify failed"], unsafe {
            X509VerifyResult::from_raw(10)
        });
        assert_eq!(
            ours.client_view(),
            "we refused the server's certificate (CN=dots.example): certificate has expired"
        );
        assert_eq!(
            of(&["sslv3 alert handshake failure"], X509VerifyResult::OK).client_view(),
            "the server ended the handshake (handshake failure)"
        );
        assert_eq!(
            of(&["peer did not return a certificate"], X509VerifyResult::OK).server_view(),
            "we refused the client's certificate: it sent no certificate"
        );
        assert_eq!(of(&[], X509VerifyResult::OK).client_view(), "raw");
    }
}
