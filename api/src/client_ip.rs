//! The client's address: the peer's, or behind trusted proxies the right-most
//! `X-Forwarded-For` entry that is not one of them.
//!
//! Proxies append the address they received a connection from, so only the right end of
//! the header is trustworthy: everything left of the first untrusted hop was written by
//! the client (or anyone before it) and may be spoofed. Walking from the right and skipping
//! the configured proxies yields the last address a trusted hop vouched for. The header is
//! considered only when the peer itself is trusted; a malformed entry stops the walk (the
//! hop that wrote it is not trusted to have written the rest either), and the last trusted
//! address seen is the client.
//!
//! The edge middleware ([`crate::rate_limit::RateLimit`]) works the address out once per
//! request and attaches it as [`ClientIp`]; everything else reads it from there.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request, as request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

/// Which peers may tell us the client's address (`CANOPY_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// The deprecated `CANOPY_TRUST_FORWARDED_FOR=true`: whatever the peer, the right-most
    /// entry is the client.
    any_peer_one_hop: bool,
}

impl TrustedProxies {
    /// No proxy is trusted: the peer address is the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses a comma-separated list of CIDRs or plain addresses (`10.0.0.0/8, ::1`).
    /// `None` when an entry is neither.
    pub fn parse(list: &str) -> Option<Self> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
                    .map(|net| net.trunc())
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            nets,
            any_peer_one_hop: false,
        })
    }

    /// The behaviour of the deprecated boolean: one hop, whoever the peer is.
    pub fn legacy_one_hop() -> Self {
        Self {
            nets: Vec::new(),
            any_peer_one_hop: true,
        }
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && !self.any_peer_one_hop
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address given the `peer` and the `X-Forwarded-For` header values in
    /// order (several headers count as one list).
    pub fn client_ip<'h>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'h str>,
    ) -> Option<IpAddr> {
        let peer = peer.map(|ip| ip.to_canonical());
        let peer_ip = peer?;
        if self.any_peer_one_hop {
            let entries: Vec<&str> = forwarded_for.into_iter().collect();
            let last = entries
                .iter()
                .rev()
                .flat_map(|value| value.rsplit(','))
                .next()
                .and_then(parse_entry);
            return last.or(peer);
        }
        if !self.trusts(peer_ip) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer_ip;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`[::1]:443`,
/// `1.2.3.4:80`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_entry() {
        let proxies =
            TrustedProxies::parse("10.0.0.0/8, 127.0.0.1/32, 2001:db8::/32").expect("valid list");
        let table: &[(&str, &[&str], &str)] = &[
            // No proxy in between.
            ("127.0.0.1", &[], "127.0.0.1"),
            // One trusted proxy.
            ("127.0.0.1", &["203.0.113.7"], "203.0.113.7"),
            // A spoofed left-most entry does not matter.
            ("127.0.0.1", &["1.1.1.1, 203.0.113.7"], "203.0.113.7"),
            (
                "10.1.2.3",
                &["6.6.6.6, 203.0.113.7, 10.0.0.5"],
                "203.0.113.7",
            ),
            // Several headers form one list.
            (
                "10.1.2.3",
                &["6.6.6.6", "203.0.113.7, 10.9.9.9"],
                "203.0.113.7",
            ),
            // An untrusted peer's header is ignored.
            ("198.51.100.1", &["203.0.113.7"], "198.51.100.1"),
            // Every hop trusted: the left-most one is as far as the chain goes.
            ("127.0.0.1", &["10.0.0.1, 10.0.0.2"], "10.0.0.1"),
            // Malformed entries stop the walk at the last trusted hop.
            ("127.0.0.1", &["203.0.113.7, not-an-ip"], "127.0.0.1"),
            ("127.0.0.1", &["1.1.1.1, garbage, 10.0.0.9"], "10.0.0.9"),
            ("127.0.0.1", &[""], "127.0.0.1"),
            // Ports and IPv6.
            ("127.0.0.1", &["203.0.113.7:4711"], "203.0.113.7"),
            ("127.0.0.1", &["2001:db8::1, 2a00:1450::5"], "2a00:1450::5"),
            ("127.0.0.1", &["[2a00:1450::5]:443"], "2a00:1450::5"),
            (
                "2001:db8::9",
                &["2a00:1450::5, 2001:db8::1"],
                "2a00:1450::5",
            ),
            // A v4-mapped peer is the v4 address.
            ("::ffff:127.0.0.1", &["203.0.113.7"], "203.0.113.7"),
            ("127.0.0.1", &["::ffff:203.0.113.7"], "203.0.113.7"),
        ];
        for (peer, headers, expected) in table {
            assert_eq!(
                proxies.client_ip(Some(ip(peer)), headers.iter().copied()),
                Some(ip(expected)),
                "peer {peer}, X-Forwarded-For {headers:?}"
            );
        }
    }

    #[test]
    fn nothing_trusted_means_the_peer() {
        let none = TrustedProxies::none();
        assert!(none.is_empty());
        assert_eq!(
            none.client_ip(Some(ip("127.0.0.1")), ["203.0.113.7"]),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(none.client_ip(None, ["203.0.113.7"]), None);
    }

    #[test]
    fn the_deprecated_boolean_takes_the_last_entry_from_any_peer() {
        let legacy = TrustedProxies::legacy_one_hop();
        assert_eq!(
            legacy.client_ip(Some(ip("198.51.100.1")), ["1.1.1.1, 203.0.113.7"]),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            legacy.client_ip(Some(ip("198.51.100.1")), ["junk"]),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn lists_parse_cidrs_and_addresses_and_refuse_the_rest() {
        let parsed = TrustedProxies::parse("10.0.0.0/8,127.0.0.1, ::1 ,fd00::/8").expect("valid");
        assert!(parsed.trusts(ip("10.200.0.1")));
        assert!(parsed.trusts(ip("::1")));
        assert!(parsed.trusts(ip("fd12::1")));
        assert!(!parsed.trusts(ip("127.0.0.2")));
        assert_eq!(TrustedProxies::parse(""), Some(TrustedProxies::none()));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/8;1.2.3.4", "1.2.3"] {
            assert_eq!(TrustedProxies::parse(bad), None, "{bad}");
        }
    }
}
