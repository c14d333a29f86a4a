//! Data-channel requests through the engine: the data channel answers, and a change it
//! makes to a client's data is applied by the engine (datapath and store, one
//! transaction) before the data channel makes it, so a refusal changes nothing.

use super::Control;
use crate::data::restconf::{self, ErrorTag, Resource, RestconfError};
use crate::data::service::{self as data, Edit, Outcome};
use crate::datapath::Mitigator;
use crate::engine::Refusal;

impl<M: Mitigator> Control<M> {
    /// A data-channel request: answered by the data channel, and if it changes a client's
    /// data, applied by the engine (datapath and store) before the data channel makes it.
    pub fn data_request(
        &mut self,
        peer: &data::Peer,
        req: &data::Request,
        now: u64,
    ) -> data::Response {
        // The request acts as the cuid it names, which must be one the client holds or may
        // take (as on the signal channel).
        let acting = acting_cuid(req);
        if let (Some(client), Some(cuid)) = (peer.client, &acting) {
            if let Err(r) = self.engine.claim_cuid(client, cuid) {
                return cuid_refusal(r).into();
            }
        }
        let peer = &data::Peer {
            client: peer.client,
            cuid: acting.as_deref().unwrap_or(peer.cuid),
        };
        let engine = &self.engine;
        let outcome = self
            .data
            .lock()
            .handle(peer, req, now, &|client| engine.acl_counters(client));
        match outcome {
            Outcome::Done(r) => r,
            Outcome::Edit(edit) => self.apply(edit),
        }
    }

    pub(super) fn apply(&mut self, edit: Edit) -> data::Response {
        let change = edit.change.clone();
        match self
            .engine
            .set_acls(&edit.client, edit.entries.clone(), vec![change])
        {
            Ok(()) => self.data.lock().apply(edit),
            Err(r) => data::engine_refusal(r).into(),
        }
    }
}

/// The cuid a data-channel request names: `dots-client=<cuid>` in its path, or the one a
/// registration (POST dots-data) carries in its body. None: it names none (or the body
/// does not parse, which the data channel itself reports).
fn acting_cuid(req: &data::Request) -> Option<String> {
    match restconf::resource(req.path).ok()? {
        Resource::Client(c)
        | Resource::Aliases(c)
        | Resource::Alias(c, _)
        | Resource::Acls(c)
        | Resource::Acl(c, _) => Some(c),
        Resource::DotsData if req.method == "POST" => {
            let v: serde_json::Value = serde_json::from_slice(req.body).ok()?;
            let cuid = v
                .get("ietf-dots-data-channel:dots-client")?
                .get(0)?
                .get("cuid")?
                .as_str()?;
            Some(cuid.to_string())
        }
        Resource::DotsData | Resource::Capabilities => None,
    }
}

/// A cuid the client may not take: 409 when another client holds it, 403 when the client
/// holds as many as it may, 503 when the binding could not be stored.
fn cuid_refusal(r: Refusal) -> RestconfError {
    match r {
        Refusal::Conflict { diagnostic, .. } => {
            RestconfError::new(ErrorTag::DataExists, diagnostic)
        }
        Refusal::Forbidden(t) => RestconfError::new(ErrorTag::AccessDenied, t),
        other => data::engine_refusal(other),
    }
}

#[cfg(test)]
mod tests {
    //! The data channel's requests through the engine: the datapath and the store follow.

    use std::collections::BTreeMap;

    use ipnet::IpNet;
    use serde_json::{json, Value};

    use super::super::*;
    use crate::data::service::{self as data};
    use crate::data::SharedData;
    use crate::data::{restconf, DataChannel};
    use crate::datapath::compile::name_hash;
    use crate::datapath::MemoryMitigator;
    use crate::engine::journal::{Journal, MemoryJournal};
    use crate::engine::ClientPolicy;
    use crate::engine::Engine;
    use crate::signal::message::{Lifetime, Scope};

    const D: &str = restconf::DOTS_DATA;
    const A: (&str, &str) = ("a", "cuid-a");

    /// Clients a (198.51.100.0/24) and b (203.0.113.0/24), no terminating period; with a
    /// journal, what it holds is restored first and changes go to it.
    fn fixture(journal: Option<&MemoryJournal>) -> Control<MemoryMitigator> {
        let prefixes: BTreeMap<String, Vec<IpNet>> = [
            ("a".to_string(), vec!["198.51.100.0/24".parse().unwrap()]),
            ("b".to_string(), vec!["203.0.113.0/24".parse().unwrap()]),
        ]
        .into();
        let snapshot = journal.map(|j| j.snapshot()).unwrap_or_default();
        let (channel, cleanup) = DataChannel::restore(prefixes, &snapshot.data_clients);
        let acls = channel.acl_entries();
        let data = SharedData::new(channel);
        let journal: Box<dyn Journal> = match journal {
            Some(j) => Box::new(j.clone()),
            None => Box::new(crate::engine::journal::NoJournal),
        };
        let mut engine = Engine::new(
            MemoryMitigator::new(),
            vec![
                ClientPolicy::fixture("a", &["198.51.100.0/24"]),
                ClientPolicy::fixture("b", &["203.0.113.0/24"]),
            ],
        )
        .with_terminating_period(0)
        .with_data_source(Box::new(data.clone()))
        .with_journal(journal);
        engine.restore(&snapshot, acls, cleanup, 1000).unwrap();
        Control::new(engine, data)
    }

