//! [`TrustedProxies`], the parsed `CANOPY_TRUSTED_PROXIES`: which peers may tell us the
//! client's address. Walking `X-Forwarded-For` with it is HTTP work and lives in `api`'s
//! `client_ip` module.

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// Which peers may tell us the client's address (`CANOPY_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
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
        Some(Self { nets })
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is one of the proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The list does not parse: an entry is neither a CIDR nor an address.
#[derive(Debug, thiserror::Error)]
#[error("expected comma-separated CIDRs or addresses")]
pub struct InvalidProxyList;

impl FromStr for TrustedProxies {
    type Err = InvalidProxyList;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list).ok_or(InvalidProxyList)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
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
