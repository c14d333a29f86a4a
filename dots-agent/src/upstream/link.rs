//! The server's one session upstream: the project's DOTS client (`client::Session`, over
//! DTLS or TLS with the `[upstream]` certificate, so one cuid upstream: ours), driven by
//! what the relay wants. Each round it PUTs every relayed request upstream has not accepted
//! in its latest version, DELETEs what is withdrawn, and reads the status of all our
//! mitigations; each result goes back to the relay on the control thread. A session that
//! fails is made again with backoff (1 s doubling to 30 s); a refused request is tried
//! again after the same backoff. Heartbeats and session configuration stay on this hop:
//! the client session answers upstream's heartbeats, and the status read each second
//! keeps the session alive.

use std::collections::HashMap;
use std::time::Duration;

use coap_lite::{CoapOption, Packet, RequestType};
use tokio::sync::watch;
use tokio::time::Instant;

use super::relay::{Desired, Relay, Session as State, Want};
use super::status;
use crate::client::{code_text, is_success, ClientConfig, Session};
use crate::control::ControlHandle;

/// How often the upstream status is read.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the session waits for a handshake and each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the upstream session until the control plane stops.
pub async fn run(cfg: ClientConfig, mut desired: watch::Receiver<Desired>, control: ControlHandle) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let mut session = match Session::connect_within(&cfg, TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                if report(&control, State::Lost(format!("{e:#}")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let up = State::Up {
            transport: session.transport(),
        };
        if report(&control, up).await.is_err() {
            return;
        }
        backoff = BACKOFF_FIRST;
        let why = match serve(&mut session, &mut desired, &control).await {
            Ok(()) => return, // the control plane stopped
            Err(e) => format!("{e:#}"),
        };
        drop(session);
        if report(&control, State::Lost(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn report(control: &ControlHandle, s: State) -> Result<(), crate::control::Stopped> {
    control
        .run(move |c| {
            c.engine.escalation_mut::<Relay>().map(|r| r.session(s));
        })
        .await
}

/// What upstream has of each of our mids in this session: the version it accepted, or a
/// refusal and when to try again.
#[derive(Default)]
struct Upstream {
    accepted: HashMap<u32, u64>,
    retry_at: HashMap<u32, (u64, Instant, Duration)>,
}

/// Works on one session until it fails (Err) or the control plane stops (Ok).
async fn serve(
    session: &mut Session,
    desired: &mut watch::Receiver<Desired>,
    control: &ControlHandle,
) -> anyhow::Result<()> {
    let cuid = session.cuid().to_string();
    let path = |mid: Option<u32>| {
        let mut p = vec!["mitigate".to_string(), format!("cuid={cuid}")];
        p.extend(mid.map(|m| format!("mid={m}")));
        p
    };
    let mut upstream = Upstream::default();
    loop {
        let want = desired.borrow_and_update().clone();
        for (mid, w) in want {
            match w {
                Want::Present {
                    body,
                    version,
                    hop_limit,
                } => {
                    if upstream.accepted.get(&mid) == Some(&version) {
                        continue;
                    }
                    if let Some((v, at, _)) = upstream.retry_at.get(&mid) {
                        if *v == version && Instant::now() < *at {
                            continue;
                        }
                    }
                    let hop = [(CoapOption::Unknown(super::hop::OPTION), vec![hop_limit])];
                    let r = session
                        .request_with(RequestType::Put, &path(Some(mid)), Some(body), false, &hop)
                        .await?;
                    let refusal = (!is_success(&r)).then(|| describe(&r));
                    match &refusal {
                        None => {
                            upstream.accepted.insert(mid, version);
                            upstream.retry_at.remove(&mid);
                        }
                        Some(_) => {
                            let wait = upstream
                                .retry_at
                                .get(&mid)
                                .map_or(BACKOFF_FIRST, |(_, _, w)| (*w * 2).min(BACKOFF_MAX));
                            upstream
                                .retry_at
                                .insert(mid, (version, Instant::now() + wait, wait));
                        }
                    }
                    let sent = control
                        .run(move |c| {
                            c.engine
                                .escalation_mut::<Relay>()
                                .map(|r| r.answered(mid, version, refusal));
                        })
                        .await;
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                Want::Absent => {
                    let r = session
                        .request(RequestType::Delete, &path(Some(mid)), None, false)
                        .await?;
                    // 2.02, or 4.04 (upstream had already forgotten it): gone either way.
                    if is_success(&r) || code_text(&r) == "4.04" {
                        upstream.accepted.remove(&mid);
                        let done = control
                            .run(move |c| {
                                c.engine
                                    .escalation_event::<Relay, ()>(|r| ((), r.deleted(mid)));
                            })
                            .await;
                        if done.is_err() {
                            return Ok(());
                        }
                    } else {
                        tracing::warn!("upstream refused to withdraw mid {mid}: {}", describe(&r));
                    }
                }
            }
        }
        let r = session
            .request(RequestType::Get, &path(None), None, false)
            .await?;
        let all = match code_text(&r).as_str() {
            "2.05" => match status::decode(&r.payload) {
                Ok(all) => all,
                Err(e) => anyhow::bail!("upstream sent a status we cannot read: {e}"),
            },
            "4.04" => Vec::new(),
            _ => anyhow::bail!("upstream answered our status request with {}", describe(&r)),
        };
        // What upstream no longer holds (ended, forgotten, a restart without its store) is
        // asked for again.
        let held: HashMap<u32, bool> = all
            .iter()
            .map(|s| (s.mid, s.status.is_some_and(|s| (s as u8) <= 5)))
            .collect();
        upstream
            .accepted
            .retain(|mid, _| held.get(mid).copied().unwrap_or(false));
        let sent = control
            .run(move |c| {
                c.engine.escalation_mut::<Relay>().map(|r| r.statuses(all));
            })
            .await;
        if sent.is_err() {
            return Ok(());
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// "4.09 Conflict: ..." from a response: its code and diagnostic.
fn describe(r: &Packet) -> String {
    let text = String::from_utf8_lossy(&r.payload);
    let printable = !r.payload.is_empty() && text.chars().all(|c| !c.is_control());
    match printable {
        true => format!(
            "{}: {}",
            code_text(r),
            text.chars().take(200).collect::<String>()
        ),
        false => code_text(r),
    }
}
