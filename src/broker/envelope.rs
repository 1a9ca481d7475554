//! The envelope: what one node publishes into a Redis channel (and keeps in
//! a channel's history stream) for every other node. Binary, versioned,
//! sans-IO; decoding is bounded by the input (nothing is allocated beyond
//! the input's length) and answers garbage with an error, never a panic.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! u8   version (1)
//! u8   kind (0 raw text, 1 raw binary, 2 publication, 3 join, 4 leave)
//! [16] origin node id
//! u16  channel length, channel bytes (UTF-8)
//! u8   position length P, P ASCII bytes "<offset>.<epoch>" (P = 0: none)
//! u8   info flag (0 none, 1 present), then u32 length + info bytes
//! u32  payload length, payload bytes
//! ```
//!
//! The position sits between a *head* and a *tail* so that the
//! publish-with-history Lua script can insert the offset and epoch it
//! assigns without parsing anything ([`Envelope::encode_parts`]).

use std::fmt;

use super::reader::{Reader, Truncated};

/// Current envelope version.
pub const VERSION: u8 = 1;
/// Longest epoch an envelope carries.
pub const MAX_EPOCH_BYTES: usize = 64;
/// Longest channel name an envelope carries.
pub const MAX_CHANNEL_BYTES: usize = u16::MAX as usize;

/// A node's identity, random per process start.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    pub fn random() -> NodeId {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        NodeId(b)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an envelope carries, i.e. which `LocalRooms` call rebuilds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A raw member's text message (`LocalRooms::publish`, text).
    RawText,
    /// A raw member's binary message (`LocalRooms::publish`, binary).
    RawBinary,
    /// A protocol publication: payload is the JSON `data`, info the
    /// publisher's ClientInfo JSON (`LocalRooms::publish_json`).
    Publication,
    /// A join push: info is the ClientInfo JSON (`LocalRooms::join_leave`).
    Join,
    /// A leave push.
    Leave,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::RawText => 0,
            Kind::RawBinary => 1,
            Kind::Publication => 2,
            Kind::Join => 3,
            Kind::Leave => 4,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            0 => Kind::RawText,
            1 => Kind::RawBinary,
            2 => Kind::Publication,
            3 => Kind::Join,
            4 => Kind::Leave,
            _ => return None,
        })
    }
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub origin: NodeId,
    pub channel: String,
    /// Offset and epoch, for publications into channels with history.
    pub position: Option<(u64, String)>,
    pub info: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Why bytes are not an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    Version(u8),
    Kind(u8),
    Channel,
    Position,
    Trailing,
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        DecodeError::Truncated
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated envelope"),
            DecodeError::Version(v) => write!(f, "unknown envelope version {v}"),
            DecodeError::Kind(k) => write!(f, "unknown envelope kind {k}"),
            DecodeError::Channel => write!(f, "channel is not UTF-8"),
            DecodeError::Position => write!(f, "malformed offset.epoch"),
            DecodeError::Trailing => write!(f, "bytes after the payload"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why an envelope cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    ChannelTooLong,
    EpochTooLong,
    TooLarge,
}

impl Envelope {
    /// The bytes before the position field.
    fn encode_head(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.channel.len() > MAX_CHANNEL_BYTES {
            return Err(EncodeError::ChannelTooLong);
        }
        out.push(VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.origin.0);
        out.extend_from_slice(&(self.channel.len() as u16).to_be_bytes());
        out.extend_from_slice(self.channel.as_bytes());
        Ok(())
    }

    /// The bytes after the position field.
    fn encode_tail(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match &self.info {
            None => out.push(0),
            Some(i) => {
                let n = u32::try_from(i.len()).map_err(|_| EncodeError::TooLarge)?;
                out.push(1);
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(i);
            }
        }
        let n = u32::try_from(self.payload.len()).map_err(|_| EncodeError::TooLarge)?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// The whole envelope.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.encode_head(&mut out)?;
        match &self.position {
            None => out.push(0),
            Some((offset, epoch)) => {
                if epoch.len() > MAX_EPOCH_BYTES {
                    return Err(EncodeError::EpochTooLong);
                }
                let pos = format!("{offset}.{epoch}");
                out.push(pos.len() as u8);
                out.extend_from_slice(pos.as_bytes());
            }
        }
        self.encode_tail(&mut out)?;
        Ok(out)
    }

