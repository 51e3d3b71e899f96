//! How a client address is counted, by the rate limits and the throttles alike.

use std::net::IpAddr;

/// What a client address is counted as, in the rate limits and the auth throttles alike:
/// an IPv4 address (also when written v4-mapped, `::ffff:a.b.c.d`) as itself, an IPv6
/// address as its /64 (`2001:db8:1:2::/64`), which is what one subscriber is usually
/// given, so rotating addresses within it does not earn fresh counters.
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn clients_are_counted_per_ipv4_address_and_per_ipv6_slash_64() {
        let table = [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::1", "::/64"),
        ];
        for (address, key) in table {
            assert_eq!(client_key(ip(address)), key, "{address}");
        }
        // Rotating within one /64 keeps the key; the next /64 is another client.
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
    }
}
