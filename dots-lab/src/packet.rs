//! Builds Ethernet frames (optionally VLAN-tagged) carrying IPv4/IPv6 with TCP, UDP, ICMP or
//! ICMPv6, with correct checksums. Used by the packet tests, the benchmarks and the traffic
//! tools, so all of them speak about packets the same way.

use std::net::IpAddr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Icmp {
        kind: u8,
        code: u8,
    },
    /// Any other protocol number, with an opaque payload.
    Other(u8),
}

/// IP fragmentation fields to put in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units.
    pub offset: u16,
    pub more: bool,
}

#[derive(Clone, Debug)]
pub struct PacketSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp: u8,
    /// VLAN ids, outermost first (802.1ad outer tag when there are two).
    pub vlans: Vec<u16>,
    pub fragment: Option<Fragment>,
    pub dont_fragment: bool,
    /// IPv4 options bytes (multiple of 4) or, for IPv6, the number of 8-byte
    /// destination-options extension headers to insert.
    pub ipv4_options: Vec<u8>,
    pub ipv6_ext_headers: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl PacketSpec {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        PacketSpec {
            src,
            dst,
            l4,
            payload_len: 18,
            ttl: 64,
            dscp: 0,
            vlans: Vec::new(),
            fragment: None,
            dont_fragment: false,
            ipv4_options: Vec::new(),
            ipv6_ext_headers: 0,
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
        }
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self::new(parse(src), parse(dst), L4::Udp { sport, dport })
    }

    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            parse(src),
            parse(dst),
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn icmp(src: &str, dst: &str, kind: u8, code: u8) -> Self {
        Self::new(parse(src), parse(dst), L4::Icmp { kind, code })
    }

    pub fn build(&self) -> Vec<u8> {
        build(self)
    }
}

fn parse(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad address literal {s:?} in a packet spec"))
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_bytes(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Internet checksum of a header or message.
pub fn checksum(bytes: &[u8]) -> u16 {
    checksum_fold(sum_bytes(bytes))
}

fn l4_bytes(spec: &PacketSpec) -> (u8, Vec<u8>) {
    let payload = vec![0xabu8; spec.payload_len];
    match spec.l4 {
        L4::Udp { sport, dport } => {
            let mut h = Vec::with_capacity(8 + payload.len());
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&payload);
            (PROTO_UDP, h)
        }
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut h = Vec::with_capacity(20 + payload.len());
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&1u32.to_be_bytes());
            h.extend_from_slice(&0u32.to_be_bytes());
            h.push(5 << 4);
            h.push(flags);
            h.extend_from_slice(&64240u16.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(&payload);
            (PROTO_TCP, h)
        }
        L4::Icmp { kind, code } => {
            let mut h = vec![kind, code, 0, 0, 0, 1, 0, 1];
            h.extend_from_slice(&payload);
            let proto = if spec.src.is_ipv6() {
                PROTO_ICMPV6
            } else {
                PROTO_ICMP
            };
            (proto, h)
        }
        L4::Other(p) => (p, payload),
    }
}

fn fill_l4_checksum(spec: &PacketSpec, proto: u8, l4: &mut [u8]) {
    let off = match spec.l4 {
        L4::Udp { .. } => 6,
        L4::Tcp { .. } => 16,
        L4::Icmp { .. } => 2,
        L4::Other(_) => return,
    };
    let mut sum = sum_bytes(l4);
    let needs_pseudo = proto != PROTO_ICMP;
    if needs_pseudo {
        match (spec.src, spec.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum += sum_bytes(&s.octets()) + sum_bytes(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum += sum_bytes(&s.octets()) + sum_bytes(&d.octets());
            }
            _ => panic!("packet spec mixes address families"),
        }
        sum += proto as u32 + l4.len() as u32;
    }
    let mut c = checksum_fold(sum);
    if c == 0 && proto == PROTO_UDP {
        c = 0xffff;
    }
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

pub fn build(spec: &PacketSpec) -> Vec<u8> {
    let (proto, mut l4) = l4_bytes(spec);
    fill_l4_checksum(spec, proto, &mut l4);
    let mut f = Vec::with_capacity(64 + l4.len());
    f.extend_from_slice(&spec.dst_mac);
    f.extend_from_slice(&spec.src_mac);
    let ethertype: u16 = if spec.src.is_ipv6() { 0x86dd } else { 0x0800 };
    for (i, vid) in spec.vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && spec.vlans.len() > 1 {
            0x88a8
        } else {
            0x8100
        };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl = 5 + spec.ipv4_options.len() / 4;
            let mut h = Vec::with_capacity(ihl * 4);
            h.push(0x40 | ihl as u8);
            h.push(spec.dscp << 2);
            h.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&0x1234u16.to_be_bytes());
            let mut frag = 0u16;
            if spec.dont_fragment {
                frag |= 0x4000;
            }
            if let Some(fr) = spec.fragment {
                frag |= fr.offset & 0x1fff;
                if fr.more {
                    frag |= 0x2000;
                }
            }
            h.extend_from_slice(&frag.to_be_bytes());
            h.push(spec.ttl);
            h.push(proto);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&spec.ipv4_options);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
            let later = spec.fragment.is_some_and(|fr| fr.offset != 0);
            if later {
                // A later fragment carries payload bytes, not the transport header.
                f.extend(std::iter::repeat_n(0xcd, l4.len()));
            } else {
                f.extend_from_slice(&l4);
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let frag_hdr = spec.fragment.is_some();
            let ext_len = spec.ipv6_ext_headers * 8 + if frag_hdr { 8 } else { 0 };
            let mut h = Vec::with_capacity(40 + ext_len);
            let tc = spec.dscp << 2;
            h.push(0x60 | (tc >> 4));
            h.push(tc << 4);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
            let first_next = if spec.ipv6_ext_headers > 0 {
                60
            } else if frag_hdr {
                44
            } else {
                proto
            };
            h.push(first_next);
            h.push(spec.ttl);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            for i in 0..spec.ipv6_ext_headers {
                let next = if i + 1 < spec.ipv6_ext_headers {
                    60
                } else if frag_hdr {
                    44
                } else {
                    proto
                };
                // Destination options: next header, length 0 (8 bytes), PadN filling the rest.
                h.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
            let mut later = false;
            if let Some(fr) = spec.fragment {
                let field = (fr.offset << 3) | fr.more as u16;
                h.extend_from_slice(&[proto, 0]);
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                later = fr.offset != 0;
            }
            f.extend_from_slice(&h);
            if later {
                f.extend(std::iter::repeat_n(0xcd, l4.len()));
            } else {
                f.extend_from_slice(&l4);
            }
        }
        _ => panic!("packet spec mixes address families"),
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_udp_frame_has_valid_checksums() {
        let f = PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444).build();
        assert_eq!(f.len(), 14 + 20 + 8 + 18);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(
            checksum(&f[14..34]),
            0,
            "IPv4 header checksum verifies to zero"
        );
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17, 0, 26]);
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(checksum(&pseudo), 0, "UDP checksum verifies to zero");
    }

    #[test]
    fn vlan_and_ipv6_extension_headers_are_laid_out() {
        let mut s = PacketSpec::tcp("2001:db8::1", "2001:db8:6401::1", 1000, 80, TCP_SYN);
        s.vlans = vec![100, 200];
        s.ipv6_ext_headers = 2;
        let f = s.build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        assert_eq!(f[22 + 6], 60);
        assert_eq!(f[22 + 40], 60);
        assert_eq!(f[22 + 48], 6);
    }
}