    /// Head and tail around the position field, for a script that inserts
    /// `len(pos) pos` between them (`self.position` is ignored).
    pub fn encode_parts(&self) -> Result<(Vec<u8>, Vec<u8>), EncodeError> {
        let mut head = Vec::with_capacity(20 + self.channel.len());
        self.encode_head(&mut head)?;
        let mut tail = Vec::with_capacity(9 + self.payload.len());
        self.encode_tail(&mut tail)?;
        Ok((head, tail))
    }

    fn encoded_len_hint(&self) -> usize {
        32 + self.channel.len() + self.info.as_ref().map_or(0, Vec::len) + self.payload.len()
    }

    /// Decodes one envelope; the input must be exactly one.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let code = r.u8()?;
        let kind = Kind::from_code(code).ok_or(DecodeError::Kind(code))?;
        let mut origin = [0u8; 16];
        origin.copy_from_slice(r.take(16)?);
        let n = r.u16()? as usize;
        let channel = std::str::from_utf8(r.take(n)?)
            .map_err(|_| DecodeError::Channel)?
            .to_string();
        let n = r.u8()? as usize;
        let position = if n == 0 {
            None
        } else {
            Some(parse_position(r.take(n)?)?)
        };
        let info = match r.u8()? {
            0 => None,
            1 => {
                let n = r.u32()? as usize;
                Some(r.take(n)?.to_vec())
            }
            _ => return Err(DecodeError::Truncated),
        };
        let n = r.u32()? as usize;
        let payload = r.take(n)?.to_vec();
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(Envelope {
            kind,
            origin: NodeId(origin),
            channel,
            position,
            info,
            payload,
        })
    }
}

fn parse_position(b: &[u8]) -> Result<(u64, String), DecodeError> {
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::Position)?;
    let (o, e) = s.split_once('.').ok_or(DecodeError::Position)?;
    if o.is_empty() || !o.bytes().all(|c| c.is_ascii_digit()) || e.len() > MAX_EPOCH_BYTES {
        return Err(DecodeError::Position);
    }
    let offset = o.parse::<u64>().map_err(|_| DecodeError::Position)?;
    Ok((offset, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            kind: Kind::Publication,
            origin: NodeId([7; 16]),
            channel: "chat:room".into(),
            position: Some((42, "abcd1234".into())),
            info: Some(br#"{"user":"u"}"#.to_vec()),
            payload: br#"{"text":"hi"}"#.to_vec(),
        }
    }

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            Kind::RawText,
            Kind::RawBinary,
            Kind::Publication,
            Kind::Join,
            Kind::Leave,
        ] {
            for position in [None, Some((u64::MAX, "e".to_string()))] {
                for info in [None, Some(vec![1, 2, 3])] {
                    let e = Envelope {
                        kind,
                        position: position.clone(),
                        info: info.clone(),
                        ..sample()
                    };
                    assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
                }
            }
        }
    }

    #[test]
    fn parts_with_a_script_inserted_position_decode() {
        let e = sample();
        let (head, tail) = e.encode_parts().unwrap();
        // What the Lua script does: head .. char(#pos) .. pos .. tail.
        let pos = b"42.abcd1234";
        let mut b = head.clone();
        b.push(pos.len() as u8);
        b.extend_from_slice(pos);
        b.extend_from_slice(&tail);
        assert_eq!(Envelope::decode(&b).unwrap(), e);
        assert_eq!(b, e.encode().unwrap());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample().encode().unwrap();
        for n in 0..b.len() {
            assert!(Envelope::decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(DecodeError::Trailing));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Envelope::decode(&[9]), Err(DecodeError::Version(9)));
        assert_eq!(Envelope::decode(&[1, 77]), Err(DecodeError::Kind(77)));
        // Huge declared lengths do not allocate: they are truncations.
        let mut b = vec![1, 2];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Envelope::decode(&b), Err(DecodeError::Truncated));
        // Bad positions.
        for pos in [&b"x.e"[..], b"1", b".e", b"99999999999999999999999.e"] {
            let mut e = vec![1, 2];
            e.extend_from_slice(&[0; 16]);
            e.extend_from_slice(&[0, 0, pos.len() as u8]);
            e.extend_from_slice(pos);
            e.extend_from_slice(&[0, 0, 0, 0, 0]);
            assert_eq!(Envelope::decode(&e), Err(DecodeError::Position), "{pos:?}");
        }
        // Pseudo-random bytes never panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Envelope::decode(&bytes);
        }
    }
}
