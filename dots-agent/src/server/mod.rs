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
pub use dtls::{context as dtls_context, serve_dtls};
pub use tls::{acceptor, serve_tls};

use crate::clock::unix_now as now;
use crate::control::ControlHandle;

/// Who a (D)TLS peer is: its certificate's CN, its cuid, and whether it is a configured
/// client (a valid certificate of an unconfigured one gets 4.01 on every request).
pub(crate) struct Identity {
    pub cn: String,
    pub cuid: String,
    pub configured: bool,
}

impl Identity {
    pub(crate) async fn of(
        ssl: &openssl::ssl::SslRef,
        control: &ControlHandle,
    ) -> Result<Identity> {
        let cert = ssl.peer_certificate().context("no client certificate")?;
        let cn = crate::pki::common_name(&cert).unwrap_or_default();
        let cuid = crate::pki::cuid(&cert)?;
        let name = cn.clone();
        let configured = control
            .run(move |c| c.engine.policy(&name).is_some())
            .await?;
        Ok(Identity {
            cn,
            cuid,
            configured,
        })
    }

    pub(crate) fn client(&self) -> Option<&str> {
        self.configured.then_some(self.cn.as_str())
    }
}

/// How often an observed mitigation is re-sent even without a status change (its counters
/// move while it is active).
pub(crate) const PERIODIC_NOTIFY: std::time::Duration = std::time::Duration::from_secs(30);

/// An observation (RFC 7641), the fingerprint of what was last sent for it, and when.
type Watched = (
    crate::signal::handler::Observation,
    Vec<u8>,
    std::time::Instant,
);

#[derive(Default)]
pub(crate) struct Observations {
    list: Vec<Watched>,
    sequence: u32,
}

impl Observations {
    pub(crate) async fn apply(
        &mut self,
        obs: crate::signal::handler::Observation,
        register: bool,
        control: &ControlHandle,
    ) -> Result<()> {
        self.list.retain(|(o, _, _)| o.token != obs.token);
        if register {
            let watched = obs.clone();
            let sent = control
                .run(move |c| {
                    crate::signal::handler::fingerprint(&c.engine, &watched, now())
                        .unwrap_or_default()
                })
                .await?;
            self.list.push((obs, sent, std::time::Instant::now()));
        }
        Ok(())
    }

    /// Notifications due now (status changed, or the periodic one); ends observations
    /// whose mitigation is gone, after telling the client.
    pub(crate) async fn due(&mut self, control: &ControlHandle) -> Result<Vec<coap_lite::Packet>> {
        if self.list.is_empty() {
            return Ok(Vec::new());
        }
        let mut mine = std::mem::take(self);
        let (mine, out) = control
            .run(move |c| {
                let out = mine.notifications(&c.engine);
                (mine, out)
            })
            .await?;
        *self = mine;
        Ok(out)
    }

    fn notifications(
        &mut self,
        e: &crate::engine::Engine<Box<dyn crate::datapath::Mitigator>>,
    ) -> Vec<coap_lite::Packet> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (i, (obs, last, sent)) in self.list.iter_mut().enumerate() {
            let periodic = sent.elapsed() >= PERIODIC_NOTIFY;
            self.sequence = self.sequence.wrapping_add(1);
            if let Some((p, ended)) =
                crate::signal::handler::notification(e, obs, last, periodic, self.sequence, now())
            {
                *sent = std::time::Instant::now();
                out.push(p);
                if ended {
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.list.remove(i);
        }
        out
    }
}

/// When to send the session's own heartbeats, and whether the client's arrive.
pub(crate) struct Heartbeats {
    sent: std::time::Instant,
    client_seen: Option<std::time::Instant>,
    counter: u32,
}

impl Heartbeats {
    pub(crate) fn new() -> Self {
        Heartbeats {
            sent: std::time::Instant::now(),
            client_seen: None,
            counter: 0,
        }
    }

    pub(crate) fn client_heartbeat(&mut self) {
        self.client_seen = Some(std::time::Instant::now());
    }

    /// A PUT /hb to send now, if the client's heartbeat interval has passed since the last.
    pub(crate) async fn due(
        &mut self,
        control: &ControlHandle,
        id: &Identity,
    ) -> Result<Option<coap_lite::Packet>> {
        let Some(client) = id.client() else {
            return Ok(None);
        };
        let (client, cuid) = (client.to_string(), id.cuid.clone());
        let interval = control
            .run(move |c| c.engine.heartbeat_interval(&client, &cuid))
            .await?;
        if interval == 0 || self.sent.elapsed() < std::time::Duration::from_secs(interval) {
            return Ok(None);
        }
        // Nothing from the client since our last heartbeat, a whole interval ago: missed.
        if self.client_seen.is_none_or(|t| t < self.sent) && self.counter > 0 {
            crate::metrics::SIGNAL.heartbeats_missed.inc();
        }
        self.sent = std::time::Instant::now();
        self.counter = self.counter.wrapping_add(1);
        let window = std::time::Duration::from_secs(2 * interval);
        let theirs_arrive = self.client_seen.is_some_and(|t| t.elapsed() <= window);
        let mut token = b"hb".to_vec();
        token.extend_from_slice(&self.counter.to_be_bytes());
        Ok(Some(crate::signal::handler::heartbeat_request(
            token,
            theirs_arrive,
        )))
    }
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
