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
use super::telemetry::TmWant;
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
            if let Some(r) = c.engine.escalation_mut::<Relay>() {
                r.session(s)
            }
        })
        .await
}

/// What upstream has of each of our mids in this session: the version it accepted, or a
/// refusal and when to try again.
#[derive(Default)]
struct Upstream {
    accepted: HashMap<u32, u64>,
    retry_at: HashMap<u32, (u64, Instant, Duration)>,
    /// The efficacy update (its version) sent for each mid.
    efficacy_sent: HashMap<u32, u64>,
    /// The telemetry (its version) sent for each upstream tmid. A refused report is not
    /// sent again: it describes a moment that has passed (the next report replaces it).
    tm_sent: HashMap<u32, u64>,
}

/// Works on one session until it fails (Err) or the control plane stops (Ok).
async fn serve(
    session: &mut Session,
    desired: &mut watch::Receiver<Desired>,
    control: &ControlHandle,
) -> anyhow::Result<()> {
    let cuid = session.cuid().to_string();
    // cdid, when a server-domain gateway names its client's domain, comes before cuid.
    let path = |mid: Option<u32>, cdid: Option<&str>| {
        let mut p = vec!["mitigate".to_string()];
        p.extend(cdid.map(|c| format!("cdid={c}")));
        p.push(format!("cuid={cuid}"));
        p.extend(mid.map(|m| format!("mid={m}")));
        p
    };
    let tm_path = |tmid: u32, cdid: Option<&str>| {
        let mut p = vec!["tm".to_string()];
        p.extend(cdid.map(|c| format!("cdid={c}")));
        p.push(format!("cuid={cuid}"));
        p.push(format!("tmid={tmid}"));
        p
    };
    let wants = control
        .run(|c| {
            c.engine
                .escalation_mut::<Relay>()
                .map(|r| r.telemetry_wants())
        })
        .await;
    let Ok(Some(mut tm)) = wants else {
        return Ok(()); // the control plane stopped
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
                    cdid,
                    efficacy,
                } => {
                    let hop = [(CoapOption::Unknown(super::hop::OPTION), vec![hop_limit])];
                    if upstream.accepted.get(&mid) == Some(&version) {
                        // Held upstream: the client's latest efficacy update follows it.
                        let Some((ev, update)) = efficacy else {
                            continue;
                        };
                        if upstream.efficacy_sent.get(&mid) == Some(&ev) {
                            continue;
                        }
                        let p = path(Some(mid), cdid.as_deref());
                        let r = session
                            .request_with(RequestType::Put, &p, Some(update), true, &hop)
                            .await?;
                        if !is_success(&r) {
                            tracing::warn!(
                                "upstream refused the efficacy update of mid {mid}: {}",
                                describe(&r)
                            );
                        }
                        upstream.efficacy_sent.insert(mid, ev);
                        continue;
                    }
                    if let Some((v, at, _)) = upstream.retry_at.get(&mid) {
                        if *v == version && Instant::now() < *at {
                            continue;
                        }
                    }
                    let r = session
                        .request_with(
                            RequestType::Put,
                            &path(Some(mid), cdid.as_deref()),
                            Some(body),
                            false,
                            &hop,
                        )
                        .await?;
                    let refusal = (!is_success(&r)).then(|| describe(&r));
                    // A conflict upstream: its conflict-information goes to the relay, to
                    // come back to the downstream client (RFC 9132 §4.4.1.3).
                    let conflict = (code_text(&r) == "4.09")
                        .then(|| status::conflict_information(&r.payload))
                        .flatten();
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
                            if let Some(r) = c.engine.escalation_mut::<Relay>() {
                                r.answered(mid, version, refusal, conflict)
                            }
                        })
                        .await;
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                Want::Absent { cdid } => {
                    let r = session
                        .request(
                            RequestType::Delete,
                            &path(Some(mid), cdid.as_deref()),
                            None,
                            false,
                        )
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
        let tm_want = tm.borrow_and_update().clone();
        for (tmid, w) in tm_want {
            if relay_telemetry(session, control, &mut upstream, tmid, w, &tm_path)
                .await?
                .is_err()
            {
                return Ok(());
            }
        }
        let r = session
            .request(RequestType::Get, &path(None, None), None, false)
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
                if let Some(r) = c.engine.escalation_mut::<Relay>() {
                    r.statuses(all)
                }
            })
            .await;
        if sent.is_err() {
            return Ok(());
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return Ok(()) },
            changed = tm.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Makes upstream's telemetry `tmid` what the relay wants: Err when the session failed,
/// Ok(Err) when the control plane stopped.
async fn relay_telemetry(
    session: &mut Session,
    control: &ControlHandle,
    upstream: &mut Upstream,
    tmid: u32,
    want: TmWant,
    tm_path: &impl Fn(u32, Option<&str>) -> Vec<String>,
) -> anyhow::Result<Result<(), crate::control::Stopped>> {
    match want {
        TmWant::Present {
            body,
            version,
            cdid,
        } => {
            if upstream.tm_sent.get(&tmid) == Some(&version) {
                return Ok(Ok(()));
            }
            let p = tm_path(tmid, cdid.as_deref());
            let r = session
                .request(RequestType::Put, &p, Some(body), false)
                .await?;
            let refusal = (!is_success(&r)).then(|| describe(&r));
            upstream.tm_sent.insert(tmid, version);
            Ok(control
                .run(move |c| {
                    if let Some(r) = c.engine.escalation_mut::<Relay>() {
                        r.telemetry_answered(tmid, refusal)
                    }
                })
                .await)
        }
        TmWant::Absent { cdid } => {
            let p = tm_path(tmid, cdid.as_deref());
            let r = session
                .request(RequestType::Delete, &p, None, false)
                .await?;
            if !is_success(&r) && code_text(&r) != "4.04" {
                tracing::warn!(
                    "upstream refused to delete telemetry {tmid}: {}",
                    describe(&r)
                );
                return Ok(Ok(()));
            }
            upstream.tm_sent.remove(&tmid);
            Ok(control
                .run(move |c| {
                    c.engine
                        .escalation_event::<Relay, ()>(|r| ((), r.telemetry_deleted(tmid)));
                })
                .await)
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
            text.chars().take(512).collect::<String>()
        ),
        false => code_text(r),
    }
}
