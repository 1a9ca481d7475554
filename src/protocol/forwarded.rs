//! Who the client is behind trusted proxies: the `trusted_proxies` list
//! ([`TrustedProxies`]) and the client address in `X-Forwarded-For` and
//! `Forwarded` (RFC 7239) headers ([`forwarded_client`]), sans-IO.
//!
//! Each proxy appends the address it received the request from, so the
//! list reads client, proxy 1, proxy 2, ...; everything left of the last
//! proxy we trust may have been written by the client. The client is
//! therefore the **rightmost address that is not a trusted proxy**. If
//! every address is trusted, the leftmost is the client. An entry that is
//! not an address (`unknown`, an obfuscated `_id`, garbage) ends the walk:
//! nothing left of it can be attributed, so the last trusted hop seen (or
//! none) is the answer.

use ipnet::IpNet;
use std::net::IpAddr;

/// Where a client address was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    XForwardedFor,
    Forwarded,
}

/// The `trusted_proxies` networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in a trusted network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, a dual-stack listener's IPv4 peer) matches the
    /// IPv4 networks, and IPv6 networks written in the mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let plain = canonical(ip);
        self.nets
            .iter()
            .any(|n| n.contains(&plain) || n.contains(&ip))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request from a trusted proxy: from `X-Forwarded-For`
/// when the request has one (`xff`: every such header's value, in order),
/// else from the `for=` parameters of `Forwarded` (`forwarded`, likewise).
/// `None`: neither header names a client (the peer itself is the client).
///
/// `X-Forwarded-For` is preferred because it is what nginx, HAProxy and
/// cloud load balancers set by default; a proxy that sets only
/// `Forwarded` must remove a client's `X-Forwarded-For`.
pub fn forwarded_client<'a>(
    xff: impl Iterator<Item = &'a str> + Clone,
    forwarded: impl Iterator<Item = &'a str> + Clone,
    trusted: &TrustedProxies,
) -> Option<(IpAddr, Source)> {
    if xff.clone().any(|v| !v.trim().is_empty()) {
        let hops: Vec<_> = xff.flat_map(|v| v.split(',')).map(parse_node).collect();
        return rightmost_untrusted(hops.into_iter(), trusted)
            .map(|ip| (ip, Source::XForwardedFor));
    }
    let mut hops = Vec::new();
    for value in forwarded {
        for element in split_quoted(value, b',') {
            let node = split_quoted(element, b';').find_map(|pair| {
                let (name, v) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| unquote(v.trim()))
            });
            // An element without `for=` says nothing about its sender.
            if let Some(node) = node {
                hops.push(parse_node(node));
            }
        }
    }
    rightmost_untrusted(hops.into_iter(), trusted).map(|ip| (ip, Source::Forwarded))
}

