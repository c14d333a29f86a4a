//! Packet parsing: Ethernet (up to two 802.1Q/802.1ad tags), IPv4 (options, fragments),
//! IPv6 (extension headers, fragment header), TCP/UDP/ICMP/ICMPv6.
//!
//! Every read is bounds-checked against `data_end`; nothing here can read outside the
//! frame. A frame whose link or IP header is unusable is an error; a usable IP header with a
//! cut-short transport header is returned with `malformed` set, so a mitigated target can
//! drop it while unmitigated traffic passes untouched.

use core::mem::size_of;

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

/// What the filter needs to know about a packet. Lives in a per-CPU scratch map (see
/// main.rs), not on the stack.
#[repr(C)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (IPv6: the last next-header reached).
    pub proto: u8,
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
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length, IPv6 payload length (as RFC 8519 matches them).
    pub ip_len: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    // SAFETY: bounds-checked just above; packet memory has no alignment guarantee.
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Packet) -> Result<(), ParseError> {
    let mut ethertype = be16(load::<[u8; 2]>(ctx, 12).map_err(|_| ParseError::Invalid)?);
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, or QinQ with an 802.1ad outer tag).
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(load::<[u8; 2]>(ctx, off + 2).map_err(|_| ParseError::Invalid)?);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, off, p),
        ETH_P_IPV6 => parse_ipv6(ctx, off, p),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn reset(p: &mut Packet, family: u8) {
    p.family = family;
    p.proto = 0;
    p.has_ports = false;
    p.has_icmp = false;
    p.malformed = false;
    p.later_fragment = false;
    p.frag = 0;
    p.ttl = 0;
    p.dscp = 0;
    p.tcp_flags = 0;
    p.icmp_type = 0;
    p.icmp_code = 0;
    p.sport = 0;
    p.dport = 0;
    p.ip_len = 0;
    p.src = [0; 4];
    p.dst = [0; 4];
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, p: &mut Packet) -> Result<(), ParseError> {
    let h = load::<[u8; 20]>(ctx, off).map_err(|_| ParseError::Invalid)?;
    let ihl = (h[0] & 0x0f) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return Err(ParseError::Invalid);
    }
    reset(p, 4);
    p.dscp = h[1] >> 2;
    p.ip_len = be16([h[2], h[3]]);
    let frag_field = be16([h[6], h[7]]);
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
    p.ttl = h[8];
    p.proto = h[9];
    p.src[0] = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    p.dst[0] = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    if !p.later_fragment {
        parse_l4(ctx, off + ihl * 4, p);
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, p: &mut Packet) -> Result<(), ParseError> {
    let h = load::<[u8; 40]>(ctx, off).map_err(|_| ParseError::Invalid)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    reset(p, 6);
    p.dscp = ((h[0] & 0x0f) << 2) | (h[1] >> 6);
    p.ip_len = be16([h[4], h[5]]);
    p.ttl = h[7];
    for i in 0..4 {
        p.src[i] = u32::from_ne_bytes([h[8 + 4 * i], h[9 + 4 * i], h[10 + 4 * i], h[11 + 4 * i]]);
        p.dst[i] = u32::from_ne_bytes([h[24 + 4 * i], h[25 + 4 * i], h[26 + 4 * i], h[27 + 4 * i]]);
    }
    let mut next = h[6];
    let mut off = off + 40;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Ok(e) = load::<[u8; 2]>(ctx, off) else {
                    p.malformed = true;
                    done = true;
                    break;
                };
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let Ok(e) = load::<[u8; 2]>(ctx, off) else {
                    p.malformed = true;
                    done = true;
                    break;
                };
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Ok(e) = load::<[u8; 4]>(ctx, off) else {
                    p.malformed = true;
                    done = true;
                    break;
                };
                next = e[0];
                off += 8;
                let field = be16([e[2], e[3]]);
                let frag_offset = field >> 3;
                let more_fragments = field & 1 != 0;
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
            _ => {
                done = true;
                break;
            }
        }
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
        IPPROTO_TCP => match load::<[u8; 20]>(ctx, off) {
            Ok(t) => {
                p.sport = be16([t[0], t[1]]);
                p.dport = be16([t[2], t[3]]);
                p.tcp_flags = t[13];
                p.has_ports = true;
            }
            Err(()) => p.malformed = true,
        },
        IPPROTO_UDP => match load::<[u8; 8]>(ctx, off) {
            Ok(u) => {
                p.sport = be16([u[0], u[1]]);
                p.dport = be16([u[2], u[3]]);
                p.has_ports = true;
            }
            Err(()) => p.malformed = true,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match load::<[u8; 4]>(ctx, off) {
            Ok(i) => {
                p.icmp_type = i[0];
                p.icmp_code = i[1];
                p.has_icmp = true;
            }
            Err(()) => p.malformed = true,
        },
        _ => {}
    }
}
