//! Which addresses outbound requests may reach: [`NetGuard`] and its [`Cidr`] allowlist.
//!
//! A URL submitted by a client (a media link, a webhook) must not become a way to reach the
//! node's own network: loopback services, the cloud metadata endpoint at 169.254.169.254, a
//! private LAN. The guard refuses every special-purpose range (IANA's special-purpose address
//! registries, RFC 6890) unless the operator allowlisted it, e.g. a webhook receiver on the LAN.
//! IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by the
//! address they embed, so `::ffff:127.0.0.1` is loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::NetError;

/// An IP network (`10.0.0.0/8`, `::1/128`); the configuration's type, so the allowlist is
/// parsed and checked the same way when the config is validated and when a request is made.
pub use ytcaption_config::Cidr;

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The IPv4 ranges no outbound request may reach unless allowlisted, with why.
const FORBIDDEN_V4: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "\"this network\" / unspecified",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (RFC 1918)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "carrier-grade NAT"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local / cloud metadata",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (RFC 1918)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved / broadcast"),
];

/// The IPv6 ranges refused outright. Ranges that embed an IPv4 address are handled by
/// [`embedded_v4`] instead, so they are judged by that address.
const FORBIDDEN_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// The IPv4 address an IPv6 address carries, for the forms that route to it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 (`64:ff9b::a.b.c.d`)
/// and 6to4 (`2002:aabb:ccdd::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // `::/96` minus `::` and `::1`, which FORBIDDEN_V6 names precisely.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32);
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32);
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// Why `ip` is special-purpose, or `None` for an ordinary public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => FORBIDDEN_V4
            .iter()
            .find(|(net, prefix, _)| u32::from(v4) & mask_v4(*prefix) == u32::from(*net))
            .map(|(_, _, why)| *why),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_reason(IpAddr::V4(v4));
            }
            FORBIDDEN_V6
                .iter()
                .find(|(net, prefix, _)| u128::from(v6) & mask_v6(*prefix) == u128::from(*net))
                .map(|(_, _, why)| *why)
        }
    }
}

/// The outbound address policy: special-purpose addresses are refused unless inside one of
/// the operator's allowlisted networks.
#[derive(Debug, Clone, Default)]
pub struct NetGuard {
    allow: Vec<Cidr>,
}

impl NetGuard {
    /// A guard allowing the given networks (`"10.0.0.0/8"`, `"::1/128"`, bare addresses) on top
    /// of every public address.
    pub fn new(allow_cidrs: &[String]) -> Result<NetGuard, NetError> {
        let allow = allow_cidrs
            .iter()
            .map(|entry| {
                entry.parse::<Cidr>().map_err(|error| NetError::BadCidr {
                    entry: entry.clone(),
                    reason: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetGuard { allow })
    }

    /// The allowlisted networks.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allow
    }

    /// Whether `ip` is allowlisted: the address itself, or the IPv4 address it embeds.
    pub fn is_allowlisted(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|cidr| cidr.contains(ip) || embedded.is_some_and(|v4| cidr.contains(v4)))
    }

    /// Refuses `ip` when it is special-purpose and not allowlisted. `host` only names the
    /// target in the error.
    pub fn check_host(&self, host: &str, ip: IpAddr) -> Result<(), NetError> {
        match forbidden_reason(ip) {
            Some(why) if !self.is_allowlisted(ip) => Err(NetError::Forbidden {
                host: host.to_string(),
                ip,
                why,
            }),
            _ => Ok(()),
        }
    }

    /// [`NetGuard::check_host`] for a bare address.
    pub fn check(&self, ip: IpAddr) -> Result<(), NetError> {
        self.check_host(&ip.to_string(), ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn guard(allow: &[&str]) -> NetGuard {
        NetGuard::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!("fd00::1/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::1/129",
            "host/8",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
        let err = NetGuard::new(&["10.0.0.0/40".to_string()]).unwrap_err();
        assert_eq!(err.code(), "net.bad_cidr");
        assert!(!err.retryable());
    }

    #[test]
    fn cidr_membership_at_the_edges() {
        let net: Cidr = "100.64.0.0/10".parse().unwrap();
        assert!(net.contains(ip("100.64.0.0")));
        assert!(net.contains(ip("100.127.255.255")));
        assert!(!net.contains(ip("100.128.0.0")));
        assert!(!net.contains(ip("100.63.255.255")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")), "families never mix");
        let v6: Cidr = "fe80::/10".parse().unwrap();
        assert!(v6.contains(ip("febf:ffff::1")));
        assert!(!v6.contains(ip("fec0::1")));
    }

    #[test]
    fn refuses_special_purpose_v4() {
        let g = NetGuard::default();
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.1",
        ] {
            let err = g.check(ip(bad)).unwrap_err();
            assert_eq!(err.code(), "net.forbidden_address", "{bad}");
            assert!(!err.retryable());
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
        ] {
            g.check(ip(good)).unwrap();
        }
    }

    #[test]
    fn refuses_special_purpose_v6_and_embedded_v4() {
        let g = NetGuard::default();
        for bad in [
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            assert!(g.check(ip(bad)).is_err(), "{bad} allowed");
        }
        for good in ["2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            g.check(ip(good)).unwrap();
        }
    }

    #[test]
    fn allowlist_opens_exactly_its_networks() {
        let g = guard(&["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        g.check(ip("127.0.0.1")).unwrap();
        g.check(ip("::ffff:127.0.0.1")).unwrap();
        g.check(ip("10.200.3.4")).unwrap();
        g.check(ip("::1")).unwrap();
        assert!(g.check(ip("127.0.0.2")).is_err());
        assert!(g.check(ip("169.254.169.254")).is_err());
        assert!(g.check(ip("192.168.0.1")).is_err());
        assert!(g.check(ip("fe80::1")).is_err());
        let err = g.check_host("metadata", ip("169.254.169.254")).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
        assert!(err.to_string().contains("169.254.169.254"), "{err}");
    }
}
