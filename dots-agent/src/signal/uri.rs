//! Signal-channel resources from CoAP Uri-Path options (RFC 9132 §4.4-§4.7): each option is
//! one path segment, in order, e.g. `.well-known` `dots` `mitigate` `cuid=X` `mid=123`.

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `mitigate/[cdid=..]/cuid=../[mid=..]`
    Mitigate {
        cdid: Option<String>,
        cuid: String,
        mid: Option<u32>,
    },
    /// `config/[sid=..]`
    Config { sid: Option<u32> },
    /// `hb`
    Heartbeat,
    /// `tm-setup/[cdid=..]/cuid=../[tsid=..]` (RFC 9244)
    TelemetrySetup {
        cdid: Option<String>,
        cuid: String,
        tsid: Option<u32>,
    },
    /// `tm/[cdid=..]/cuid=../[tmid=..]` (RFC 9244)
    Telemetry {
        cdid: Option<String>,
        cuid: String,
        tmid: Option<u32>,
    },
}

/// The 4.00 (or 4.04 for an unknown resource) diagnostic.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UriError {
    #[error("not a DOTS signal resource: the path must start with .well-known/dots")]
    NotDots,
    #[error("unknown DOTS resource {0:?}")]
    UnknownResource(String),
    #[error("empty Uri-Path segment")]
    Empty,
    #[error("{0} is required in the path")]
    Missing(&'static str),
    #[error("path segment {0:?}: {1}")]
    Bad(String, &'static str),
}

impl UriError {
    /// 4.04 for a path that names no resource, 4.00 for a malformed one.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UriError::NotDots | UriError::UnknownResource(_))
    }
}

fn value<'a>(seg: &'a str, name: &str) -> Option<&'a str> {
    seg.strip_prefix(name)?.strip_prefix('=')
}

/// An id as RFC 9132 writes it: decimal digits, no sign and no leading zero ("mid=+1" and
/// "mid=01" would otherwise name mid 1 under a second spelling).
fn number(seg: &str, v: &str) -> Result<u32, UriError> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriError::Bad(seg.into(), "expected decimal digits only"));
    }
    if v.len() > 1 && v.starts_with('0') {
        return Err(UriError::Bad(seg.into(), "leading zeros are not allowed"));
    }
    v.parse()
        .map_err(|_| UriError::Bad(seg.into(), "expected an unsigned 32-bit number"))
}

/// cdid, cuid and an optional numbered id after the resource name.
fn client_path(
    rest: &[&str],
    id_name: &str,
) -> Result<(Option<String>, String, Option<u32>), UriError> {
    let mut i = 0;
    let mut cdid = None;
    if let Some(v) = rest.get(i).and_then(|s| value(s, "cdid")) {
        cdid = Some(v.to_string());
        i += 1;
    }
    let cuid = rest
        .get(i)
        .and_then(|s| value(s, "cuid"))
        .ok_or(UriError::Missing("cuid=..."))?;
    if cuid.is_empty() {
        return Err(UriError::Bad(rest[i].into(), "cuid is empty"));
    }
    i += 1;
    let mut id = None;
    if let Some(seg) = rest.get(i) {
        let v =
            value(seg, id_name).ok_or(UriError::Bad(seg.to_string(), "unexpected path segment"))?;
        id = Some(number(seg, v)?);
        i += 1;
    }
    if let Some(extra) = rest.get(i) {
        return Err(UriError::Bad(extra.to_string(), "unexpected path segment"));
    }
    Ok((cdid, cuid.to_string(), id))
}

