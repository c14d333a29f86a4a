//! Exit statuses of the command line, one per kind of outcome, so that a script can tell a
//! request to fix (3) from an outage to wait out (4):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | error here: a file, a certificate, a configuration, an unexpected answer |
//! | 2 | usage: a flag or value the command does not take (clap's code, kept for ours) |
//! | 3 | refused by the server: CoAP 4.xx, HTTP 4xx |
//! | 4 | server error (CoAP 5.xx, HTTP 5xx) or server unreachable (no answer, refused connection) |

use crate::client::Unreachable;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    Refused = 3,
    Unavailable = 4,
}

impl Exit {
    /// The status for a CoAP response code class (2, 4 or 5).
    pub fn for_coap_class(class: u8) -> Exit {
        match class {
            2 => Exit::Ok,
            4 => Exit::Refused,
            5 => Exit::Unavailable,
            _ => Exit::Error,
        }
    }

    /// The status for an HTTP status code.
    pub fn for_http(status: u16) -> Exit {
        match status {
            200..=299 => Exit::Ok,
            400..=499 => Exit::Refused,
            500..=599 => Exit::Unavailable,
            _ => Exit::Error,
        }
    }

    /// The worse of two outcomes (a command that sends several requests).
    pub fn max(self, other: Exit) -> Exit {
        if other as i32 > self as i32 {
            other
        } else {
            self
        }
    }
}

/// A mistake in what the user typed that clap could not see (e.g. a value valid alone but
/// not with another flag): exits 2 like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// The status of a failed command: its cause decides.
pub fn status_of(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.downcast_ref::<Unreachable>().is_some() {
            return Exit::Unavailable;
        }
        if cause.downcast_ref::<Usage>().is_some() {
            return Exit::Usage;
        }
    }
    Exit::Error
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_decide_the_status_through_context() {
        let why = crate::client::Unanswered::Refused;
        let e = anyhow::Error::new(Unreachable::new("192.0.2.1:4646", "TLS", why))
            .context("connecting");
        assert_eq!(status_of(&e), Exit::Unavailable);
        let e: anyhow::Result<()> = Err(usage("--tsid or --all"));
        assert_eq!(status_of(&e.context("telemetry").unwrap_err()), Exit::Usage);
        assert_eq!(status_of(&anyhow::anyhow!("reading x")), Exit::Error);
        assert_eq!(Exit::for_coap_class(4), Exit::Refused);
        assert_eq!(Exit::for_http(503), Exit::Unavailable);
        assert_eq!(Exit::Refused.max(Exit::Ok), Exit::Refused);
    }
}
