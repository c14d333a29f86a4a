//! RESTCONF pieces (RFC 8040): the error body of §7.1 with its HTTP status, the resource
//! paths of the DOTS data channel, query parameters, and host-meta discovery (§3.1).

use serde_json::{json, Value};

/// The RESTCONF root this server announces in host-meta.
pub const ROOT: &str = "/restconf";
/// `{root}/data/ietf-dots-data-channel:dots-data`.
pub const DOTS_DATA: &str = "/restconf/data/ietf-dots-data-channel:dots-data";
pub const MEDIA_TYPE: &str = "application/yang-data+json";

/// RFC 8040 §7 error-tags used here, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorTag {
    /// 400: a required node is missing (RFC 8783 names it missing-attribute).
    MissingAttribute,
    InvalidValue,
    UnknownElement,
    MalformedMessage,
    /// 403
    AccessDenied,
    /// 404
    InvalidValueNotFound,
    /// 405
    OperationNotSupported,
    /// 501 (RFC 8040 §7: operation-not-supported, 405 or 501): not done by this server.
    OperationNotImplemented,
    /// 408: the request did not arrive in time (error-tag operation-failed).
    RequestTimeout,
    /// 409
    DataExists,
    ResourceDenied,
    /// 413
    TooBig,
    /// 415
    UnsupportedMedia,
    /// 503
    OperationFailed,
}

impl ErrorTag {
    pub fn status(self) -> u16 {
        match self {
            ErrorTag::MissingAttribute
            | ErrorTag::InvalidValue
            | ErrorTag::UnknownElement
            | ErrorTag::MalformedMessage => 400,
            ErrorTag::AccessDenied => 403,
            ErrorTag::InvalidValueNotFound => 404,
            ErrorTag::OperationNotSupported => 405,
            ErrorTag::OperationNotImplemented => 501,
            ErrorTag::RequestTimeout => 408,
            ErrorTag::DataExists | ErrorTag::ResourceDenied => 409,
            ErrorTag::TooBig => 413,
            ErrorTag::UnsupportedMedia => 415,
            ErrorTag::OperationFailed => 503,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorTag::MissingAttribute => "missing-attribute",
            ErrorTag::InvalidValue | ErrorTag::InvalidValueNotFound => "invalid-value",
            ErrorTag::UnsupportedMedia => "invalid-value",
            ErrorTag::UnknownElement => "unknown-element",
            ErrorTag::MalformedMessage => "malformed-message",
            ErrorTag::AccessDenied => "access-denied",
            ErrorTag::OperationNotSupported | ErrorTag::OperationNotImplemented => {
                "operation-not-supported"
            }
            ErrorTag::DataExists => "data-exists",
            ErrorTag::ResourceDenied => "resource-denied",
            ErrorTag::TooBig => "too-big",
            ErrorTag::OperationFailed | ErrorTag::RequestTimeout => "operation-failed",
        }
    }

    fn error_type(self) -> &'static str {
        match self {
            ErrorTag::MalformedMessage
            | ErrorTag::OperationNotSupported
            | ErrorTag::OperationNotImplemented
            | ErrorTag::TooBig
            | ErrorTag::UnsupportedMedia
            | ErrorTag::RequestTimeout
            | ErrorTag::AccessDenied => "protocol",
            _ => "application",
        }
    }
}

/// A refusal: HTTP status from the tag, and an `ietf-restconf:errors` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestconfError {
    pub tag: ErrorTag,
    pub message: String,
}

impl RestconfError {
    pub fn new(tag: ErrorTag, message: impl Into<String>) -> Self {
        RestconfError {
            tag,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorTag::InvalidValue, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorTag::InvalidValueNotFound, message)
    }
    pub fn status(&self) -> u16 {
        self.tag.status()
    }
    pub fn body(&self) -> Value {
        json!({"ietf-restconf:errors": {"error": [{
            "error-type": self.tag.error_type(),
            "error-tag": self.tag.label(),
            "error-message": self.message,
        }]}})
    }
    /// A JSON body that did not parse into the model: serde's message decides the tag.
    pub fn from_json(e: &serde_json::Error) -> Self {
        let text = e.to_string();
        let tag = if text.starts_with("unknown field") {
            ErrorTag::UnknownElement
        } else if text.starts_with("missing field") {
            ErrorTag::MissingAttribute
        } else if e.is_syntax() || e.is_eof() {
            ErrorTag::MalformedMessage
        } else {
            ErrorTag::InvalidValue
        };
        RestconfError::new(tag, format!("request body: {text}"))
    }
}

