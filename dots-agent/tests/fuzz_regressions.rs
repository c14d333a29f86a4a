//! What the fuzz targets (fuzz/, `scripts/fuzz.sh`) found, kept as tests of the real code:
//! each test names the target and the input's shape. Needs root (BPF) for the XDP cases.

mod common;

use common::{Lab, DROP};
use dots_agent::datapath::{AclAction, AclEntry, AclMatch, MitigationSpec, Mitigator, PortRange};
use dots_lab::packet::{Fragment, PacketSpec};
use xdp_common::DropReason;

const T6: &str = "2001:db8:6401::7";

/// xdp_parse: an IPv6 frame with exactly 8 extension headers (README: "up to 8 extension
/// headers" are followed) was parsed as malformed: the walk followed all 8 and stopped
/// without looking at what came next. 8 must reach the ports; 9 is over-long.
#[test]
fn eight_ipv6_extension_headers_are_followed_nine_are_malformed() {
    let mut s = MitigationSpec::new(1, vec!["2001:db8:6401::/48".parse().unwrap()]);
    s.acl = vec![AclEntry {
        name: "dns".into(),
        matches: AclMatch {
            destination_port: Some(PortRange::single(53)),
            ..Default::default()
        },
        action: AclAction::Drop,
    }];
    let mut lab = Lab::new();
    lab.dp
        .install(&s)
        .unwrap_or_else(|e| panic!("install: {e}"));
    let mut eight = PacketSpec::udp("2001:db8:a::1", T6, 1, 53);
    eight.ipv6_ext_headers = 8;
    let mut seven_and_fragment = PacketSpec::udp("2001:db8:a::1", T6, 1, 53);
    seven_and_fragment.ipv6_ext_headers = 7;
    seven_and_fragment.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    let mut nine = PacketSpec::udp("2001:db8:a::1", T6, 1, 53);
    nine.ipv6_ext_headers = 9;
    for f in [&eight, &seven_and_fragment, &nine] {
        assert_eq!(lab.run(&f.build()), DROP);
    }
    let c = lab.counters(1);
    assert_eq!(
        c.dropped(DropReason::AclDrop).packets,
        2,
        "8 extension headers (a fragment header among them) reach the ACL's port match"
    );
    assert_eq!(
        c.dropped(DropReason::Malformed).packets,
        1,
        "9 are over-long"
    );
}