pub fn parse(segments: &[&str]) -> Result<Resource, UriError> {
    if segments.iter().any(|s| s.is_empty()) {
        return Err(UriError::Empty);
    }
    let ["" | ".well-known", "dots", name, rest @ ..] = segments else {
        return Err(UriError::NotDots);
    };
    if segments[0].is_empty() {
        return Err(UriError::NotDots);
    }
    match *name {
        "mitigate" => {
            let (cdid, cuid, mid) = client_path(rest, "mid")?;
            Ok(Resource::Mitigate { cdid, cuid, mid })
        }
        "tm-setup" => {
            let (cdid, cuid, tsid) = client_path(rest, "tsid")?;
            Ok(Resource::TelemetrySetup { cdid, cuid, tsid })
        }
        "tm" => {
            let (cdid, cuid, tmid) = client_path(rest, "tmid")?;
            Ok(Resource::Telemetry { cdid, cuid, tmid })
        }
        "config" => match rest {
            [] => Ok(Resource::Config { sid: None }),
            [seg] => {
                let v =
                    value(seg, "sid").ok_or(UriError::Bad(seg.to_string(), "expected sid=N"))?;
                Ok(Resource::Config {
                    sid: Some(number(seg, v)?),
                })
            }
            [_, extra, ..] => Err(UriError::Bad(extra.to_string(), "unexpected path segment")),
        },
        "hb" if rest.is_empty() => Ok(Resource::Heartbeat),
        "hb" => Err(UriError::Bad(
            rest[0].into(),
            "hb takes no further segments",
        )),
        other => Err(UriError::UnknownResource(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9132_figure_7_path() {
        let p = [
            ".well-known",
            "dots",
            "mitigate",
            "cdid=7eeaf349529eb55ed50113",
            "cuid=dz6pHjaADkaFTbjr0JGBpw",
            "mid=123",
        ];
        assert_eq!(
            parse(&p),
            Ok(Resource::Mitigate {
                cdid: Some("7eeaf349529eb55ed50113".into()),
                cuid: "dz6pHjaADkaFTbjr0JGBpw".into(),
                mid: Some(123)
            })
        );
    }

    #[test]
    fn other_resources_and_errors() {
        assert_eq!(
            parse(&[".well-known", "dots", "config", "sid=7"]),
            Ok(Resource::Config { sid: Some(7) })
        );
        assert_eq!(
            parse(&[".well-known", "dots", "config"]),
            Ok(Resource::Config { sid: None })
        );
        assert_eq!(
            parse(&[".well-known", "dots", "hb"]),
            Ok(Resource::Heartbeat)
        );
        assert_eq!(
            parse(&[".well-known", "dots", "mitigate"]),
            Err(UriError::Missing("cuid=..."))
        );
        assert_eq!(
            parse(&[".well-known", "dots", "mitigate", "cuid=", "mid=1"])
                .unwrap_err()
                .to_string(),
            "path segment \"cuid=\": cuid is empty"
        );
        assert!(matches!(
            parse(&[".well-known", "dots", "mitigate", "cuid=a", "mid=x"]),
            Err(UriError::Bad(..))
        ));
        assert!(matches!(
            parse(&[
                ".well-known",
                "dots",
                "mitigate",
                "cuid=a",
                "mid=4294967296"
            ]),
            Err(UriError::Bad(..))
        ));
        for spelling in [
            "mid=+1", "mid=01", "mid=-1", "mid= 1", "mid=1 ", "mid=", "mid=0x1",
        ] {
            assert!(
                matches!(
                    parse(&[".well-known", "dots", "mitigate", "cuid=a", spelling]),
                    Err(UriError::Bad(..))
                ),
                "{spelling} is refused"
            );
        }
        assert_eq!(
            parse(&[".well-known", "dots", "mitigate", "cuid=a", "mid=0"]),
            Ok(Resource::Mitigate {
                cdid: None,
                cuid: "a".into(),
                mid: Some(0)
            })
        );
        assert!(matches!(
            parse(&[".well-known", "dots", "config", "sid=+7"]),
            Err(UriError::Bad(..))
        ));
        assert!(matches!(
            parse(&[".well-known", "dots", "tm-setup", "cuid=a", "tsid=007"]),
            Err(UriError::Bad(..))
        ));
        assert_eq!(
            parse(&[".well-known", "dots", "", "x"]),
            Err(UriError::Empty)
        );
        assert!(parse(&["foo"]).unwrap_err().is_not_found());
        assert!(parse(&[".well-known", "dots", "nope"])
            .unwrap_err()
            .is_not_found());
        assert_eq!(
            parse(&[".well-known", "dots", "tm-setup", "cuid=a", "tsid=2"]),
            Ok(Resource::TelemetrySetup {
                cdid: None,
                cuid: "a".into(),
                tsid: Some(2)
            })
        );
    }
}
