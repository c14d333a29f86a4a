//! CoAP over TCP/TLS framing (RFC 8323 §3.2) and its signalling codes, without I/O.
//! coap-lite only speaks the UDP header; options and payload are byte-identical in both,
//! so a frame is converted to and from the UDP form around them.

use coap_lite::Packet;
use thiserror::Error;

/// Signalling codes (RFC 8323 §5): 7.01 CSM, 7.02 Ping, 7.03 Pong, 7.04 Release, 7.05 Abort.
pub const CSM: u8 = 0xe1;
pub const PING: u8 = 0xe2;
pub const PONG: u8 = 0xe3;
pub const RELEASE: u8 = 0xe4;
pub const ABORT: u8 = 0xe5;

/// Largest frame we accept (options + payload), announced in our CSM.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("token length {0} is reserved")]
    BadTokenLength(u8),
    #[error("malformed CoAP options or payload: {0}")]
    Malformed(String),
}

/// A decoded frame: a CoAP message (requests, responses), a signal, or an Empty message.
#[derive(Debug)]
pub enum Frame {
    Message(Packet),
    /// Code 0.00: over a reliable transport it "MUST be ignored" (RFC 8323 §3.3), whatever
    /// options or payload it carries, so they are not even parsed.
    Empty,
    Signal {
        code: u8,
        token: Vec<u8>,
        rest: Vec<u8>,
    },
}

/// Tries to decode one frame from the front of `buf`; returns it and the bytes used, or
/// None when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let nibble = first >> 4;
    let tkl = first & 0x0f;
    if tkl > 8 {
        return Err(FrameError::BadTokenLength(tkl));
    }
    let (ext, len) = match nibble {
        0..=12 => (0usize, nibble as usize),
        13 => match buf.get(1) {
            Some(b) => (1, *b as usize + 13),
            None => return Ok(None),
        },
        14 => match buf.get(1..3) {
            Some(b) => (2, u16::from_be_bytes([b[0], b[1]]) as usize + 269),
            None => return Ok(None),
        },
        _ => match buf.get(1..5) {
            Some(b) => (
                4,
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize + 65805,
            ),
            None => return Ok(None),
        },
    };
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(len));
    }
    let head = 1 + ext;
    let total = head + 1 + tkl as usize + len;
    if buf.len() < total {
        return Ok(None);
    }
    let code = buf[head];
    let token = buf[head + 1..head + 1 + tkl as usize].to_vec();
    let rest = &buf[head + 1 + tkl as usize..total];
    if code >= 0xe0 {
        return Ok(Some((
            Frame::Signal {
                code,
                token,
                rest: rest.to_vec(),
            },
            total,
        )));
    }
    if code == 0 {
        return Ok(Some((Frame::Empty, total)));
    }
    // Rebuild the UDP form: version 1, type NON (ignored over TCP), message id 0.
    let mut udp = Vec::with_capacity(4 + token.len() + rest.len());
    udp.push(0x50 | tkl);
    udp.push(code);
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&token);
    udp.extend_from_slice(rest);
    let p = Packet::from_bytes(&udp).map_err(|e| FrameError::Malformed(format!("{e:?}")))?;
    Ok(Some((Frame::Message(p), total)))
}

fn frame(code: u8, token: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = rest.len();
    let mut out = Vec::with_capacity(6 + token.len() + len);
    let tkl = token.len() as u8 & 0x0f;
    match len {
        0..=12 => out.push(((len as u8) << 4) | tkl),
        13..=268 => {
            out.push((13 << 4) | tkl);
            out.push((len - 13) as u8);
        }
        269..=65804 => {
            out.push((14 << 4) | tkl);
            out.extend_from_slice(&((len - 269) as u16).to_be_bytes());
        }
        _ => {
            out.push((15 << 4) | tkl);
            out.extend_from_slice(&((len - 65805) as u32).to_be_bytes());
        }
    }
    out.push(code);
    out.extend_from_slice(token);
    out.extend_from_slice(rest);
    out
}

/// Encodes a CoAP message as a TCP frame.
pub fn encode(p: &Packet) -> Result<Vec<u8>, FrameError> {
    let udp = p
        .to_bytes_unlimited()
        .map_err(|e| FrameError::Malformed(format!("{e:?}")))?;
    let tkl = (udp[0] & 0x0f) as usize;
    let token = &udp[4..4 + tkl];
    let rest = &udp[4 + tkl..];
    if rest.len() > MAX_MESSAGE {
        return Err(FrameError::TooLarge(rest.len()));
    }
    Ok(frame(udp[1], token, rest))
}

/// Our Capabilities and Settings Message: Max-Message-Size (option 2).
pub fn csm() -> Vec<u8> {
    let size = (MAX_MESSAGE as u32).to_be_bytes();
    // Option delta 2, length 3 (the value without its leading zero byte).
    let rest = [0x23, size[1], size[2], size[3]];
    frame(CSM, &[], &rest)
}

pub fn pong(token: &[u8]) -> Vec<u8> {
    frame(PONG, token, &[])
}

pub fn ping() -> Vec<u8> {
    frame(PING, &[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{CoapOption, MessageClass, RequestType};

    #[test]
    fn messages_round_trip_through_tcp_frames() {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Put);
        p.set_token(vec![9, 8, 7]);
        for s in [".well-known", "dots", "hb"] {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p.payload = vec![0xa1, 0x18, 0x31, 0xa1, 0x18, 0x33, 0xf5];
        let f = encode(&p).unwrap();
        assert_eq!(f[0] & 0x0f, 3, "token length");
        assert_eq!(f[0] >> 4, 13, "one extended length byte");
        let (Frame::Message(back), used) = decode(&f).unwrap().unwrap() else {
            panic!("not a message")
        };
        assert_eq!(used, f.len());
        assert_eq!(back.get_token(), &[9, 8, 7]);
        assert_eq!(back.payload, p.payload);
        assert_eq!(back.header.code, p.header.code);
        // Incomplete input asks for more.
        assert!(decode(&f[..f.len() - 1]).unwrap().is_none());
        assert!(decode(&[]).unwrap().is_none());
    }

    #[test]
    fn lengths_use_the_right_extension() {
        for (len, nibble, ext) in [
            (12usize, 12u8, 0usize),
            (13, 13, 1),
            (268, 13, 1),
            (269, 14, 2),
            (65804, 14, 2),
        ] {
            let f = frame(0x45, &[], &vec![0xff; len]);
            assert_eq!(f[0] >> 4, nibble, "len {len}");
            assert_eq!(f.len(), 1 + ext + 1 + len);
        }
    }

    #[test]
    fn signals_and_hostile_frames() {
        let (Frame::Signal { code, .. }, _) = decode(&csm()).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(code, CSM);
        assert!(matches!(
            decode(&[0x09]),
            Err(FrameError::BadTokenLength(9))
        ));
        assert!(matches!(
            decode(&[0xf0, 0x7f, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge(_))
        ));
        // An Empty message is ignored whole, even with options and a payload (what a
        // re-encode of it as a Message lost: found by fuzzing, fuzz/found/).
        let empty_with_payload = [0x41, 0x00, 0xaa, 0x11, 0x41, 0xff, 0x01];
        assert!(matches!(
            decode(&empty_with_payload),
            Ok(Some((Frame::Empty, 7)))
        ));
        // An option header promising bytes that are not there.
        assert!(matches!(
            decode(&[0x10, 0x45, 0xd0]),
            Err(FrameError::Malformed(_))
        ));
    }
}
