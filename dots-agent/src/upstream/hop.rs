//! Hop-Limit (RFC 8768) on the server's request path: a relayed request carries Hop-Limit
//! (16 when it starts here, one less at each relay); a request that arrives with 1 left
//! would loop on, so it ends in 5.08 (Hop Limit Reached) naming where and from whom. The
//! value that arrived is handed to the relay for the operation, which stores the one to send
//! on with its mapping.

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

use crate::signal::session::Reply;

/// The Hop-Limit option's number (RFC 8768 §3).
pub const OPTION: u16 = 16;
/// What a relay starts with (RFC 8768 §3: the default initial value).
pub const INITIAL: u8 = 16;

/// The Hop-Limit of a request: None without the option; Err with the 4.00 to send when the
/// option is malformed (RFC 8768: one byte, 1-255).
pub fn of(msg: &Packet) -> Result<Option<u8>, String> {
    let Some(values) = msg.get_option(CoapOption::Unknown(OPTION)) else {
        return Ok(None);
    };
    match values.front().map(|v| v.as_slice()) {
        Some([n]) if *n >= 1 && values.len() == 1 => Ok(Some(*n)),
        _ => Err("Hop-Limit must be one option of one byte, 1 to 255 (RFC 8768)".into()),
    }
}

/// What a relayed request carries on: one less than arrived, or [`INITIAL`].
pub fn next(arrived: Option<u8>) -> u8 {
    arrived.map_or(INITIAL, |n| n.saturating_sub(1))
}

/// A response with `code` and a diagnostic, for the request `msg`.
pub(super) fn refuse(msg: &Packet, code: ResponseType, diagnostic: String) -> Reply {
    let mut p = Packet::new();
    p.set_token(msg.get_token().to_vec());
    p.header.code = MessageClass::Response(code);
    p.payload = diagnostic.into_bytes();
    Reply::Response(p)
}

/// Checks the Hop-Limit of a request arriving at `here` from the client `from`: Ok with what
/// arrived, or the reply that ends it (4.00 malformed, 5.08 when it must not go on).
#[allow(clippy::result_large_err)] // a Reply is what the session sends; made once per refusal
pub fn check(msg: &Packet, here: &str, from: &str) -> Result<Option<u8>, Reply> {
    match of(msg) {
        Err(e) => Err(refuse(msg, ResponseType::BadRequest, e)),
        Ok(Some(1)) => Err(refuse(
            msg,
            ResponseType::HopLimitReached,
            format!(
                "hop limit reached at {here} on a request relayed by {from}: a loop of DOTS \
                 gateways ({from} -> {here} -> ...), or a chain longer than {INITIAL} hops"
            ),
        )),
        Ok(h) => Ok(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> Packet {
        let mut p = Packet::new();
        p.set_token(vec![7]);
        for v in values {
            p.add_option(CoapOption::Unknown(OPTION), v.to_vec());
        }
        p
    }

    #[test]
    fn limits_are_read_decremented_and_enforced() {
        assert_eq!(check(&with(&[]), "a", "b").ok(), Some(None));
        assert_eq!(check(&with(&[&[5]]), "a", "b").ok(), Some(Some(5)));
        assert_eq!(next(None), 16);
        assert_eq!(next(Some(5)), 4);
        let Err(Reply::Response(r)) = check(&with(&[&[1]]), "gw-a", "gw-b") else {
            panic!("1 left must end the request");
        };
        assert_eq!(
            r.header.code,
            MessageClass::Response(ResponseType::HopLimitReached)
        );
        assert_eq!(r.get_token(), &[7]);
        let text = String::from_utf8(r.payload).unwrap();
        assert!(text.contains("gw-b -> gw-a"), "{text}");
        for bad in [&[][..], &[0], &[1, 2]] {
            let Err(Reply::Response(r)) = check(&with(&[bad]), "a", "b") else {
                panic!("{bad:?} is malformed");
            };
            assert_eq!(
                r.header.code,
                MessageClass::Response(ResponseType::BadRequest)
            );
        }
    }
}
