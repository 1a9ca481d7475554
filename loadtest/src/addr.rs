//! Target URL and source address parsing. Both must be loopback: this
//! tool only ever generates load against the local machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the Host header.
    pub host: String,
    /// Path prefix from the URL ("" when the URL has none).
    pub prefix: String,
    /// `wss://`: TLS over the TCP connection.
    pub tls: bool,
    /// The host without the port (TLS server name: SNI for a DNS name,
    /// the certificate's IP SAN for an IP literal).
    pub hostname: String,
}

impl Target {
    /// The request path for a scenario path such as `/echo`.
    pub fn path(&self, p: &str) -> String {
        format!("{}{}", self.prefix, p)
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Parses `ws://HOST:PORT[/prefix]` or `wss://...` where HOST is a
/// loopback IP literal or `localhost`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(format!("{url:?}: only ws:// and wss:// URLs are supported"));
    };
    let default_port = if tls { "443" } else { "80" };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let prefix = path.trim_end_matches('/').to_string();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| format!("{url:?}: unclosed ["))?;
        let port = v6[end + 1..].strip_prefix(':').unwrap_or(default_port);
        (&v6[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, default_port),
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("{url:?}: host must be a loopback IP literal or localhost"))?
    };
    if !is_loopback(ip) {
        return Err(format!(
            "{url:?}: refusing a non-loopback target; load tests stay on 127.0.0.0/8 or ::1"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        prefix,
        tls,
        hostname: host.to_string(),
    })
}

/// Parses `127.0.0.1-127.0.0.16` (inclusive IPv4 range) or a comma list
/// of addresses (ranges allowed as list items).
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("bad source range start in {item:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("bad source range end in {item:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                return Err(format!("source range {item:?} is backwards"));
            }
            if b - a >= 65536 {
                return Err(format!("source range {item:?} is too large (max 65536)"));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(
                item.parse()
                    .map_err(|_| format!("bad source address {item:?}"))?,
            );
        }
    }
    if out.is_empty() {
        return Err("empty --source".into());
    }
    if let Some(bad) = out.iter().find(|ip| !is_loopback(**ip)) {
        return Err(format!("source {bad} is not loopback"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:9001").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path("/echo"), "/echo");
        let t = parse_url("ws://localhost:80/base/").unwrap();
        assert_eq!(t.path("/echo"), "/base/echo");
        let t = parse_url("ws://[::1]:9").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert!(parse_url("ws://127.9.8.7:1").is_ok());
        assert!(!t.tls);
        let t = parse_url("wss://localhost:9443/p").unwrap();
        assert!(t.tls);
        assert_eq!(t.hostname, "localhost");
        assert_eq!(t.host, "localhost:9443");
        assert_eq!(t.path("/echo"), "/p/echo");
        let t = parse_url("wss://127.0.0.1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(t.hostname, "127.0.0.1");
        let t = parse_url("wss://[::1]:9").unwrap();
        assert_eq!(t.hostname, "::1");
        assert!(parse_url("http://127.0.0.1:1").is_err());
        assert!(parse_url("wss://example.com:1").is_err());
        assert!(parse_url("ws://10.0.0.1:1").is_err());
        assert!(parse_url("ws://example.com:1").is_err());
        assert!(parse_url("ws://127.0.0.1:x").is_err());
    }

    #[test]
    fn source_ranges_and_lists() {
        let v = parse_sources("127.0.0.1-127.0.0.16").unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(v[15], "127.0.0.16".parse::<IpAddr>().unwrap());
        let v = parse_sources("127.0.0.1, 127.0.1.1-127.0.1.2,::1").unwrap();
        assert_eq!(v.len(), 4);
        let v = parse_sources("127.0.0.255-127.0.1.0").unwrap();
        assert_eq!(v.len(), 2);
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("192.168.0.1").is_err());
        assert!(parse_sources("127.0.0.1-10.0.0.1").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("127.0.0.0-127.1.0.0").is_err());
    }
}
