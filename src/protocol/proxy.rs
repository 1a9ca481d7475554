//! The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO:
//! [`parse_proxy_header`] is called with every byte received so far and
//! answers "need more", the header (its length and the client's address),
//! or why it is not a valid header.
//!
//! The header is bounded before it is complete: a version 1 line is at most
//! [`V1_MAX_BYTES`] (107, the spec's own bound, CRLF included), a version 2
//! header at most 16 bytes plus [`V2_MAX_PAYLOAD`] of addresses and TLVs.
//! The answer never depends on how the bytes were split into reads: a
//! prefix is refused as soon as it cannot start a valid header, and a
//! header is never complete before its last byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 1 signature (`PROXY` and a space).
const V1_PREFIX: &[u8] = b"PROXY ";
/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, `\r\n` included (spec §2.1).
pub const V1_MAX_BYTES: usize = 107;
/// Largest version 2 payload accepted (addresses and TLVs). The spec allows
/// up to 65535; proxies send 12 or 36 bytes of addresses plus a few TLVs
/// (AWS and Azure endpoint ids, TLS details), far below this.
pub const V2_MAX_PAYLOAD: usize = 4096;
/// Longest header of either version.
pub const MAX_HEADER_BYTES: usize = 16 + V2_MAX_PAYLOAD;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Its length: what follows belongs to the proxied connection.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
    /// The client's address and port, when the header carries one. `None`
    /// for `PROXY UNKNOWN`, the version 2 `LOCAL` command (the proxy's own
    /// connection, e.g. a health check) and address families other than
    /// IPv4 and IPv6: the connection's own peer is then the client.
    pub source: Option<SocketAddr>,
}

/// What the bytes so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyParse {
    /// A valid prefix of a header: wait for more.
    Partial,
    Complete(ProxyHeader),
}

/// Why the bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither signature: the peer speaks something else (often plain HTTP).
    NotProxy,
    /// A version 1 line that breaks the grammar, or longer than 107 bytes.
    BadV1,
    /// A version 2 header with a bad version, command, family or length.
    BadV2,
    /// A version 2 header announcing more than [`V2_MAX_PAYLOAD`] bytes.
    TooLong,
}

impl ProxyError {
    /// Snake_case label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not_proxy",
            ProxyError::BadV1 => "bad_v1",
            ProxyError::BadV2 => "bad_v2",
            ProxyError::TooLong => "too_long",
        }
    }
}

/// Parses a PROXY header at the start of `buf` (everything received so far).
pub fn parse_proxy_header(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let v1 = is_prefix(buf, V1_PREFIX);
    let v2 = is_prefix(buf, &V2_SIGNATURE);
    match (v1, v2) {
        (Prefix::No, Prefix::No) => Err(ProxyError::NotProxy),
        (Prefix::Partial, _) | (_, Prefix::Partial) => Ok(ProxyParse::Partial),
        (Prefix::Yes, _) => parse_v1(buf),
        (_, Prefix::Yes) => parse_v2(buf),
    }
}

enum Prefix {
    /// `buf` starts with the whole signature.
    Yes,
    /// `buf` is shorter than the signature and a prefix of it.
    Partial,
    No,
}

fn is_prefix(buf: &[u8], sig: &[u8]) -> Prefix {
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        Prefix::No
    } else if n == sig.len() {
        Prefix::Yes
    } else {
        Prefix::Partial
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `TCP6` likewise, or
/// `PROXY UNKNOWN[ anything]\r\n`.
fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let scan = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(cr) = scan.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if scan.len() >= V1_MAX_BYTES {
            return Err(ProxyError::BadV1);
        }
        return Ok(ProxyParse::Partial);
    };
    if scan[cr] == b'\n' {
        // A bare LF is not a line end here: refuse it rather than wait.
        return Err(ProxyError::BadV1);
    }
    match scan.get(cr + 1) {
        None if cr + 1 < V1_MAX_BYTES => return Ok(ProxyParse::Partial),
        Some(b'\n') => {}
        _ => return Err(ProxyError::BadV1),
    }
    let line = &buf[V1_PREFIX.len()..cr];
    let complete = |source| {
        Ok(ProxyParse::Complete(ProxyHeader {
            len: cr + 2,
            version: 1,
            source,
        }))
    };
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return complete(None);
    }
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::BadV1)?;
    let mut parts = text.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyError::BadV1);
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(v1_addr(src)?),
            IpAddr::V4(v1_addr::<Ipv4Addr>(dst)?),
        ),
        "TCP6" => (
            IpAddr::V6(v1_addr(src)?),
            IpAddr::V6(v1_addr::<Ipv6Addr>(dst)?),
        ),
        _ => return Err(ProxyError::BadV1),
    };
    let _ = dst;
    let sport = v1_port(sport)?;
    v1_port(dport)?;
    complete(Some(SocketAddr::new(src, sport)))
}

fn v1_addr<A: std::str::FromStr>(s: &str) -> Result<A, ProxyError> {
    s.parse().map_err(|_| ProxyError::BadV1)
}

/// A port in decimal, 0 to 65535, no sign and no leading zero.
fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyError::BadV1);
    }
    s.parse().map_err(|_| ProxyError::BadV1)
}

/// The binary header: signature, version and command, family and
/// transport, payload length, then addresses and TLVs.
fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(ProxyParse::Partial);
    };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::BadV2);
    }
    let local = ver_cmd & 0x0f == 0;
    let Some(&fam) = buf.get(13) else {
        return Ok(ProxyParse::Partial);
    };
    // Family: 0 unspecified, 1 IPv4, 2 IPv6, 3 UNIX; transport: 0
    // unspecified, 1 stream, 2 datagram.
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::BadV2);
    }
    // A proxied TCP connection is a stream.
    if !local && matches!(family, 1 | 2) && transport != 1 {
        return Err(ProxyError::BadV2);
    }
    let Some(len) = buf.get(14..16) else {
        return Ok(ProxyParse::Partial);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    // The addresses must fit the announced length.
    let need = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if !local && len < need {
        return Err(ProxyError::BadV2);
    }
    let Some(payload) = buf.get(16..16 + len) else {
        return Ok(ProxyParse::Partial);
    };
    let source = if local {
        None
    } else {
        match family {
            1 => {
                let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
                let port = u16::from_be_bytes([payload[8], payload[9]]);
                Some(SocketAddr::new(IpAddr::V4(ip), port))
            }
            2 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&payload[..16]);
                let port = u16::from_be_bytes([payload[32], payload[33]]);
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
            }
            // Unspecified or UNIX: no address we can count.
            _ => None,
        }
    };
    Ok(ProxyParse::Complete(ProxyHeader {
        len: 16 + len,
        version: 2,
        source,
    }))
}

/// Encodes a version 2 header for `source` → `dest` (tests, load tools).
pub fn encode_v2(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// Encodes a version 1 header for `source` → `dest` (both of one family).
pub fn encode_v1(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
