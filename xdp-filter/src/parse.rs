//! Packet parsing: Ethernet (up to two 802.1Q/802.1ad tags), IPv4 (options, fragments),
//! IPv6 (extension headers, fragment header), TCP/UDP/ICMP/ICMPv6.
//!
//! Every read is bounds-checked against `data_end`; nothing here can read outside the
//! frame. A frame whose link or IP header is unusable is an error; a usable IP header with a
//! cut-short transport header is returned with `malformed` set, so a mitigated target can
//! drop it while unmitigated traffic passes untouched.

use aya_ebpf::programs::XdpContext;
use xdp_common::frag_bits;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers followed before giving up (and calling the packet malformed).
const MAX_IPV6_EXT_HEADERS: usize = 8;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp,
    /// Truncated or invalid link/IP header.
    Invalid,
}

/// What the filter needs to know about a packet. Copied into a per-CPU scratch map for
/// mitigated destinations (see main.rs). The protocol bytes and the ports sit in one word
/// each ([`Packet::proto_word`], [`Packet::ports_word`]), which the ACL masks whole.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    /// `sport`/`dport` are valid (TCP/UDP with a complete header in a first or only fragment).
    pub has_ports: bool,
    /// `icmp_type`/`icmp_code` are valid.
    pub has_icmp: bool,
    /// The transport header (or the IPv6 extension header chain) is cut short or too long.
    pub malformed: bool,
    /// A fragment other than the first: no transport header.
    pub later_fragment: bool,
    pub frag: u8,
    pub ttl: u8,
    pub dscp: u8,
    /// Transport protocol (IPv6: the last next-header reached). Word-aligned with the
    /// next three: see `proto_word`.
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length, IPv6 payload length (as RFC 8519 matches them).
    pub ip_len: u16,
    pub _pad: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl Packet {
    /// `proto | icmp_type << 8 | icmp_code << 16 | tcp_flags << 24`.
    #[inline(always)]
    pub fn proto_word(&self) -> u32 {
        // SAFETY: four u8 fields at a 4-byte aligned offset of a repr(C), 4-aligned struct;
        // little-endian BPF puts `proto` in the low byte.
        unsafe { *(core::ptr::addr_of!(self.proto) as *const u32) }
    }

    /// `sport | dport << 16`.
    #[inline(always)]
    pub fn ports_word(&self) -> u32 {
        // SAFETY: as above, two u16 fields at a 4-byte aligned offset.
        unsafe { *(core::ptr::addr_of!(self.sport) as *const u32) }
    }

    /// What the packet carries, as ACL tuples name their needs (`tuple_needs`).
    #[inline(always)]
    pub fn carries(&self) -> u8 {
        use xdp_common::tuple_needs as n;
        let mut c = if self.family == 4 { n::IPV4 } else { n::IPV6 };
        if self.has_ports {
            c |= n::PORTS;
        }
        if self.has_icmp {
            c |= n::ICMP;
        }
        c
    }
}

const _: () = {
    assert!(core::mem::offset_of!(Packet, proto) % 4 == 0);
    assert!(core::mem::offset_of!(Packet, icmp_code) == core::mem::offset_of!(Packet, proto) + 2);
    assert!(core::mem::offset_of!(Packet, sport) % 4 == 0);
    assert!(core::mem::offset_of!(Packet, dport) == core::mem::offset_of!(Packet, sport) + 2);
};

/// Resets every field: 13 word stores. Volatile on purpose: LLVM otherwise merges the
/// zeroing into a `memset` call, which the BPF backend leaves to a byte-at-a-time loop
/// (this one line cost more than all the rest of the parse).
#[inline(always)]
fn clear(p: &mut Packet) {
    const WORDS: usize = core::mem::size_of::<Packet>() / 4;
    let w = p as *mut Packet as *mut u32;
    for i in 0..WORDS {
        // SAFETY: Packet is repr(C), 4-byte aligned, a multiple of 4 bytes long, and every
        // bit pattern of zero is a valid value of each field.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
    }
}

