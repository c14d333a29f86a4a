//! The XDP program's packet parser (`xdp-filter/src/parse.rs`, the kernel's own source
//! compiled for user space), three ways per input:
//! - the raw input as a frame, its end at an unreadable page: no read past the bounds;
//!   the fast path's destination agrees with the full parse;
//! - a frame the lab's packet builder makes from the input (VLAN tags, IPv4 options,
//!   IPv6 extension headers, fragments, TCP/UDP/ICMP/other): every field the filter
//!   matches on must be what the builder put there;
//! - that frame cut short at every length the input names: no read past the bounds.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Result, Unstructured};
use dots_agent_fuzz::xdp::{self, Guarded, Parsed, MAX_FRAME};
use dots_agent_fuzz::xdp_parse::L3;
use dots_lab::packet::{Fragment, PacketSpec, L4};
use libfuzzer_sys::fuzz_target;
use xdp_common::frag_bits;

thread_local! {
    static PAGE: std::cell::RefCell<Guarded> = std::cell::RefCell::new(Guarded::new());
}

fn parse(frame: &[u8]) -> Parsed {
    PAGE.with(|g| {
        let mut g = g.borrow_mut();
        let ctx = g.place(frame);
        xdp::run(&ctx)
    })
}

/// Protocols with no transport header the parser reads (and no IPv6 extension header).
fn other_protocol(u: &mut Unstructured) -> Result<u8> {
    let p: u8 = u.arbitrary()?;
    Ok(match p {
        0 | 1 | 6 | 17 | 43 | 44 | 51 | 58 | 60 => 47,
        p => p,
    })
}

fn spec(u: &mut Unstructured) -> Result<PacketSpec> {
    let v6: bool = u.arbitrary()?;
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?)),
            IpAddr::V6(Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?)),
            IpAddr::V4(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?)),
        )
    };
    let l4 = match u.int_in_range(0..=3)? {
        0 => L4::Udp {
            sport: u.arbitrary()?,
            dport: u.arbitrary()?,
        },
        1 => L4::Tcp {
            sport: u.arbitrary()?,
            dport: u.arbitrary()?,
            flags: u.arbitrary()?,
        },
        2 => L4::Icmp {
            kind: u.arbitrary()?,
            code: u.arbitrary()?,
        },
        _ => L4::Other(other_protocol(u)?),
    };
    let mut s = PacketSpec::new(src, dst, l4);
    s.payload_len = u.int_in_range(0..=64)?;
    s.ttl = u.arbitrary()?;
    s.dscp = u.int_in_range(0..=63)?;
    let tags = u.int_in_range(0..=2)?;
    for _ in 0..tags {
        s.vlans.push(u.int_in_range(0..=4095)?);
    }
    if u.arbitrary()? {
        s.fragment = Some(Fragment {
            offset: u.int_in_range(0..=0x1fff)?,
            more: u.arbitrary()?,
        });
    }
    s.dont_fragment = u.arbitrary()?;
    if v6 {
        s.ipv6_ext_headers = u.int_in_range(0..=10)?;
    } else {
        let words = u.int_in_range(0..=10)?;
        s.ipv4_options = vec![1; words * 4];
    }
    Ok(s)
}

