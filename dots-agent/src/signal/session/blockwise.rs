//! Block-wise transfer of large bodies (RFC 7959 Block2): a server cuts a response too big
//! for one message into blocks of at most 1024 bytes and keeps the whole body for the
//! follow-up requests; a client fetches the blocks in order and puts the body together.
//! The option is coded here rather than with coap-lite's `BlockValue`, whose 16-bit NUM
//! wraps at 4,096 blocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet};

/// The largest block (SZX 6); SZX 7 means BERT on TCP, which this server does not use.
pub const MAX_BLOCK: usize = 1024;
/// Bodies kept for follow-up requests, per session, and for how long (RFC 7959 allows
/// discarding them after EXCHANGE_LIFETIME; a client fetches its blocks at once).
const KEPT: usize = 4;
const KEEP_FOR: Duration = Duration::from_secs(120);

/// A Block option longer than 3 bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// A Block1/Block2 option value: block number, more blocks follow, block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// 16 << szx bytes.
    pub szx: u8,
}

impl Block {
    pub fn size(self) -> usize {
        16 << self.szx.min(6)
    }

    /// The option's value (0 to 3 bytes, big-endian, leading zeroes dropped).
    pub fn encode(self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7);
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    pub fn decode(v: &[u8]) -> Option<Block> {
        if v.len() > 3 {
            return None;
        }
        let n = v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Some(Block {
            num: n >> 4,
            more: n & 8 != 0,
            szx: (n & 7) as u8,
        })
    }

    /// The option `which` (Block1 or Block2) of a message.
    pub fn of(p: &Packet, which: CoapOption) -> Result<Option<Block>, Malformed> {
        match p.get_first_option(which) {
            None => Ok(None),
            Some(v) => Block::decode(v).map(Some).ok_or(Malformed),
        }
    }

    pub fn set(self, p: &mut Packet, which: CoapOption) {
        p.clear_option(which);
        p.add_option(which, self.encode());
    }
}

/// The SZX of the largest block size not above `size` (at least 16 bytes).
pub fn szx_for(size: usize) -> u8 {
    let mut szx = 6u8;
    while szx > 0 && (16usize << szx) > size {
        szx -= 1;
    }
    szx
}