const _: () = assert!(core::mem::size_of::<Packet>() % 4 == 0);

/// Bounds-checks `size` bytes at `off` and returns a pointer to them.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, size: usize) -> Result<*const u8, ()> {
    let start = ctx.data();
    if start + off + size > ctx.data_end() {
        return Err(());
    }
    Ok((start + off) as *const u8)
}

// Field loads from a bounds-checked header pointer. Packet data has no alignment guarantee;
// in BPF these are plain word loads, which the verifier accepts (no BPF_F_STRICT_ALIGNMENT)
// and the x86-64/arm64 JITs execute unaligned; `read_unaligned` would compile to one load
// per byte there. The same source compiled for user space (the fuzz target) must not rely
// on that: a misaligned dereference is undefined behaviour in Rust, so it reads unaligned.
#[inline(always)]
fn u8_at(p: *const u8, off: usize) -> u8 {
    // SAFETY: inside the range checked by `at`.
    unsafe { *p.add(off) }
}

#[inline(always)]
fn be16_at(p: *const u8, off: usize) -> u16 {
    u16::from_be(load::<u16>(p, off))
}

#[inline(always)]
fn raw32_at(p: *const u8, off: usize) -> u32 {
    load::<u32>(p, off)
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
fn load<T: Copy>(p: *const u8, off: usize) -> T {
    // SAFETY: inside the range checked by `at`; see above on alignment.
    unsafe { *(p.add(off) as *const T) }
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
fn load<T: Copy>(p: *const u8, off: usize) -> T {
    // SAFETY: inside the range checked by `at`.
    unsafe { (p.add(off) as *const T).read_unaligned() }
}

/// Where the IP header starts, after Ethernet and up to two VLAN tags.
#[derive(Clone, Copy)]
pub enum L3 {
    V4(usize),
    V6(usize),
}

#[inline(always)]
pub fn locate(ctx: &XdpContext) -> Result<L3, ParseError> {
    let eth = at(ctx, 0, ETH_HLEN).map_err(|_| ParseError::Invalid)?;
    let mut ethertype = be16_at(eth, 12);
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, or QinQ with an 802.1ad outer tag).
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag = at(ctx, off, 4).map_err(|_| ParseError::Invalid)?;
            ethertype = be16_at(tag, 2);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IP => Ok(L3::V4(off)),
        ETH_P_IPV6 => Ok(L3::V6(off)),
        _ => Err(ParseError::NotIp),
    }
}

/// The fast path's view: the IPv4 destination (raw network order), after checking the
/// header is a plausible IPv4 header.
#[inline(always)]
pub fn ipv4_destination(ctx: &XdpContext, off: usize) -> Result<u32, ParseError> {
    let h = at(ctx, off, 20).map_err(|_| ParseError::Invalid)?;
    let vihl = u8_at(h, 0);
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(ParseError::Invalid);
    }
    Ok(raw32_at(h, 16))
}

/// The fast path's view: the first 48 bits of the IPv6 destination.
#[inline(always)]
pub fn ipv6_destination_top48(ctx: &XdpContext, off: usize) -> Result<u64, ParseError> {
    // Up to the destination's first 48 bits; the full parse checks the rest of the header.
    let h = at(ctx, off, 30).map_err(|_| ParseError::Invalid)?;
    if u8_at(h, 0) >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    Ok(((u32::from_be(raw32_at(h, 24)) as u64) << 16) | be16_at(h, 28) as u64)
}

