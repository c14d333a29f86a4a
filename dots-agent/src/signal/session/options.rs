//! Which CoAP options a request may carry (RFC 7252 §5.4.1): an option this endpoint does
//! not recognise is ignored when elective (even number) and makes the request fail with
//! 4.02 Bad Option when critical (odd number). Kept apart from the request handling so
//! that options added later (Hop-Limit, cdid for gateways) have one place to be listed.

use coap_lite::{CoapOption, Packet};

/// Critical options this server acts on. Uri-Query is kept for the block-wise cache key
/// and otherwise has no meaning on the signal channel. Q-Block2 (31, RFC 9177), which
/// go-dots puts on every GET, is taken as asking for a block-wise answer, given in Block2
/// (RFC 7959), which libcoap and go-dots follow; answered 4.02, as RFC 9177 §4.1 expects
/// of a server without Q-Block, a go-dots client gets no data at all (libcoap 4.3.1 does
/// not retry a request whose Q-Block2 its application added). Q-Block1 (19) stays
/// unrecognised: go-dots sends no request bodies in blocks.
const CRITICAL_KNOWN: &[u16] = &[
    1,  // If-Match (efficacy updates, RFC 9132 §4.4.3)
    3,  // Uri-Host
    7,  // Uri-Port
    11, // Uri-Path
    15, // Uri-Query
    17, // Accept
    23, // Block2 (RFC 7959)
    27, // Block1 (RFC 7959)
    Q_BLOCK2,
];

/// Q-Block2 (RFC 9177).
pub const Q_BLOCK2: u16 = 31;

/// The number of a coap-lite option.
pub fn number(o: CoapOption) -> u16 {
    u16::from(o)
}

/// The first critical option of `req` this server does not recognise, if any.
pub fn unrecognised_critical(req: &Packet) -> Option<u16> {
    req.options()
        .map(|(n, _)| *n)
        .find(|n| n % 2 == 1 && !CRITICAL_KNOWN.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_critical_options_are_found_elective_ones_ignored() {
        let mut p = Packet::new();
        p.add_option(CoapOption::UriPath, b"config".to_vec());
        p.add_option(CoapOption::Block2, vec![0x06]);
        p.add_option(CoapOption::Unknown(292), vec![1, 2]); // Request-Tag: elective
        p.add_option(CoapOption::Unknown(16), vec![16]); // Hop-Limit: elective
        assert_eq!(unrecognised_critical(&p), None);
        p.add_option(CoapOption::Unknown(65001), Vec::new());
        assert_eq!(unrecognised_critical(&p), Some(65001));
        let mut q = Packet::new();
        q.add_option(CoapOption::Unknown(31), vec![0x09]); // go-dots' Q-Block2
        assert_eq!(unrecognised_critical(&q), None);
        q.add_option(CoapOption::Unknown(19), vec![0x09]); // Q-Block1
        assert_eq!(unrecognised_critical(&q), Some(19));
        assert_eq!(number(CoapOption::Block1), 27);
    }
}