/// A short ETag of a body: blocks of one body carry the same one (FNV-1a).
pub fn etag(body: &[u8]) -> Vec<u8> {
    let mut h: u32 = 0x811c_9dc5;
    for b in body {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes().to_vec()
}

/// What a body is kept under: the request's Uri-Path and Uri-Query.
pub fn resource_key(req: &Packet) -> Vec<u8> {
    let mut key = Vec::new();
    for opt in [CoapOption::UriPath, CoapOption::UriQuery] {
        for seg in req.get_option(opt).into_iter().flatten() {
            key.extend_from_slice(seg);
            key.push(0);
        }
        key.push(1);
    }
    key
}

struct Kept {
    key: Vec<u8>,
    /// The full response (payload included) whose blocks are served.
    whole: Packet,
    etag: Vec<u8>,
    at: Instant,
}

/// Bodies a server is serving block by block.
#[derive(Default)]
pub struct Served {
    kept: VecDeque<Kept>,
}

impl Served {
    /// Block `block.num` of `whole` (a response or notification whose payload is too big),
    /// keeping the body for the follow-ups if more blocks remain.
    pub fn first(&mut self, now: Instant, key: Vec<u8>, whole: Packet, block: Block) -> Packet {
        let etag = etag(&whole.payload);
        let out = cut(&whole, &etag, block);
        self.kept
            .retain(|k| k.key != key && now.duration_since(k.at) < KEEP_FOR);
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(Kept {
            key,
            whole,
            etag,
            at: now,
        });
        out
    }

    /// Block `block.num` of the body kept for `key`, if there is one.
    pub fn next(&mut self, now: Instant, key: &[u8], block: Block) -> Option<Packet> {
        self.kept.retain(|k| now.duration_since(k.at) < KEEP_FOR);
        let k = self.kept.iter().find(|k| k.key == key)?;
        Some(cut(&k.whole, &k.etag, block))
    }
}

/// One block of `whole`: its options (but Observe on follow-ups: the caller's), ETag,
/// Size2 and Block2. A block beyond the end is an empty last block.
fn cut(whole: &Packet, etag: &[u8], block: Block) -> Packet {
    let size = block.size();
    let start = (block.num as usize)
        .saturating_mul(size)
        .min(whole.payload.len());
    let end = (start + size).min(whole.payload.len());
    let mut p = whole.clone();
    p.payload = whole.payload[start..end].to_vec();
    p.clear_option(CoapOption::ETag);
    p.add_option(CoapOption::ETag, etag.to_vec());
    p.clear_option(CoapOption::Size2);
    p.add_option(CoapOption::Size2, size2(whole.payload.len()));
    Block {
        num: block.num,
        more: end < whole.payload.len(),
        szx: block.szx,
    }
    .set(&mut p, CoapOption::Block2);
    p
}

fn size2(n: usize) -> Vec<u8> {
    let bytes = (n as u32).to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// A body a client is putting together from blocks.
#[derive(Debug)]
pub struct Assembly {
    pub body: Vec<u8>,
    pub etag: Option<Vec<u8>>,
    pub next: u32,
    pub szx: u8,
}

impl Assembly {
    /// Adds a block; false if the body changed or a block is out of order (the transfer
    /// must start again).
    #[must_use]
    pub fn add(&mut self, block: Block, etag: Option<&Vec<u8>>, payload: &[u8]) -> bool {
        if block.num != self.next || (self.etag.is_some() && self.etag.as_ref() != etag) {
            return false;
        }
        self.etag = etag.cloned();
        self.body.extend_from_slice(payload);
        self.next += 1;
        self.szx = block.szx;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_values_round_trip_beyond_4096_blocks() {
        for b in [
            Block {
                num: 0,
                more: true,
                szx: 0,
            },
            Block {
                num: 1,
                more: false,
                szx: 6,
            },
            Block {
                num: 4096,
                more: true,
                szx: 6,
            },
            Block {
                num: (1 << 20) - 1,
                more: false,
                szx: 2,
            },
        ] {
            assert_eq!(Block::decode(&b.encode()), Some(b));
        }
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx: 0
            }
            .encode(),
            Vec::<u8>::new()
        );
        assert!(Block::decode(&[8]).unwrap().more, "libcoap's Block1:0/M/16");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
        assert_eq!(szx_for(1024), 6);
        assert_eq!(szx_for(1000), 5);
        assert_eq!(szx_for(3), 0);
    }

    #[test]
    fn a_body_is_served_in_blocks_with_one_etag() {
        let mut whole = Packet::new();
        whole.payload = (0..2500u32).map(|i| i as u8).collect();
        let mut served = Served::default();
        let now = Instant::now();
        let szx = 6;
        let first = served.first(
            now,
            b"k".to_vec(),
            whole.clone(),
            Block {
                num: 0,
                more: false,
                szx,
            },
        );
        let mut got = first.payload.clone();
        let mut a = Assembly {
            body: Vec::new(),
            etag: None,
            next: 0,
            szx,
        };
        let b0 = Block::of(&first, CoapOption::Block2).unwrap().unwrap();
        assert!(a.add(b0, first.get_first_option(CoapOption::ETag), &first.payload));
        let mut n = 1;
        loop {
            let p = served
                .next(
                    now,
                    b"k",
                    Block {
                        num: n,
                        more: false,
                        szx,
                    },
                )
                .unwrap();
            let b = Block::of(&p, CoapOption::Block2).unwrap().unwrap();
            got.extend_from_slice(&p.payload);
            assert!(a.add(b, p.get_first_option(CoapOption::ETag), &p.payload));
            if !b.more {
                break;
            }
            n += 1;
        }
        assert_eq!((n, got.as_slice()), (2, whole.payload.as_slice()));
        assert_eq!(a.body, whole.payload);
        // Out of order, or another body: the client starts again.
        assert!(!a.add(
            Block {
                num: 9,
                more: false,
                szx
            },
            None,
            &[]
        ));
        assert!(served
            .next(
                now,
                b"other",
                Block {
                    num: 1,
                    more: false,
                    szx
                }
            )
            .is_none());
        assert!(
            served
                .next(
                    now + KEEP_FOR,
                    b"k",
                    Block {
                        num: 1,
                        more: false,
                        szx
                    }
                )
                .is_none(),
            "forgotten after a while"
        );
    }
}
