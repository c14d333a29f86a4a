//! The data channel's state and request handling, without I/O: registrations, aliases and
//! ACLs per cuid. A request is (method, path, query, body) from an authenticated peer; the
//! answer is an HTTP status and an optional JSON body (RESTCONF errors included). A request
//! that changes a client's data is not applied here: it comes back as an [`Edit`], which
//! the engine puts into the datapath and stores (one transaction) before
//! [`DataChannel::apply`] makes it; so a change the datapath refuses, or the store cannot
//! record, changes nothing.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};
use xdp_common::Counter;

use super::mapping;
use super::model::{self, Acl, Alias, Content};
use super::restconf::{self, ErrorTag, Resource, RestconfError};
use super::state::{ClientData, Expiring, Result};
pub use super::state::{DataChannel, Edit, Response};
use crate::datapath::compile::name_hash;
use crate::engine::Refusal;

/// Who is asking: the configured client name (None: valid certificate, not configured) and
/// the cuid of its certificate.
pub struct Peer<'a> {
    pub client: Option<&'a str>,
    pub cuid: &'a str,
}

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// Matched packets and octets per ACL entry name hash of a client (the engine's count).
pub type AclCounts<'a> = &'a dyn Fn(&str) -> HashMap<u64, Counter>;

/// What a request comes to.
pub enum Outcome {
    /// Answered; nothing changed.
    Done(Response),
    /// A change to one client's data, to be applied by the engine and then
    /// [`DataChannel::apply`].
    Edit(Edit),
}

pub(super) fn lifetime_end(now: u64) -> u64 {
    now + model::DEFAULT_LIFETIME_MINUTES * 60
}

fn minutes_left(expires: u64, now: u64) -> i64 {
    (expires.saturating_sub(now).div_ceil(60)) as i64
}

/// The engine's refusal of an edit, as a RESTCONF error.
pub fn engine_refusal(r: Refusal) -> RestconfError {
    match r {
        Refusal::BadRequest(s) => {
            RestconfError::invalid(format!("the datapath cannot hold this: {s}"))
        }
        Refusal::Conflict { diagnostic, .. } | Refusal::HeldByOther { diagnostic, .. } => {
            RestconfError::new(ErrorTag::ResourceDenied, diagnostic)
        }
        Refusal::Unavailable(s)
        | Refusal::Forbidden(s)
        | Refusal::NotFound(s)
        | Refusal::Unprocessable(s) => RestconfError::new(ErrorTag::OperationFailed, s),
    }
}

impl DataChannel {
    /// The aliases of a cuid, for `alias-name` in signal-channel requests.
    pub fn alias(&self, cuid: &str, name: &str) -> Option<Alias> {
        self.clients
            .get(cuid)?
            .aliases
            .iter()
            .find(|a| a.item.name == name)
            .map(|a| a.item.clone())
    }

    /// Routes a request: answered at once, or a change for the engine to make.
    pub fn handle(&mut self, peer: &Peer, req: &Request, now: u64, counts: AclCounts) -> Outcome {
        self.staged = None;
        let result = self.route(peer, req, now, counts);
        match (result, self.staged.take()) {
            (Ok(response), Some(mut edit)) => {
                edit.response = response;
                Outcome::Edit(edit)
            }
            (Ok(response), None) => Outcome::Done(response),
            (Err(e), _) => Outcome::Done(e.into()),
        }
    }

