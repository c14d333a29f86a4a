//! The data channel of a DOTS gateway (`[upstream]` and no datapath). Its aliases are kept
//! here: a relayed mitigation request carries the targets an `alias-name` stands for, so
//! they take effect upstream. ACLs are not relayed to the upstream data channel, and this
//! server has no filter that could apply them, so writing one is answered 501 naming what
//! is not relayed, rather than accepted and never applied.

use serde_json::Value;

use super::restconf::{ErrorTag, Resource, RestconfError};

/// What a gateway does not do with a data-channel request: Some(501) for one that writes
/// ACLs (PUT of an ACL or the list; POST or PUT of a client or registration whose body
/// holds ACLs).
pub fn not_relayed(resource: &Resource, method: &str, body: &[u8]) -> Option<RestconfError> {
    let writes_acls = match (resource, method) {
        (Resource::Acl(..) | Resource::Acls(_), "PUT" | "POST" | "PATCH") => true,
        (Resource::Client(_) | Resource::DotsData, "PUT" | "POST" | "PATCH") => {
            serde_json::from_slice::<Value>(body).is_ok_and(|v| holds_acls(&v, 0))
        }
        _ => false,
    };
    writes_acls.then(|| {
        RestconfError::new(
            ErrorTag::OperationNotImplemented,
            "this DOTS gateway does not relay data-channel ACLs to its upstream server and \
             has no filter of its own to apply them: ask the upstream server's data channel \
             directly (aliases are kept here, and a relayed mitigation request carries the \
             targets its alias-name stands for)",
        )
    })
}

/// Whether a JSON body holds an `acls` container (at the top, in a client, or below).
fn holds_acls(v: &Value, depth: usize) -> bool {
    match v {
        _ if depth > 4 => false,
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k == "acls" || k.ends_with(":acls") || holds_acls(v, depth + 1)),
        Value::Array(a) => a.iter().any(|v| holds_acls(v, depth + 1)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_writes_are_named_and_the_rest_served() {
        let acl = Resource::Acl("c".into(), "x".into());
        assert_eq!(not_relayed(&acl, "PUT", b"{}").unwrap().status(), 501);
        assert!(not_relayed(&acl, "GET", b"").is_none());
        assert!(not_relayed(&acl, "DELETE", b"").is_none());
        let client = Resource::Client("c".into());
        let with = br#"{"ietf-dots-data-channel:acls":{"acl":[]}}"#;
        assert!(not_relayed(&client, "POST", with).is_some());
        let reg = br#"{"ietf-dots-data-channel:dots-client":[{"cuid":"c","acls":{}}]}"#;
        assert!(not_relayed(&Resource::DotsData, "POST", reg).is_some());
        let aliases = br#"{"ietf-dots-data-channel:aliases":{"alias":[]}}"#;
        assert!(not_relayed(&client, "POST", aliases).is_none());
        assert!(not_relayed(&Resource::Alias("c".into(), "a".into()), "PUT", b"{}").is_none());
    }
}