fn words(a: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match a {
        IpAddr::V4(a) => w[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            for (i, c) in a.octets().chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    w
}

/// What the filter must see in a frame built from `s` (README, "The datapath": up to 8
/// IPv6 extension headers are followed; a longer chain is malformed).
fn check(s: &PacketSpec, frame: &[u8], got: &Parsed) {
    let v6 = s.src.is_ipv6();
    let l3_at = 14 + 4 * s.vlans.len();
    match (got.l3, v6) {
        (Some(Ok(L3::V4(o))), false) | (Some(Ok(L3::V6(o))), true) => assert_eq!(o, l3_at),
        _ => panic!("IP header not found at {l3_at}"),
    }
    assert!(got.fast_ok, "the fast path refused a well-formed header");
    let p = got.packet.expect("a full parse");
    let dst = words(s.dst);
    if v6 {
        let top48 = ((u32::from_be(dst[0]) as u64) << 16) | (u32::from_be(dst[1]) >> 16) as u64;
        assert_eq!(got.fast_v6_top48, Some(top48));
    } else {
        assert_eq!(got.fast_v4, Some(dst[0]));
    }
    assert_eq!(p.family, if v6 { 6 } else { 4 });
    assert_eq!(p.src, words(s.src));
    assert_eq!(p.dst, dst);
    assert_eq!(p.ttl, s.ttl);
    assert_eq!(p.dscp, s.dscp);
    let ip_payload_len = frame.len() - l3_at - if v6 { 40 } else { 0 };
    assert_eq!(
        p.ip_len as usize, ip_payload_len,
        "IPv4 total / IPv6 payload length"
    );

    // Fragment bits as the header carries them.
    let mut frag = 0u8;
    let mut later = false;
    if !v6 && s.dont_fragment {
        frag |= frag_bits::DF;
    }
    if let Some(f) = s.fragment {
        if v6 || f.more || f.offset != 0 {
            frag |= frag_bits::ISF;
            if f.offset == 0 {
                frag |= frag_bits::FF;
            } else {
                later = true;
                if !f.more {
                    frag |= frag_bits::LF;
                }
            }
        }
    }
    let chain = if v6 {
        s.ipv6_ext_headers + s.fragment.is_some() as usize
    } else {
        0
    };
    let too_long = chain > 8;
    if too_long {
        // The walk stops inside the chain: whatever it reached so far is reported.
        assert!(
            p.malformed,
            "a chain of {chain} extension headers is not malformed"
        );
        assert!(!p.has_ports && !p.has_icmp);
        return;
    }
    assert_eq!(p.frag, frag, "fragment bits");
    assert_eq!(p.later_fragment, later);
    assert!(
        !p.malformed,
        "a well-formed frame parsed as malformed ({chain} ext headers)"
    );
    let (proto, ports, icmp, flags) = match s.l4 {
        L4::Udp { sport, dport } => (17, Some((sport, dport)), None, 0),
        L4::Tcp {
            sport,
            dport,
            flags,
        } => (6, Some((sport, dport)), None, flags),
        L4::Icmp { kind, code } => (if v6 { 58 } else { 1 }, None, Some((kind, code)), 0),
        L4::Other(p) => (p, None, None, 0),
    };
    assert_eq!(p.proto, proto);
    if later {
        assert!(
            !p.has_ports && !p.has_icmp,
            "a later fragment has no transport header"
        );
        return;
    }
    assert_eq!(p.has_ports, ports.is_some());
    if let Some((sp, dp)) = ports {
        assert_eq!((p.sport, p.dport), (sp, dp));
    }
    assert_eq!(p.has_icmp, icmp.is_some());
    if let Some((t, c)) = icmp {
        assert_eq!((p.icmp_type, p.icmp_code), (t, c));
    }
    assert_eq!(p.tcp_flags, flags);
}

/// Any frame: the full parse agrees with the fast path's view of the destination.
fn consistent(got: &Parsed) {
    let Some(p) = got.packet else { return };
    match p.family {
        4 => assert_eq!(got.fast_v4, Some(p.dst[0])),
        6 => {
            let top48 =
                ((u32::from_be(p.dst[0]) as u64) << 16) | (u32::from_be(p.dst[1]) >> 16) as u64;
            assert_eq!(got.fast_v6_top48, Some(top48));
        }
        // An IPv6 header long enough for the fast path's 30 bytes, not for all 40.
        0 => assert!(p.malformed, "a refused IP header not marked malformed"),
        f => panic!("family {f}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() <= MAX_FRAME {
        consistent(&parse(data));
    }
    let mut u = Unstructured::new(data);
    let Ok(s) = spec(&mut u) else { return };
    let frame = s.build();
    if frame.len() > MAX_FRAME {
        return;
    }
    check(&s, &frame, &parse(&frame));
    while let Ok(cut) = u.int_in_range(0..=frame.len()) {
        consistent(&parse(&frame[..cut]));
        if u.is_empty() {
            break;
        }
    }
});
