//! The chain's network and its agents' configurations, shared by `dots-lab run` with a
//! chain scenario and by the end-to-end test (tests/chain.rs): the internet, the upstream
//! provider's scrubber, the provider's scrubber and (in the lab) the customer's network,
//! each a namespace, joined by veth pairs; TEST-NET addresses only.
//!
//! ```text
//!  inet            upstream scrubber (XDP)          provider's scrubber (XDP)        customer
//!  inet0 ------ up-in  [routes]  up-out ---------- prov-in  [routes]  prov-out ------ cust0
//!  192.0.2.1    192.0.2.2        203.0.113.1       203.0.113.2 :4646   198.51.100.1   198.51.100.10
//!               :4646 on 203.0.113.1                                                  gateway 127.0.0.1:4747
//! ```
//!
//! Fixed MAC addresses and static neighbour entries: generated frames carry the upstream
//! scrubber's MAC and are routed hop by hop like transit traffic, without ARP.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const INET_IF: &str = "inet0";
pub const UP_IN: &str = "up-in";
pub const UP_OUT: &str = "up-out";
pub const PROV_IN: &str = "prov-in";
pub const PROV_OUT: &str = "prov-out";
pub const CUST_IF: &str = "cust0";

pub const INET_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x0c, 0x01];
pub const UP_IN_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x0c, 0x02];
const UP_OUT_MAC: &str = "02:00:5e:00:0c:03";
const PROV_IN_MAC: &str = "02:00:5e:00:0c:04";
const PROV_OUT_MAC: &str = "02:00:5e:00:0c:05";
const CUST_MAC: &str = "02:00:5e:00:0c:06";

/// Where the upstream scrubber's and the provider's DOTS servers listen.
pub const UPSTREAM_SERVER: &str = "203.0.113.1:4646";
pub const PROVIDER_SERVER: &str = "203.0.113.2:4646";
/// The customer's gateway (on the customer's own host: loopback).
pub const GATEWAY_SERVER: &str = "127.0.0.1:4747";
/// The customer's network (the lab's customer prefixes, which its guard asks for) and its
/// host.
pub const CUSTOMER_PREFIX: &str = "198.51.100.0/24";
const CUSTOMER_PREFIXES: &str = "\"198.51.100.0/24\", \"2001:db8:6401::/48\"";
pub const CUSTOMER_HOST: &str = "198.51.100.10";

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn ip(args: &[&str]) -> Result<()> {
    crate::lab::topology::run("ip", args).map(drop)
}