/// host-meta (RFC 6415) pointing at the RESTCONF root (RFC 8040 §3.1).
pub fn host_meta() -> String {
    format!(
        "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  \
         <Link rel='restconf' href='{ROOT}'/>\n</XRD>\n"
    )
}

/// Percent-decodes one path segment or query value; None if malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A data-channel resource below `dots-data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    DotsData,
    Capabilities,
    Client(String),
    Aliases(String),
    Alias(String, String),
    Acls(String),
    Acl(String, String),
}

/// Parses a request path (without query). Errors are 404 (no such resource).
pub fn resource(path: &str) -> Result<Resource, RestconfError> {
    let rest = path
        .strip_prefix(DOTS_DATA)
        .ok_or_else(|| RestconfError::not_found(format!("no resource {path}")))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        match rest.strip_prefix('/') {
            Some(r) => r.split('/').collect(),
            None => return Err(RestconfError::not_found(format!("no resource {path}"))),
        }
    };
    let key = |seg: &str, list: &str| -> Result<Option<String>, RestconfError> {
        match seg.strip_prefix(list).and_then(|s| s.strip_prefix('=')) {
            Some(k) => {
                let k = percent_decode(k).filter(|k| !k.is_empty()).ok_or_else(|| {
                    RestconfError::invalid(format!("{list} key {k:?} is empty or badly encoded"))
                })?;
                Ok(Some(k))
            }
            None => Ok(None),
        }
    };
    let nf = || RestconfError::not_found(format!("no resource {path}"));
    match segments.as_slice() {
        [] => Ok(Resource::DotsData),
        ["capabilities"] => Ok(Resource::Capabilities),
        [c, tail @ ..] => {
            let cuid = key(c, "dots-client")?.ok_or_else(nf)?;
            match tail {
                [] => Ok(Resource::Client(cuid)),
                ["aliases"] => Ok(Resource::Aliases(cuid)),
                ["acls"] => Ok(Resource::Acls(cuid)),
                ["aliases", a] => Ok(Resource::Alias(cuid, key(a, "alias")?.ok_or_else(nf)?)),
                ["acls", a] => Ok(Resource::Acl(cuid, key(a, "acl")?.ok_or_else(nf)?)),
                _ => Err(nf()),
            }
        }
    }
}

/// Query parameters, decoded; malformed ones are a 400.
pub fn query(q: Option<&str>) -> Result<Vec<(String, String)>, RestconfError> {
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match (percent_decode(k), percent_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(RestconfError::invalid(format!(
                    "query parameter {kv:?} is badly encoded"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        let d = DOTS_DATA;
        assert_eq!(resource(d), Ok(Resource::DotsData));
        assert_eq!(
            resource(&format!("{d}/capabilities")),
            Ok(Resource::Capabilities)
        );
        assert_eq!(
            resource(&format!("{d}/dots-client=abc/acls/acl=my%20acl")),
            Ok(Resource::Acl("abc".into(), "my acl".into()))
        );
        assert_eq!(
            resource(&format!("{d}/dots-client=abc/aliases/")),
            Ok(Resource::Aliases("abc".into()))
        );
        assert_eq!(
            resource(&format!("{d}/dots-client=abc/other"))
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            resource(&format!("{d}/dots-client=")).unwrap_err().status(),
            400
        );
        assert_eq!(resource("/restconf/data/x").unwrap_err().status(), 404);
        assert_eq!(resource(&format!("{d}x")).unwrap_err().status(), 404);
        assert_eq!(
            resource(&format!("{d}/dots-client=a/acls/acl=%zz"))
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn errors_have_the_restconf_shape() {
        let e = RestconfError::new(ErrorTag::DataExists, "acl x exists");
        assert_eq!(e.status(), 409);
        let b = e.body();
        assert_eq!(
            b["ietf-restconf:errors"]["error"][0]["error-tag"],
            "data-exists"
        );
        assert_eq!(
            b["ietf-restconf:errors"]["error"][0]["error-message"],
            "acl x exists"
        );
        let j = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(RestconfError::from_json(&j).tag, ErrorTag::MalformedMessage);
    }
}