    fn route(
        &mut self,
        peer: &Peer,
        req: &Request,
        now: u64,
        counts: AclCounts,
    ) -> Result<Response> {
        let resource = restconf::resource(req.path)?;
        let query = restconf::query(req.query)?;
        let Some(client) = peer.client else {
            return Err(RestconfError::new(
                ErrorTag::AccessDenied,
                "this certificate belongs to no configured DOTS client",
            ));
        };
        let own = |cuid: &str| -> Result<()> {
            if cuid != peer.cuid {
                return Err(RestconfError::new(
                    ErrorTag::AccessDenied,
                    format!(
                        "dots-client={cuid} is not yours (your cuid is {})",
                        peer.cuid
                    ),
                ));
            }
            Ok(())
        };
        let content = match query
            .iter()
            .find(|(k, _)| k == "content")
            .map(|(_, v)| v.as_str())
        {
            None | Some("all") => Content::All,
            Some("config") => Content::Config,
            Some("nonconfig") | Some("non-config") => Content::NonConfig,
            Some(other) => {
                return Err(RestconfError::invalid(format!(
                    "content={other}: use all, config or nonconfig"
                )))
            }
        };
        let method = req.method;
        if self.gateway {
            if let Some(e) = super::gateway::not_relayed(&resource, method, req.body) {
                return Err(e);
            }
        }
        match (&resource, method) {
            (Resource::Capabilities, "GET") => Ok(Response::json(200, mapping::capabilities())),
            (Resource::DotsData, "POST") => self.register(client, peer.cuid, req.body, true),
            (Resource::DotsData, "GET") => match self.clients.contains_key(peer.cuid) {
                true => Ok(Response::json(
                    200,
                    json!({"ietf-dots-data-channel:dots-data": {
                        "dots-client": [self.client_view(peer.cuid, now, content, counts)],
                        "capabilities": mapping::capabilities()["ietf-dots-data-channel:capabilities"]}}),
                )),
                false => Ok(Response::json(
                    200,
                    json!({"ietf-dots-data-channel:dots-data": {
                        "capabilities": mapping::capabilities()["ietf-dots-data-channel:capabilities"]}}),
                )),
            },
            (Resource::Client(c), "PUT") => {
                own(c)?;
                self.register(client, c, req.body, false)
            }
            (Resource::Client(c), m) => {
                own(c)?;
                self.registered(c)?;
                match m {
                    "DELETE" => {
                        self.commit(c, None)?;
                        Ok(Response::empty(204))
                    }
                    "GET" => Ok(Response::json(
                        200,
                        json!({"ietf-dots-data-channel:dots-client": [self.client_view(c, now, content, counts)]}),
                    )),
                    "POST" => self.post_children(c, req.body, &query, now),
                    _ => Err(not_allowed(m)),
                }
            }
            (Resource::Aliases(c), "GET") => {
                own(c)?;
                let d = self.registered(c)?;
                let list: Vec<Value> = d
                    .aliases
                    .iter()
                    .map(|a| alias_view(a, now, content))
                    .collect();
                Ok(Response::json(200, container("aliases", "alias", list)))
            }
            (Resource::Alias(c, name), m) => {
                own(c)?;
                let d = self.registered(c)?.clone();
                let at = d.aliases.iter().position(|a| &a.item.name == name);
                match (m, at) {
                    ("GET", Some(i)) => Ok(Response::json(
                        200,
                        json!({"ietf-dots-data-channel:alias": [alias_view(&d.aliases[i], now, content)]}),
                    )),
                    ("DELETE", Some(i)) => {
                        let mut d = d;
                        d.aliases.remove(i);
                        self.commit(c, Some(d))?;
                        Ok(Response::empty(204))
                    }
                    ("GET" | "DELETE", None) => {
                        Err(RestconfError::not_found(format!("no alias {name:?}")))
                    }
                    ("PUT", _) => {
                        let alias =
                            one_of::<Alias>(req.body, "ietf-dots-data-channel:alias", name)?;
                        let alias = self.check_alias(client, alias)?;
                        let mut d = d;
                        let created = at.is_none();
                        let e = Expiring {
                            item: alias,
                            expires: lifetime_end(now),
                        };
                        match at {
                            Some(i) => d.aliases[i] = e,
                            None => {
                                if d.aliases.len() >= model::MAX_ALIASES {
                                    return Err(quota("aliases", model::MAX_ALIASES));
                                }
                                d.aliases.push(e)
                            }
                        }
                        self.commit(c, Some(d))?;
                        Ok(Response::empty(if created { 201 } else { 204 }))
                    }
                    (m, _) => Err(not_allowed(m)),
                }
            }
            (Resource::Acls(c), "GET") => {
                own(c)?;
                let d = self.registered(c)?;
                let list = self.acl_views(d, None, now, content, counts);
                Ok(Response::json(200, container("acls", "acl", list)))
            }
            (Resource::Acl(c, name), m) => {
                own(c)?;
                let d = self.registered(c)?.clone();
                let at = d.acls.iter().position(|a| &a.item.name == name);
                match (m, at) {
                    ("GET", Some(_)) => {
                        let list = self.acl_views(&d, Some(name), now, content, counts);
                        Ok(Response::json(
                            200,
                            json!({"ietf-dots-data-channel:acls": {"acl": list}}),
                        ))
                    }
                    ("DELETE", Some(i)) => {
                        let mut d = d;
                        d.acls.remove(i);
                        self.commit(c, Some(d))?;
                        Ok(Response::empty(204))
                    }
                    ("GET" | "DELETE", None) => {
                        Err(RestconfError::not_found(format!("no acl {name:?}")))
                    }
                    ("PUT", _) => {
                        let acl = one_of::<Acl>(req.body, "ietf-dots-data-channel:acl", name)?;
                        let mut d = d;
                        let created = at.is_none();
                        let e = Expiring {
                            item: strip_acl(acl),
                            expires: lifetime_end(now),
                        };
                        match at {
                            Some(i) => d.acls[i] = e,
                            None => {
                                if d.acls.len() >= model::MAX_ACLS {
                                    return Err(quota("ACLs", model::MAX_ACLS));
                                }
                                let i = insert_position(&d.acls, &query)?;
                                d.acls.insert(i, e)
                            }
                        }
                        self.commit(c, Some(d))?;
                        Ok(Response::empty(if created { 201 } else { 204 }))
                    }
                    (m, _) => Err(not_allowed(m)),
                }
            }
            (_, m) => Err(not_allowed(m)),
        }
    }

