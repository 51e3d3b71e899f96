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
//! Which proxies are trusted is a setting ([`TrustedProxies`], from the `settings` crate);
//! walking the header with it ([`ForwardedFor`]) is HTTP work and stays here.
//!
//! The edge middleware ([`crate::rate_limit::RateLimit`]) works the address out once per
//! request and attaches it as [`ClientIp`]; everything else reads it from there. How an
//! address is counted by the limits and throttles (IPv6 per /64) is
//! [`admission::client_key`].

use std::net::IpAddr;

use poem::http::{HeaderMap, HeaderValue};
/// The parsed `CANOPY_TRUSTED_PROXIES`; the type lives with the settings.
pub use settings::TrustedProxies;

/// The client address of a request, as request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

/// Working the client address out of a request, given the trusted proxies.
pub trait ForwardedFor {
    /// The client address of a request from `peer` with `headers`.
    fn client_ip_of(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr>;

    /// The client address given the `peer` and the raw `X-Forwarded-For` header values in
    /// order (several headers count as one list).
    ///
    /// The values are taken as bytes and split on `,` before any entry is decoded, so a
    /// byte that is not ASCII (or not UTF-8) spoils only the entry it is in: the entries
    /// to its right, which the trusted proxies appended, still count.
    fn client_ip<'h>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'h [u8]>,
    ) -> Option<IpAddr>;
}

impl ForwardedFor for TrustedProxies {
    fn client_ip_of(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.client_ip(
            peer,
            headers
                .get_all("x-forwarded-for")
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    fn client_ip<'h>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'h [u8]>,
    ) -> Option<IpAddr> {
        let peer_ip = peer?.to_canonical();
        if !self.trusts(peer_ip) {
            return Some(peer_ip);
        }
        let entries: Vec<&[u8]> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(|byte| *byte == b','))
            .collect();
        let mut client = peer_ip;
        for entry in entries.iter().rev() {
            let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
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
                proxies.client_ip(Some(ip(peer)), headers.iter().map(|h| h.as_bytes())),
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
            none.client_ip(Some(ip("127.0.0.1")), [b"203.0.113.7".as_slice()]),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(none.client_ip(None, [b"203.0.113.7".as_slice()]), None);
    }

    #[test]
    fn a_non_ascii_byte_spoils_only_its_own_entry() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").expect("valid list");
        let table: &[(&[&[u8]], &str)] = &[
            // The client's own garbage left of what the proxy appended.
            (&[b"1.1.1.1\xff, 203.0.113.7"], "203.0.113.7"),
            (&[b"\xc3\xa9t\xc3\xa9, 203.0.113.7"], "203.0.113.7"),
            (&[b"\xff\xfe, 203.0.113.7, 10.0.0.5"], "203.0.113.7"),
            // In a header of its own.
            (&[b"\xff", b"203.0.113.7"], "203.0.113.7"),
            // Right of the trusted hops it ends the walk, like any malformed entry.
            (&[b"203.0.113.7, 10.0.0.5\xff"], "127.0.0.1"),
            (&[b"203.0.113.7, \xff, 10.0.0.5"], "10.0.0.5"),
        ];
        for (values, expected) in table {
            // As the edge middleware reads them: `HeaderValue::to_str` refuses every one
            // of these values.
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(
                    "x-forwarded-for",
                    HeaderValue::from_bytes(value).expect("a header value"),
                );
            }
            assert_eq!(
                proxies.client_ip_of(Some(ip("127.0.0.1")), &headers),
                Some(ip(expected)),
                "X-Forwarded-For {values:?}"
            );
        }
    }
}
