//! What a session reads besides plain messages: request bodies in Block1 blocks (RFC 7959
//! §2.5) and the Max-Message-Size of a peer's CSM (RFC 8323 §5.3.1).

use coap_lite::{CoapOption, Packet, ResponseType};

use super::blockwise::{self, Block, Progress};
use super::{diagnostic, Now, Session, REQUEST_TAG};

impl Session {
    /// A request body in Block1 blocks (RFC 7959 §2.5): Ok(None) without Block1;
    /// Ok(Some) with the request carrying the whole body once its last block is in (and the
    /// Block1 its response echoes); Err with the answer otherwise (2.31 Continue, 4.08,
    /// 4.13 with Size1).
    pub(super) fn block1(
        &mut self,
        now: Now,
        req: &Packet,
    ) -> Result<Option<(Packet, Block)>, Packet> {
        let block = match Block::of(req, CoapOption::Block1) {
            Ok(None) => return Ok(None),
            Ok(Some(b)) => b,
            Err(_) => {
                return Err(diagnostic(
                    req,
                    ResponseType::BadOption,
                    "malformed Block1 option",
                ))
            }
        };
        let mut key = blockwise::resource_key(req);
        key.extend(
            req.get_first_option(CoapOption::Unknown(REQUEST_TAG))
                .into_iter()
                .flatten(),
        );
        let size1 = req
            .get_first_option(CoapOption::Size1)
            .filter(|v| v.len() <= 4)
            .map(|v| v.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize));
        // Blocks of at most our largest size: a larger one is taken, and the answer asks
        // for smaller ones from then on (RFC 7959 §2.5).
        let ours = self.largest_block();
        match self.received.add(
            now.at,
            key,
            block,
            &req.payload,
            size1,
            crate::signal::cbor::MAX_BODY,
        ) {
            Progress::Continue(b) => {
                let mut p = diagnostic(req, ResponseType::Continue, "");
                Block {
                    num: b.num,
                    more: true,
                    szx: b.szx.min(ours),
                }
                .set(&mut p, CoapOption::Block1);
                Err(p)
            }
            Progress::Complete(body, b) => {
                let mut whole = req.clone();
                whole.payload = body;
                whole.clear_option(CoapOption::Block1);
                whole.clear_option(CoapOption::Size1);
                Ok(Some((whole, b)))
            }
            Progress::Incomplete(why) => {
                Err(diagnostic(req, ResponseType::RequestEntityIncomplete, &why))
            }
            Progress::TooLarge { limit } => {
                let mut p = diagnostic(
                    req,
                    ResponseType::RequestEntityTooLarge,
                    &format!("a request body may hold at most {limit} bytes"),
                );
                p.add_option(CoapOption::Size1, (limit as u32).to_be_bytes().to_vec());
                Err(p)
            }
        }
    }
}

/// Max-Message-Size (option 2) of a CSM's options, if it carries one.
pub(super) fn csm_max_message(mut rest: &[u8]) -> Option<usize> {
    let mut number = 0u32;
    while let Some((&first, tail)) = rest.split_first() {
        if first == 0xff {
            break;
        }
        let (delta, tail) = option_nibble(first >> 4, tail)?;
        let (len, tail) = option_nibble(first & 0x0f, tail)?;
        let value = tail.get(..len as usize)?;
        number += delta;
        if number == 2 && value.len() <= 4 {
            return Some(value.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize));
        }
        rest = &tail[len as usize..];
    }
    None
}

/// An option delta or length nibble with its extension bytes (RFC 7252 §3.1).
fn option_nibble(n: u8, rest: &[u8]) -> Option<(u32, &[u8])> {
    match n {
        0..=12 => Some((n as u32, rest)),
        13 => Some((*rest.first()? as u32 + 13, &rest[1..])),
        14 => {
            let b = rest.get(..2)?;
            Some((u16::from_be_bytes([b[0], b[1]]) as u32 + 269, &rest[2..]))
        }
        _ => None,
    }
}