    fn registered(&self, cuid: &str) -> Result<&ClientData> {
        self.clients.get(cuid).ok_or_else(|| {
            RestconfError::not_found(format!(
                "dots-client {cuid} is not registered: register first (POST dots-data)"
            ))
        })
    }

    /// POST dots-data (`create`) or PUT dots-client=C: the body names the cuid.
    fn register(
        &mut self,
        client: &str,
        cuid: &str,
        body: &[u8],
        create: bool,
    ) -> Result<Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reg {
            cuid: String,
        }
        let regs: Vec<Reg> = top(body, "ietf-dots-data-channel:dots-client")?;
        let [reg] = regs.as_slice() else {
            return Err(RestconfError::invalid("register exactly one dots-client"));
        };
        if reg.cuid != cuid {
            return Err(RestconfError::new(
                ErrorTag::AccessDenied,
                format!(
                    "cuid {:?} is not the one of your certificate ({cuid})",
                    reg.cuid
                ),
            ));
        }
        if self.clients.contains_key(cuid) {
            if create {
                return Err(RestconfError::new(
                    ErrorTag::DataExists,
                    format!("{cuid} is already registered"),
                ));
            }
            return Ok(Response::empty(204));
        }
        let data = ClientData {
            name: client.to_string(),
            ..Default::default()
        };
        self.commit(cuid, Some(data))?;
        Ok(Response::empty(201))
    }

    /// POST dots-client=C with aliases or ACLs: creates them (409 if a name exists).
    fn post_children(
        &mut self,
        cuid: &str,
        body: &[u8],
        query: &[(String, String)],
        now: u64,
    ) -> Result<Response> {
        let v: Value = parse(body)?;
        let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            RestconfError::invalid(
                "POST one of ietf-dots-data-channel:aliases or ietf-dots-data-channel:acls",
            )
        })?;
        let client = self.clients[cuid].name.clone();
        let mut d = self.clients[cuid].clone();
        let (key, inner) = obj.iter().next().expect("one entry");
        match key.as_str() {
            "ietf-dots-data-channel:aliases" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Aliases {
                    alias: Vec<Alias>,
                }
                let list: Aliases = serde_json::from_value(inner.clone())
                    .map_err(|e| RestconfError::from_json(&e))?;
                for a in list.alias {
                    let a = self.check_alias(&client, a)?;
                    if d.aliases.iter().any(|x| x.item.name == a.name) {
                        return Err(RestconfError::new(
                            ErrorTag::DataExists,
                            format!("alias {:?} exists: PUT replaces it", a.name),
                        ));
                    }
                    if d.aliases.len() >= model::MAX_ALIASES {
                        return Err(quota("aliases", model::MAX_ALIASES));
                    }
                    d.aliases.push(Expiring {
                        item: a,
                        expires: lifetime_end(now),
                    });
                }
            }
            "ietf-dots-data-channel:acls" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Acls {
                    acl: Vec<Acl>,
                }
                let list: Acls = serde_json::from_value(inner.clone())
                    .map_err(|e| RestconfError::from_json(&e))?;
                let first = insert_position(&d.acls, query)?;
                for (at, a) in (first..).zip(list.acl) {
                    if d.acls.iter().any(|x| x.item.name == a.name) {
                        return Err(RestconfError::new(
                            ErrorTag::DataExists,
                            format!("acl {:?} exists: PUT replaces it", a.name),
                        ));
                    }
                    if d.acls.len() >= model::MAX_ACLS {
                        return Err(quota("ACLs", model::MAX_ACLS));
                    }
                    d.acls.insert(
                        at,
                        Expiring {
                            item: strip_acl(a),
                            expires: lifetime_end(now),
                        },
                    );
                }
            }
            other => {
                return Err(RestconfError::new(
                    ErrorTag::UnknownElement,
                    format!("cannot create {other:?} here"),
                ))
            }
        }
        self.commit(cuid, Some(d))?;
        Ok(Response::empty(201))
    }

    fn check_alias(&self, client: &str, a: Alias) -> Result<Alias> {
        let a = a.validate()?;
        let allowed = self.prefixes.get(client).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(p) = a
            .target_prefix
            .iter()
            .find(|p| !allowed.iter().any(|x| x.contains(*p)))
        {
            return Err(RestconfError::new(
                ErrorTag::AccessDenied,
                format!(
                    "alias {:?}: target {p} is outside this client's prefixes",
                    a.name
                ),
            ));
        }
        Ok(a)
    }

    fn client_view(&self, cuid: &str, now: u64, content: Content, counts: AclCounts) -> Value {
        let d = &self.clients[cuid];
        let mut v = json!({"cuid": cuid});
        if !d.aliases.is_empty() {
            v["aliases"] = json!({"alias": d.aliases.iter().map(|a| alias_view(a, now, content)).collect::<Vec<_>>()});
        }
        if !d.acls.is_empty() {
            v["acls"] = json!({"acl": self.acl_views(d, None, now, content, counts)});
        }
        v
    }

    fn acl_views(
        &self,
        d: &ClientData,
        only: Option<&str>,
        now: u64,
        content: Content,
        counts: AclCounts,
    ) -> Vec<Value> {
        let counters = counts(&d.name);
        let stats = |name: &str| {
            counters
                .get(&name_hash(name))
                .map(|c| (c.packets, c.bytes))
                .unwrap_or((0, 0))
        };
        d.acls
            .iter()
            .filter(|a| only.is_none_or(|n| a.item.name == n))
            .map(|a| a.item.view(minutes_left(a.expires, now), &stats, content))
            .collect()
    }
}