/// Parses everything the filter matches on into `p` (the fast path has checked the IP
/// header already).
#[inline(always)]
pub fn parse(ctx: &XdpContext, l3: L3, p: &mut Packet) {
    clear(p);
    let ok = match l3 {
        L3::V4(off) => parse_ipv4(ctx, off, p),
        L3::V6(off) => parse_ipv6(ctx, off, p),
    };
    if ok.is_err() {
        p.malformed = true;
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, p: &mut Packet) -> Result<(), ParseError> {
    let h = at(ctx, off, 20).map_err(|_| ParseError::Invalid)?;
    let vihl = u8_at(h, 0);
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(ParseError::Invalid);
    }
    p.family = 4;
    p.dscp = u8_at(h, 1) >> 2;
    p.ip_len = be16_at(h, 2);
    let frag_field = be16_at(h, 6);
    let more_fragments = frag_field & 0x2000 != 0;
    let frag_offset = frag_field & 0x1fff;
    if frag_field & 0x4000 != 0 {
        p.frag |= frag_bits::DF;
    }
    if more_fragments || frag_offset != 0 {
        p.frag |= frag_bits::ISF;
        if frag_offset == 0 {
            p.frag |= frag_bits::FF;
        } else {
            p.later_fragment = true;
            if !more_fragments {
                p.frag |= frag_bits::LF;
            }
        }
    }
    p.ttl = u8_at(h, 8);
    p.proto = u8_at(h, 9);
    p.src[0] = raw32_at(h, 12);
    p.dst[0] = raw32_at(h, 16);
    if !p.later_fragment {
        parse_l4(ctx, off + ihl * 4, p);
    }
    Ok(())
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, p: &mut Packet) -> Result<(), ParseError> {
    let h = at(ctx, off, 40).map_err(|_| ParseError::Invalid)?;
    let b0 = u8_at(h, 0);
    if b0 >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    p.family = 6;
    p.dscp = ((b0 & 0x0f) << 2) | (u8_at(h, 1) >> 6);
    p.ip_len = be16_at(h, 4);
    p.ttl = u8_at(h, 7);
    for i in 0..4 {
        p.src[i] = raw32_at(h, 8 + 4 * i);
        p.dst[i] = raw32_at(h, 24 + 4 * i);
    }
    let mut next = u8_at(h, 6);
    let mut off = off + 40;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_extension_header(next) {
            done = true;
            break;
        }
        // Every extension header is at least 8 bytes; its first 4 hold all we read.
        let Ok(e) = at(ctx, off, 4) else {
            p.malformed = true;
            done = true;
            break;
        };
        let header_len = match next {
            IPV6_AH => (u8_at(e, 1) as usize + 2) * 4,
            IPV6_FRAGMENT => {
                let field = be16_at(e, 2);
                p.frag |= frag_bits::ISF;
                if field >> 3 == 0 {
                    p.frag |= frag_bits::FF;
                } else {
                    p.later_fragment = true;
                    if field & 1 == 0 {
                        p.frag |= frag_bits::LF;
                    }
                }
                8
            }
            _ => (u8_at(e, 1) as usize + 1) * 8,
        };
        next = u8_at(e, 0);
        off += header_len;
    }
    // The chain may end right after the last header the loop may follow (8 of them).
    if !done && !is_extension_header(next) {
        done = true;
    }
    p.proto = next;
    if !done {
        // Still inside the extension header chain: an evasion attempt or garbage.
        p.malformed = true;
    } else if !p.malformed && !p.later_fragment {
        parse_l4(ctx, off, p);
    }
    Ok(())
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, p: &mut Packet) {
    match p.proto {
        IPPROTO_TCP => match at(ctx, off, 20) {
            Ok(t) => {
                p.sport = be16_at(t, 0);
                p.dport = be16_at(t, 2);
                p.tcp_flags = u8_at(t, 13);
                p.has_ports = true;
            }
            Err(()) => p.malformed = true,
        },
        IPPROTO_UDP => match at(ctx, off, 8) {
            Ok(u) => {
                p.sport = be16_at(u, 0);
                p.dport = be16_at(u, 2);
                p.has_ports = true;
            }
            Err(()) => p.malformed = true,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match at(ctx, off, 4) {
            Ok(i) => {
                p.icmp_type = u8_at(i, 0);
                p.icmp_code = u8_at(i, 1);
                p.has_icmp = true;
            }
            Err(()) => p.malformed = true,
        },
        _ => {}
    }
}
