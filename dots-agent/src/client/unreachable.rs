//! A server that cannot be reached or stops answering, said so that a person knows what
//! was tried and for how long ("no answer from HOST:PORT over DTLS within 10 s, nor over
//! TLS"), and a script can tell it from a refusal (the command line exits 4).

use std::time::Duration;

/// The server could not be reached, or stopped answering: worth trying again later (the
/// command line exits 4), unlike a refusal or a broken configuration.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Unreachable {
    pub server: String,
    pub transport: &'static str,
    pub why: Unanswered,
    /// With `transport = "auto"`: how TLS fared after DTLS.
    pub then_tls: Option<Unanswered>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Nothing came back in time (a filtered port, a host that is down).
    NoAnswer(Duration),
    /// The port is closed (TCP reset, ICMP port unreachable).
    Refused,
    /// Anything else, said as is.
    Other(String),
}

impl Unreachable {
    pub fn new(server: &str, transport: &'static str, why: Unanswered) -> Unreachable {
        Unreachable {
            server: server.to_string(),
            transport,
            why,
            then_tls: None,
        }
    }

    fn describe(&self) -> String {
        let (s, t) = (&self.server, self.transport);
        let first = match &self.why {
            Unanswered::NoAnswer(d) => format!("no answer from {s} over {t} within {}", secs(*d)),
            Unanswered::Refused => {
                format!("{s} refused {t} (connection refused: is the server listening there?)")
            }
            Unanswered::Other(why) => format!("{s} over {t}: {why}"),
        };
        let Some(tls) = &self.then_tls else {
            return first;
        };
        let detail = match (&self.why, tls) {
            (Unanswered::NoAnswer(a), Unanswered::NoAnswer(b)) if a == b => String::new(),
            (_, Unanswered::NoAnswer(b)) => format!(" within {}", secs(*b)),
            (_, Unanswered::Refused) => " (connection refused)".into(),
            (_, Unanswered::Other(why)) => format!(" ({why})"),
        };
        match self.why {
            Unanswered::NoAnswer(_) => format!("{first}, nor over TLS{detail}"),
            _ => format!("{first}; nor over TLS{detail}"),
        }
    }
}

/// "10 s", "0.5 s".
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The Unreachable inside an error, if that is what it is.
fn unreachable_in(e: &anyhow::Error) -> Option<&Unreachable> {
    e.chain().find_map(|c| c.downcast_ref::<Unreachable>())
}

/// Both transports failed (`auto`): one message for both when neither could be reached,
/// e.g. "no answer from HOST:PORT over DTLS within 10 s, nor over TLS"; otherwise the
/// failure that says more (a refused handshake, a certificate).
pub(super) fn neither(dtls: anyhow::Error, tls: anyhow::Error) -> anyhow::Error {
    match (unreachable_in(&dtls), unreachable_in(&tls)) {
        (Some(d), Some(t)) => Unreachable {
            then_tls: Some(t.why.clone()),
            ..d.clone()
        }
        .into(),
        (Some(_), None) => tls,
        (None, _) => dtls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_address_the_transports_and_the_wait() {
        let s = "192.0.2.2:4646";
        let ten = Duration::from_secs(10);
        let no_answer = |t| anyhow::Error::new(Unreachable::new(s, t, Unanswered::NoAnswer(ten)));
        assert_eq!(
            neither(no_answer("DTLS"), no_answer("TLS")).to_string(),
            "no answer from 192.0.2.2:4646 over DTLS within 10 s, nor over TLS"
        );
        let refused = anyhow::Error::new(Unreachable::new(s, "TLS", Unanswered::Refused));
        assert_eq!(
            neither(no_answer("DTLS"), refused).to_string(),
            "no answer from 192.0.2.2:4646 over DTLS within 10 s, nor over TLS (connection refused)"
        );
        // A refused handshake says more than a silent port: it is the one reported.
        let certificate = anyhow::anyhow!("TLS handshake failed");
        assert_eq!(
            neither(no_answer("DTLS"), certificate).to_string(),
            "TLS handshake failed"
        );
    }
}