fn alias_view(a: &Expiring<Alias>, now: u64, content: Content) -> Value {
    let mut item = a.item.clone();
    if content != Content::Config {
        item.pending_lifetime = Some(minutes_left(a.expires, now));
    }
    if content == Content::NonConfig {
        return json!({"name": item.name, "pending-lifetime": item.pending_lifetime});
    }
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// Read-only nodes a client may echo back are not kept.
fn strip_acl(mut a: Acl) -> Acl {
    a.pending_lifetime = None;
    for ace in &mut a.aces.ace {
        ace.statistics = None;
    }
    a
}

fn not_allowed(m: &str) -> RestconfError {
    RestconfError::new(
        ErrorTag::OperationNotSupported,
        format!("{m} is not allowed on this resource"),
    )
}

/// A registered client's `aliases` or `acls`: non-presence containers (RFC 8783's YANG),
/// which exist with their parent, so an empty one is 200 `{"...:aliases": {}}` (RFC 7951
/// leaves an empty list out), not 404; go-dots answers the same.
fn container(name: &str, list_name: &str, list: Vec<Value>) -> Value {
    let inner = if list.is_empty() {
        json!({})
    } else {
        json!({ list_name: list })
    };
    json!({ format!("ietf-dots-data-channel:{name}"): inner })
}

fn quota(what: &str, n: usize) -> RestconfError {
    RestconfError::new(
        ErrorTag::ResourceDenied,
        format!("at most {n} {what} per client"),
    )
}

fn parse(body: &[u8]) -> Result<Value> {
    if body.is_empty() {
        return Err(RestconfError::new(
            ErrorTag::MalformedMessage,
            "this request needs a JSON body",
        ));
    }
    serde_json::from_slice(body).map_err(|e| RestconfError::from_json(&e))
}

/// A body of exactly `{key: T}`.
fn top<T: serde::de::DeserializeOwned>(body: &[u8], key: &str) -> Result<T> {
    let v = parse(body)?;
    let obj = v
        .as_object()
        .ok_or_else(|| RestconfError::invalid(format!("the body must be {{\"{key}\": ...}}")))?;
    if let Some(k) = obj.keys().find(|k| *k != key) {
        return Err(RestconfError::new(
            ErrorTag::UnknownElement,
            format!("unexpected {k:?}; expected {key:?}"),
        ));
    }
    let inner = obj.get(key).ok_or_else(|| {
        RestconfError::new(
            ErrorTag::MissingAttribute,
            format!("the body needs {key:?}"),
        )
    })?;
    serde_json::from_value(inner.clone()).map_err(|e| RestconfError::from_json(&e))
}

/// PUT of one list entry: `{key: [entry]}` whose name matches the URI's key.
fn one_of<T: serde::de::DeserializeOwned + Named>(body: &[u8], key: &str, name: &str) -> Result<T> {
    let list: Vec<T> = top(body, key)?;
    let mut it = list.into_iter();
    match (it.next(), it.next()) {
        (Some(x), None) if x.name() == name => Ok(x),
        (Some(x), None) => Err(RestconfError::invalid(format!(
            "the body's name {:?} differs from the URI's {name:?}",
            x.name()
        ))),
        _ => Err(RestconfError::invalid(format!(
            "{key} must hold exactly one entry"
        ))),
    }
}

trait Named {
    fn name(&self) -> &str;
}
impl Named for Alias {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for Acl {
    fn name(&self) -> &str {
        &self.name
    }
}

/// RESTCONF `insert` (first, last, before, after) and `point` (RFC 8040 §4.8.5-6) for a new
/// ACL: the index to insert at. Default: last.
fn insert_position(acls: &[Expiring<Acl>], query: &[(String, String)]) -> Result<usize> {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let point = || -> Result<usize> {
        let p = get("point").ok_or_else(|| {
            RestconfError::new(
                ErrorTag::MissingAttribute,
                "insert=before/after needs point=<acl path>",
            )
        })?;
        let name = p.rsplit("acl=").next().unwrap_or(p);
        acls.iter()
            .position(|a| a.item.name == name)
            .ok_or_else(|| RestconfError::invalid(format!("point {p:?}: no such acl")))
    };
    match get("insert") {
        None | Some("last") => Ok(acls.len()),
        Some("first") => Ok(0),
        Some("before") => point(),
        Some("after") => Ok(point()? + 1),
        Some(other) => Err(RestconfError::invalid(format!(
            "insert={other}: use first, last, before or after"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipnet::IpNet;

    use super::*;

    const D: &str = restconf::DOTS_DATA;

    struct Fixture {
        dc: DataChannel,
    }

    /// A data channel on its own: its edits are made at once (the datapath side is the
    /// engine's, tested in `control`).
    fn fixture(_: Option<()>) -> Fixture {
        let prefixes: BTreeMap<String, Vec<IpNet>> = [
            ("a".to_string(), vec!["198.51.100.0/24".parse().unwrap()]),
            ("b".to_string(), vec!["203.0.113.0/24".parse().unwrap()]),
        ]
        .into();
        Fixture {
            dc: DataChannel::new(prefixes),
        }
    }

    fn handle(dc: &mut DataChannel, peer: &Peer, req: &Request, now: u64) -> Response {
        match dc.handle(peer, req, now, &|_| HashMap::new()) {
            Outcome::Done(r) => r,
            Outcome::Edit(e) => dc.apply(e),
        }
    }

    fn call(
        dc: &mut DataChannel,
        who: (&str, &str),
        method: &str,
        path: &str,
        body: Value,
    ) -> Response {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        handle(
            dc,
            &Peer {
                client: Some(who.0),
                cuid: who.1,
            },
            &Request {
                method,
                path,
                query,
                body: &body,
            },
            1000,
        )
    }

    fn tag(r: &Response) -> String {
        r.body.as_ref().unwrap()["ietf-restconf:errors"]["error"][0]["error-tag"]
            .as_str()
            .unwrap()
            .to_string()
    }

    const A: (&str, &str) = ("a", "cuid-a");

    fn register(dc: &mut DataChannel) {
        let r = call(
            dc,
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
    fn registration() {
        let mut f = fixture(None);
        register(&mut f.dc);
        let again = call(
            &mut f.dc,
            A,
            "POST",
            D,
            json!({"ietf-dots-data-channel:dots-client": [{"cuid": "cuid-a"}]}),
        );
        assert_eq!((again.status, tag(&again)), (409, "data-exists".into()));
        let other = call(
            &mut f.dc,
            ("b", "cuid-b"),
            "POST",
            D,
            json!({"ietf-dots-data-channel:dots-client": [{"cuid": "cuid-a"}]}),
        );
        assert_eq!(other.status, 403);
        let put = call(
            &mut f.dc,
            A,
            "PUT",
            &format!("{D}/dots-client=cuid-a"),
            json!({"ietf-dots-data-channel:dots-client": [{"cuid": "cuid-a"}]}),
        );
        assert_eq!(put.status, 204);
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "DELETE",
                &format!("{D}/dots-client=cuid-a"),
                Value::Null
            )
            .status,
            204
        );
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "DELETE",
                &format!("{D}/dots-client=cuid-a"),
                Value::Null
            )
            .status,
            404
        );
        let bad = call(
            &mut f.dc,
            A,
            "POST",
            D,
            json!({"ietf-dots-data-channel:dots-client": [{"cuid": "cuid-a", "x": 1}]}),
        );
        assert_eq!((bad.status, tag(&bad)), (400, "unknown-element".into()));
        let unconfigured = handle(
            &mut f.dc,
            &Peer {
                client: None,
                cuid: "z",
            },
            &Request {
                method: "GET",
                path: D,
                query: None,
                body: b"",
            },
            0,
        );
        assert_eq!(unconfigured.status, 403);
    }

    #[test]
    fn aliases_and_their_errors() {
        let mut f = fixture(None);
        let c = format!("{D}/dots-client=cuid-a");
        let alias = json!({"ietf-dots-data-channel:aliases": {"alias": [{"name": "https1",
            "target-protocol": [6], "target-prefix": ["198.51.100.1/32"], "target-port-range": [{"lower-port": 443}]}]}});
        assert_eq!(
            call(&mut f.dc, A, "POST", &c, alias.clone()).status,
            404,
            "not registered"
        );
        register(&mut f.dc);
        let empty = call(&mut f.dc, A, "GET", &format!("{c}/aliases"), Value::Null);
        assert_eq!(
            (empty.status, empty.body),
            (200, Some(json!({"ietf-dots-data-channel:aliases": {}}))),
            "an empty container is empty, not missing"
        );
        let empty = call(&mut f.dc, A, "GET", &format!("{c}/acls"), Value::Null);
        assert_eq!(
            (empty.status, empty.body),
            (200, Some(json!({"ietf-dots-data-channel:acls": {}})))
        );
        assert_eq!(call(&mut f.dc, A, "POST", &c, alias.clone()).status, 201);
        assert_eq!(call(&mut f.dc, A, "POST", &c, alias).status, 409);
        let got = call(
            &mut f.dc,
            A,
            "GET",
            &format!("{c}/aliases/alias=https1"),
            Value::Null,
        );
        assert_eq!(got.status, 200);
        assert_eq!(
            got.body.unwrap()["ietf-dots-data-channel:alias"][0]["pending-lifetime"],
            10080
        );
        let put = json!({"ietf-dots-data-channel:alias": [{"name": "https1", "target-prefix": ["198.51.100.2/32"]}]});
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "PUT",
                &format!("{c}/aliases/alias=https1"),
                put.clone()
            )
            .status,
            204
        );
        assert_eq!(
            f.dc.alias("cuid-a", "https1").unwrap().target_prefix,
            vec!["198.51.100.2/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "PUT",
                &format!("{c}/aliases/alias=other"),
                put
            )
            .status,
            400,
            "name mismatch"
        );
        let foreign = json!({"ietf-dots-data-channel:alias": [{"name": "f", "target-prefix": ["203.0.113.0/24"]}]});
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "PUT",
                &format!("{c}/aliases/alias=f"),
                foreign
            )
            .status,
            403
        );
        let b = call(
            &mut f.dc,
            ("b", "cuid-b"),
            "GET",
            &format!("{c}/aliases"),
            Value::Null,
        );
        assert_eq!((b.status, tag(&b)), (403, "access-denied".into()));
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "DELETE",
                &format!("{c}/aliases/alias=https1"),
                Value::Null
            )
            .status,
            204
        );
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "DELETE",
                &format!("{c}/aliases/alias=https1"),
                Value::Null
            )
            .status,
            404
        );
        assert!(f.dc.alias("cuid-a", "https1").is_none());
    }

    #[test]
    fn insert_and_point_order_acls() {
        let mut f = fixture(None);
        register(&mut f.dc);
        let c = format!("{D}/dots-client=cuid-a");
        let named = |n: &str| {
            let mut a = rfc_acl();
            a["ietf-dots-data-channel:acls"]["acl"][0]["name"] = json!(n);
            a
        };
        assert_eq!(call(&mut f.dc, A, "POST", &c, named("x")).status, 201);
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "POST",
                &format!("{c}?insert=first"),
                named("y")
            )
            .status,
            201
        );
        let point = format!("{c}?insert=after&point=%2Fietf-dots-data-channel%3Adots-data%2Fdots-client%3Dcuid-a%2Facls%2Facl%3Dy");
        assert_eq!(call(&mut f.dc, A, "POST", &point, named("z")).status, 201);
        let got = call(
            &mut f.dc,
            A,
            "GET",
            &format!("{c}/acls?content=config"),
            Value::Null,
        )
        .body
        .unwrap();
        let names: Vec<&str> = got["ietf-dots-data-channel:acls"]["acl"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["y", "z", "x"]);
        assert!(got["ietf-dots-data-channel:acls"]["acl"][0]
            .get("pending-lifetime")
            .is_none());
        let r = call(
            &mut f.dc,
            A,
            "POST",
            &format!("{c}?insert=before&point=nope"),
            named("w"),
        );
        assert_eq!(r.status, 400);
    }

    #[test]
    fn capabilities_and_unknown_resources() {
        let mut f = fixture(None);
        let r = call(
            &mut f.dc,
            A,
            "GET",
            &format!("{D}/capabilities"),
            Value::Null,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            call(
                &mut f.dc,
                A,
                "DELETE",
                &format!("{D}/capabilities"),
                Value::Null
            )
            .status,
            405
        );
        assert_eq!(
            call(&mut f.dc, A, "GET", "/restconf/data/other", Value::Null).status,
            404
        );
        let r = call(
            &mut f.dc,
            A,
            "GET",
            &format!("{D}?content=weird"),
            Value::Null,
        );
        assert_eq!(r.status, 400);
    }
}