    fn call(
        c: &mut Control<MemoryMitigator>,
        who: (&str, &str),
        method: &str,
        path: &str,
        body: Value,
    ) -> data::Response {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        c.data_request(
            &data::Peer {
                client: Some(who.0),
                cuid: who.1,
            },
            &data::Request {
                method,
                path,
                query,
                body: &body,
            },
            1000,
        )
    }

    fn tag(r: &data::Response) -> String {
        r.body.as_ref().unwrap()["ietf-restconf:errors"]["error"][0]["error-tag"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A registered client without ACLs reads an empty `acls` container (200), not 404.
    fn no_acls(r: &data::Response) -> bool {
        r.status == 200 && r.body == Some(json!({"ietf-dots-data-channel:acls": {}}))
    }

    /// A data-channel client may register and use a cuid of its choosing (as on the signal
    /// channel); a cuid another client holds gets 409, in the body or in the path.
    #[test]
    fn a_chosen_cuid_is_the_clients_and_nobody_elses() {
        let mut f = fixture(None);
        let reg = |cuid: &str| json!({"ietf-dots-data-channel:dots-client": [{"cuid": cuid}]});
        assert_eq!(call(&mut f, A, "POST", D, reg("chosen-1")).status, 201);
        assert_eq!(f.engine.cuid_holder("chosen-1"), Some("a"));
        let b = ("b", "cuid-b");
        let r = call(&mut f, b, "POST", D, reg("chosen-1"));
        assert_eq!((r.status, tag(&r)), (409, "data-exists".to_string()));
        let r = call(
            &mut f,
            b,
            "GET",
            &format!("{D}/dots-client=chosen-1"),
            Value::Null,
        );
        assert_eq!(r.status, 409);
        let r = call(
            &mut f,
            A,
            "GET",
            &format!("{D}/dots-client=chosen-1"),
            Value::Null,
        );
        assert_eq!(r.status, 200);
    }

    fn register(c: &mut Control<MemoryMitigator>) {
        let r = call(
            c,
            A,
            "POST",
            D,
            json!({"ietf-dots-data-channel:dots-client": [{"cuid": "cuid-a"}]}),
        );
        assert_eq!(r.status, 201);
    }

    fn rfc_acl() -> Value {
        json!({"ietf-dots-data-channel:acls": {"acl": [{
            "name": "sample-ipv4-acl", "type": "ipv4-acl-type", "activation-type": "immediate",
            "aces": {"ace": [{"name": "rule1", "matches": {"ipv4": {
                "destination-ipv4-network": "198.51.100.0/24", "source-ipv4-network": "192.0.2.0/24"}},
                "actions": {"forwarding": "drop"}}]}}]}})
    }

    #[test]
    fn acls_drive_the_datapath_and_report_statistics() {
        let mut f = fixture(None);
        register(&mut f);
        let c = format!("{D}/dots-client=cuid-a");
        assert_eq!(call(&mut f, A, "POST", &c, rfc_acl()).status, 201);
        let ids = f.engine.mitigator().installed();
        assert_eq!(ids.len(), 1, "immediate: the baseline is live");
        // Pretend the XDP filter counted 3 packets on rule1.
        let counted = f.engine.mitigator().counters(ids[0]).unwrap().unwrap();
        assert_eq!(counted.acl[0].name_hash, name_hash("sample-ipv4-acl/rule1"));
        let got = call(
            &mut f,
            A,
            "GET",
            &format!("{c}/acls/acl=sample-ipv4-acl?content=all"),
            Value::Null,
        );
        assert_eq!(got.status, 200);
        let body = got.body.unwrap();
        let acl = &body["ietf-dots-data-channel:acls"]["acl"][0];
        assert_eq!(acl["aces"]["ace"][0]["statistics"]["matched-packets"], "0");
        assert_eq!(acl["pending-lifetime"], 10080);
        // Deactivate through PUT: nothing live any more.
        let mut off = rfc_acl()["ietf-dots-data-channel:acls"]["acl"].clone();
        off[0]["activation-type"] = json!("deactivate");
        let put = json!({"ietf-dots-data-channel:acl": off});
        assert_eq!(
            call(
                &mut f,
                A,
                "PUT",
                &format!("{c}/acls/acl=sample-ipv4-acl"),
                put
            )
            .status,
            204
        );
        assert!(f.engine.mitigator().installed().is_empty());
        // What the datapath cannot express: 400 naming the field; nothing stored.
        let mut bad = rfc_acl();
        bad["ietf-dots-data-channel:acls"]["acl"][0]["name"] = json!("bad");
        bad["ietf-dots-data-channel:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["ipv4"]["ecn"] =
            json!(1);
        let r = call(&mut f, A, "POST", &c, bad);
        assert_eq!((r.status, tag(&r)), (400, "invalid-value".into()));
        assert_eq!(
            call(&mut f, A, "GET", &format!("{c}/acls/acl=bad"), Value::Null).status,
            404
        );
        // Foreign destination: 403.
        let mut foreign = rfc_acl();
        foreign["ietf-dots-data-channel:acls"]["acl"][0]["name"] = json!("foreign");
        foreign["ietf-dots-data-channel:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["ipv4"]
            ["destination-ipv4-network"] = json!("203.0.113.0/24");
        assert_eq!(call(&mut f, A, "POST", &c, foreign).status, 403);
        assert_eq!(
            call(
                &mut f,
                A,
                "DELETE",
                &format!("{c}/acls/acl=sample-ipv4-acl"),
                Value::Null
            )
            .status,
            204
        );
        assert!(no_acls(&call(
            &mut f,
            A,
            "GET",
            &format!("{c}/acls"),
            Value::Null
        )));
    }

    #[test]
    fn when_mitigating_acls_follow_the_clients_mitigations() {
        let mut f = fixture(None);
        register(&mut f);
        let mut acl = rfc_acl();
        acl["ietf-dots-data-channel:acls"]["acl"][0]["activation-type"] =
            json!("activate-when-mitigating");
        assert_eq!(
            call(&mut f, A, "POST", &format!("{D}/dots-client=cuid-a"), acl).status,
            201
        );
        assert!(f.engine.mitigator().installed().is_empty());
        // The client asks for mitigation of one address.
        let scope = Scope::new(
            vec!["198.51.100.7/32".parse().unwrap()],
            Lifetime::Seconds(60),
        );
        f.engine.put("a", "cuid-a", 1, scope, false, 1000).unwrap();
        assert_eq!(
            f.engine.mitigator().installed().len(),
            2,
            "mitigation + baseline"
        );
        // Withdrawn, and gone once its terminating period (0 here) is over.
        f.engine.delete("cuid-a", 1, 1000).unwrap();
        f.tick(1001);
        assert!(f.engine.mitigator().installed().is_empty());
    }

    #[test]
    fn data_survives_a_restart_and_expires() {
        let journal = MemoryJournal::new();
        {
            let mut f = fixture(Some(&journal));
            register(&mut f);
            assert_eq!(
                call(
                    &mut f,
                    A,
                    "POST",
                    &format!("{D}/dots-client=cuid-a"),
                    rfc_acl()
                )
                .status,
                201
            );
        }
        // A restart installs the stored ACLs with the rest (there is no separate sync).
        let mut f = fixture(Some(&journal));
        assert_eq!(f.engine.mitigator().installed().len(), 1);
        let got = call(
            &mut f,
            A,
            "GET",
            &format!("{D}/dots-client=cuid-a/acls"),
            Value::Null,
        );
        assert_eq!(got.status, 200);
        f.tick(1000 + 10080 * 60);
        assert!(f.engine.mitigator().installed().is_empty());
        assert!(no_acls(&call(
            &mut f,
            A,
            "GET",
            &format!("{D}/dots-client=cuid-a/acls"),
            Value::Null
        )));
    }

    #[test]
    fn an_edit_the_store_cannot_record_changes_nothing() {
        let journal = MemoryJournal::new();
        let mut f = fixture(Some(&journal));
        register(&mut f);
        journal.fail(true);
        let r = call(
            &mut f,
            A,
            "POST",
            &format!("{D}/dots-client=cuid-a"),
            rfc_acl(),
        );
        assert_eq!((r.status, tag(&r)), (503, "operation-failed".into()));
        assert!(
            f.engine.mitigator().installed().is_empty(),
            "the baseline is not left behind"
        );
        journal.fail(false);
        let r = call(
            &mut f,
            A,
            "GET",
            &format!("{D}/dots-client=cuid-a/acls"),
            Value::Null,
        );
        assert!(no_acls(&r), "the ACL was not kept");
        let r = call(
            &mut f,
            A,
            "POST",
            &format!("{D}/dots-client=cuid-a"),
            rfc_acl(),
        );
        assert_eq!(
            r.status, 201,
            "the same request once the store writes again"
        );
    }
}