/// Walks hops from the right; see the module text.
fn rightmost_untrusted(
    hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let mut last_trusted = None;
    for hop in hops.rev() {
        let Some(ip) = hop else {
            return last_trusted;
        };
        let ip = canonical(ip);
        if !trusted.contains(ip) {
            return Some(ip);
        }
        last_trusted = Some(ip);
    }
    last_trusted
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`. `None` for anything else.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (ip, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port, or an RFC 7239 obfuscated port (`_abc`).
fn is_port(s: &str) -> bool {
    (s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok())
        || (s.starts_with('_') && s.len() > 1)
}

/// `"..."` without its quotes and backslash escapes kept as they are (no
/// valid node contains a backslash, so an escaped one fails to parse).
fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
}

/// Splits at `sep` outside double quotes (RFC 7230 quoted-string).
fn split_quoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            cuts.push(&s[start..i]);
            start = i + 1;
        }
    }
    cuts.push(&s[start..]);
    cuts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str], t: &TrustedProxies) -> Option<IpAddr> {
        forwarded_client(values.iter().copied(), std::iter::empty(), t).map(|(ip, s)| {
            assert_eq!(s, Source::XForwardedFor);
            ip
        })
    }

    fn fwd(values: &[&str], t: &TrustedProxies) -> Option<IpAddr> {
        forwarded_client(std::iter::empty(), values.iter().copied(), t).map(|(ip, s)| {
            assert_eq!(s, Source::Forwarded);
            ip
        })
    }

    #[test]
    fn mapped_addresses_match_ipv4_networks() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(!t.contains(ip("::ffff:11.0.0.1")));
        assert!(!t.contains(ip("::2")));
        // A network written in the mapped form matches both spellings.
        let m = trusted(&["::ffff:192.0.2.0/120"]);
        assert!(m.contains(ip("::ffff:192.0.2.9")));
        assert!(TrustedProxies::default().is_empty());
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client forged the first entry; our proxy appended the real one.
        assert_eq!(xff(&["6.6.6.6, 203.0.113.7"], &t), Some(ip("203.0.113.7")));
        // Trusted hops on the right are skipped.
        assert_eq!(
            xff(&["6.6.6.6, 203.0.113.7, 10.0.0.2,10.0.0.3"], &t),
            Some(ip("203.0.113.7"))
        );
        // Several headers are one list, in order.
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.7", "10.0.0.2"], &t),
            Some(ip("203.0.113.7"))
        );
        // All trusted: the leftmost.
        assert_eq!(xff(&["10.0.0.9, 10.0.0.2"], &t), Some(ip("10.0.0.9")));
        // Ports and brackets, mapped forms.
        assert_eq!(xff(&["203.0.113.7:5555"], &t), Some(ip("203.0.113.7")));
        assert_eq!(xff(&["[2001:db8::1]:80"], &t), Some(ip("2001:db8::1")));
        assert_eq!(xff(&["2001:db8::1"], &t), Some(ip("2001:db8::1")));
        assert_eq!(xff(&["::ffff:203.0.113.7"], &t), Some(ip("203.0.113.7")));
        assert_eq!(
            xff(&["203.0.113.7, ::ffff:10.0.0.1"], &t),
            Some(ip("203.0.113.7"))
        );
    }

    #[test]
    fn garbage_ends_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(xff(&["203.0.113.7, unknown"], &t), None);
        assert_eq!(
            xff(&["203.0.113.7, unknown, 10.0.0.4"], &t),
            Some(ip("10.0.0.4"))
        );
        assert_eq!(xff(&["not an address"], &t), None);
        assert_eq!(xff(&["203.0.113.7,"], &t), None);
        assert_eq!(xff(&["1.2.3.4:99999"], &t), None);
        assert_eq!(xff(&["[1.2.3.4]"], &t), None);
        assert_eq!(xff(&["[2001:db8::1"], &t), None);
        // An empty header is no header.
        assert_eq!(xff(&["  "], &t), None);
    }

    #[test]
    fn forwarded_for_parameters() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"], &t),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            fwd(&["for=6.6.6.6, For=\"[2001:db8:cafe::17]:4711\""], &t),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            fwd(&["for=6.6.6.6", "for=192.0.2.43, for=10.0.0.7;by=x"], &t),
            Some(ip("192.0.2.43"))
        );
        // Quoted separators do not split.
        assert_eq!(
            fwd(&["for=192.0.2.1;ext=\"a,b;c\", for=\"192.0.2.2:80\""], &t),
            Some(ip("192.0.2.2"))
        );
        assert_eq!(
            fwd(&["for=\"_hidden\", for=10.0.0.1"], &t),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(fwd(&["for=unknown"], &t), None);
        assert_eq!(fwd(&["proto=https"], &t), None);
        assert_eq!(fwd(&["for=\"192.0.2.2:_port\""], &t), Some(ip("192.0.2.2")));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let t = trusted(&["10.0.0.0/8"]);
        let got = forwarded_client(
            ["198.51.100.1"].into_iter(),
            ["for=192.0.2.1"].into_iter(),
            &t,
        );
        assert_eq!(got, Some((ip("198.51.100.1"), Source::XForwardedFor)));
        let got = forwarded_client([""].into_iter(), ["for=192.0.2.1"].into_iter(), &t);
        assert_eq!(got, Some((ip("192.0.2.1"), Source::Forwarded)));
    }
}