fn sysctl(ns: &str, key: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", key])
        .output()
        .context("running sysctl in a namespace")?;
    if !out.status.success() {
        bail!(
            "sysctl {key} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A veth pair `a_if` (in `a`, `a_mac`) -- `b_if` (in `b`, `b_mac`), both up, addressed.
fn veth(a: (&str, &str, &str, &str), b: (&str, &str, &str, &str)) -> Result<()> {
    let (a_ns, a_if, a_mac, a_addr) = a;
    let (b_ns, b_if, b_mac, b_addr) = b;
    ip(&[
        "link", "add", a_if, "address", a_mac, "netns", a_ns, "type", "veth", "peer", "name", b_if,
        "address", b_mac, "netns", b_ns,
    ])?;
    for (ns, ifname, addr) in [(a_ns, a_if, a_addr), (b_ns, b_if, b_addr)] {
        ip(&["-n", ns, "addr", "add", addr, "dev", ifname])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Wires the namespaces (they exist; named `inet`, `up`, `prov` and, for the lab, `cust`)
/// and makes both scrubbers route towards the customer.
pub fn wire(inet: &str, up: &str, prov: &str, cust: Option<&str>) -> Result<()> {
    veth(
        (inet, INET_IF, &mac_text(INET_MAC), "192.0.2.1/24"),
        (up, UP_IN, &mac_text(UP_IN_MAC), "192.0.2.2/24"),
    )?;
    veth(
        (up, UP_OUT, UP_OUT_MAC, "203.0.113.1/24"),
        (prov, PROV_IN, PROV_IN_MAC, "203.0.113.2/24"),
    )?;
    // Sources are spoofed: no reverse-path filter on the way.
    for ns in [up, prov] {
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            sysctl(ns, key)?;
        }
    }
    ip(&[
        "-n",
        up,
        "route",
        "add",
        CUSTOMER_PREFIX,
        "via",
        "203.0.113.2",
    ])?;
    ip(&[
        "-n",
        up,
        "neigh",
        "replace",
        "203.0.113.2",
        "lladdr",
        PROV_IN_MAC,
        "dev",
        UP_OUT,
        "nud",
        "permanent",
    ])?;
    let Some(cust) = cust else {
        return Ok(()); // the test counts what the provider's filter lets through on prov-in
    };
    veth(
        (prov, PROV_OUT, PROV_OUT_MAC, "198.51.100.1/24"),
        (cust, CUST_IF, CUST_MAC, "198.51.100.10/24"),
    )?;
    ip(&[
        "-n",
        prov,
        "neigh",
        "replace",
        CUSTOMER_HOST,
        "lladdr",
        CUST_MAC,
        "dev",
        PROV_OUT,
        "nud",
        "permanent",
    ])?;
    // The customer's gateway reaches the provider's server through the provider.
    ip(&["-n", cust, "route", "add", "default", "via", "198.51.100.1"])?;
    Ok(())
}

/// The agents' server.toml files. Certificates come from one lab PKI (`dots-agent pki
/// init`): `{pki}ca.pem`, `{pki}server.pem` for every server (its name `server_name`) and
/// one per client (`customer`, "gateway", "provider").
pub struct Configs<'a> {
    /// Where the certificates are, relative to the configuration files ("" or "pki/").
    pub pki: &'a str,
    pub server_name: &'a str,
    /// The customer's client name (its certificate's CN).
    pub customer: &'a str,
    pub terminating_seconds: u64,
}

impl Configs<'_> {
    fn server_part(&self, listen: &str, store: &str) -> String {
        let p = self.pki;
        format!(
            "[signal]\nlisten = [\"{listen}\"]\nterminating_seconds = {}\n\
             [tls]\nca = \"{p}ca.pem\"\ncert = \"{p}server.pem\"\nkey = \"{p}server.key\"\n\
             [store]\ndir = \"{store}\"\n",
            self.terminating_seconds
        )
    }

    fn upstream_part(&self, server: &str, me: &str, transport: &str, escalate: &str) -> String {
        let p = self.pki;
        format!(
            "[upstream]\nserver = \"{server}\"\nserver_name = \"{}\"\nca = \"{p}ca.pem\"\n\
             cert = \"{p}{me}.pem\"\nkey = \"{p}{me}.key\"\ntransport = \"{transport}\"\n\
             {escalate}\nterminating_seconds = {}\n",
            self.server_name, self.terminating_seconds
        )
    }

    fn datapath(interface: &str, pins: &Path) -> String {
        format!(
            "[datapath]\ninterfaces = [\"{interface}\"]\nxdp_mode = \"native\"\npin_root = \"{}\"\n",
            pins.display()
        )
    }

    /// The upstream provider's scrubber: XDP on `up-in`; `policy` is the rest of its
    /// `[[client]]` for the provider (e.g. `acl = [...]`).
    pub fn upstream(&self, pins: &Path, policy: &str) -> String {
        format!(
            "{}{}[[client]]\nname = \"provider\"\nprefixes = [{CUSTOMER_PREFIXES}]\n{policy}\n",
            self.server_part("0.0.0.0:4646", "state-upstream"),
            Self::datapath(UP_IN, pins),
        )
    }

    /// The provider's scrubber: XDP on `prov-in`, a recursive server escalating to the
    /// upstream scrubber as `escalate` says (e.g. `escalate = "exceeded"\ncapacity_pps = 100`);
    /// `policy`: the rest of its `[[client]]` for the customer's gateway.
    pub fn provider(&self, pins: &Path, escalate: &str, policy: &str) -> String {
        format!(
            "{}{}{}[[client]]\nname = \"gateway\"\nprefixes = [{CUSTOMER_PREFIXES}]\n{policy}\n",
            self.server_part(PROVIDER_SERVER, "state-provider"),
            Self::datapath(PROV_IN, pins),
            self.upstream_part(UPSTREAM_SERVER, "provider", "dtls", escalate),
        )
    }

    /// The customer's gateway: no datapath, every request relayed to the provider.
    pub fn gateway(&self) -> String {
        format!(
            "{}{}[[client]]\nname = \"{}\"\nprefixes = [{CUSTOMER_PREFIXES}]\n",
            self.server_part(GATEWAY_SERVER, "state-gateway"),
            self.upstream_part(PROVIDER_SERVER, "gateway", "tls", ""),
            self.customer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agents will read: valid TOML with the sections each role needs.
    #[test]
    fn the_configurations_are_what_each_role_needs() {
        let c = Configs {
            pki: "pki/",
            server_name: "dots.lab",
            customer: "customer",
            terminating_seconds: 1,
        };
        let pins = Path::new("/sys/fs/bpf/x");
        let parse = |t: String| t.parse::<toml::Table>().unwrap();
        let up = parse(c.upstream(pins, "acl = []"));
        assert_eq!(up["datapath"]["interfaces"][0].as_str(), Some(UP_IN));
        assert!(up.get("upstream").is_none());
        let prov = parse(c.provider(pins, "escalate = \"exceeded\"\ncapacity_pps = 9", ""));
        assert_eq!(prov["upstream"]["capacity_pps"].as_integer(), Some(9));
        assert_eq!(prov["upstream"]["cert"].as_str(), Some("pki/provider.pem"));
        let gw = parse(c.gateway());
        assert!(gw.get("datapath").is_none(), "a gateway has no datapath");
        assert_eq!(gw["client"][0]["name"].as_str(), Some("customer"));
        assert_eq!(gw["upstream"]["server"].as_str(), Some(PROVIDER_SERVER));
    }
}
