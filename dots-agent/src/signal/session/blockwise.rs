//! Block-wise transfer of large bodies (RFC 7959): a server cuts a response too big for
//! one message into Block2 blocks of at most 1024 bytes and keeps the whole body for the
//! follow-up requests; a client fetches the blocks in order and puts the body together; a
//! server puts a request body sent in Block1 blocks together (in order, bounded) before
//! the request runs.
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

/// Request bodies a server is receiving in blocks (RFC 7959 §2.5 Block1, atomic: the
/// request runs once the last block is in), per session.
#[derive(Default)]
pub struct Received {
    bodies: VecDeque<Incoming>,
}

struct Incoming {
    /// The request's Uri-Path and Uri-Query, and its Request-Tag (RFC 9175).
    key: Vec<u8>,
    body: Vec<u8>,
    at: Instant,
}

/// Bodies received at once per session: a client sends one body at a time; a second
/// covers a retry beside a stale one.
const RECEIVING: usize = 2;

/// What a Block1 block amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More blocks to come: 2.31 Continue, echoing this Block1.
    Continue(Block),
    /// The last block: the whole body (the response carries this Block1).
    Complete(Vec<u8>, Block),
    /// A block out of order, or a last block without its beginning: 4.08.
    Incomplete(String),
    /// The body would exceed `limit` bytes: 4.13 with Size1 = limit.
    TooLarge { limit: usize },
}

impl Received {
    /// Takes block `block` of the body of the request kept under `key` (`size1`: the
    /// client's announced total, if any), holding at most `limit` bytes.
    pub fn add(
        &mut self,
        now: Instant,
        key: Vec<u8>,
        block: Block,
        payload: &[u8],
        size1: Option<usize>,
        limit: usize,
    ) -> Progress {
        self.bodies.retain(|b| now.duration_since(b.at) < KEEP_FOR);
        let block = Block {
            szx: block.szx.min(6),
            ..block
        };
        if size1.is_some_and(|n| n > limit) {
            self.bodies.retain(|b| b.key != key);
            return Progress::TooLarge { limit };
        }
        if block.more && payload.len() != block.size() {
            self.bodies.retain(|b| b.key != key);
            return Progress::Incomplete(format!(
                "Block1 {} carries {} bytes, not its size {}",
                block.num,
                payload.len(),
                block.size()
            ));
        }
        if block.num == 0 {
            // A new body (a new sequence to the same resource replaces the old one).
            self.bodies.retain(|b| b.key != key);
            if self.bodies.len() == RECEIVING {
                self.bodies.pop_front();
            }
            self.bodies.push_back(Incoming {
                key: key.clone(),
                body: Vec::new(),
                at: now,
            });
        }
        let Some(i) = self.bodies.iter().position(|b| b.key == key) else {
            return Progress::Incomplete(format!(
                "Block1 {} arrived without the blocks before it: send the body from block 0",
                block.num
            ));
        };
        let b = &mut self.bodies[i];
        // The offset is what counts: a client may reduce the block size after block 0.
        if (block.num as usize).saturating_mul(block.size()) != b.body.len() {
            let expected = b.body.len();
            self.bodies.remove(i);
            return Progress::Incomplete(format!(
                "Block1 {} (offset {}) does not follow the {expected} bytes received: send the \
                 body again from block 0",
                block.num,
                (block.num as usize).saturating_mul(block.size())
            ));
        }
        if b.body.len() + payload.len() > limit {
            self.bodies.remove(i);
            return Progress::TooLarge { limit };
        }
        b.body.extend_from_slice(payload);
        b.at = now;
        if block.more {
            return Progress::Continue(block);
        }
        let body = self.bodies.remove(i).map(|b| b.body).unwrap_or_default();
        Progress::Complete(body, block)
    }
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
    fn a_body_is_received_in_order_and_bounded() {
        let now = Instant::now();
        let mut r = Received::default();
        let b = |num, more| Block { num, more, szx: 0 };
        let key = || b"k".to_vec();
        assert_eq!(
            r.add(now, key(), b(0, true), &[1; 16], Some(40), 64),
            Progress::Continue(b(0, true))
        );
        assert_eq!(
            r.add(now, key(), b(1, true), &[2; 16], None, 64),
            Progress::Continue(b(1, true))
        );
        let Progress::Complete(body, last) = r.add(now, key(), b(2, false), &[3; 8], None, 64)
        else {
            panic!("complete")
        };
        assert_eq!(
            (body.len(), body[16], body[39], last),
            (40, 2, 3, b(2, false))
        );
        // Out of order: 4.08, and the body is gone.
        r.add(now, key(), b(0, true), &[1; 16], None, 64);
        assert!(matches!(
            r.add(now, key(), b(2, false), &[1; 4], None, 64),
            Progress::Incomplete(_)
        ));
        assert!(matches!(
            r.add(now, key(), b(1, false), &[1; 4], None, 64),
            Progress::Incomplete(_)
        ));
        // A last block alone, a short middle block.
        assert!(matches!(
            r.add(now, key(), b(3, false), &[1; 4], None, 64),
            Progress::Incomplete(_)
        ));
        assert!(matches!(
            r.add(now, key(), b(0, true), &[1; 15], None, 64),
            Progress::Incomplete(_)
        ));
        // Too large: announced, or reached.
        assert_eq!(
            r.add(now, key(), b(0, true), &[1; 16], Some(65), 64),
            Progress::TooLarge { limit: 64 }
        );
        for n in 0..4 {
            assert_eq!(
                r.add(now, key(), b(n, true), &[1; 16], None, 64),
                Progress::Continue(b(n, true))
            );
        }
        assert_eq!(
            r.add(now, key(), b(4, true), &[1; 16], None, 64),
            Progress::TooLarge { limit: 64 }
        );
        // At most two bodies per session; forgotten after a while.
        for k in [b"a", b"b", b"c"] {
            r.add(now, k.to_vec(), b(0, true), &[1; 16], None, 64);
        }
        assert_eq!(r.bodies.len(), RECEIVING);
        assert!(matches!(
            r.add(
                now + KEEP_FOR,
                b"c".to_vec(),
                b(1, false),
                &[1; 4],
                None,
                64
            ),
            Progress::Incomplete(_)
        ));
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
