//! Centrifugo client protocol v2, JSON codec, client side: the commands the
//! generator sends and the server lines it reads. Written from the protocol
//! description (centrifugal/protocol `client.proto`, centrifuge-js), not
//! from the relay's codec, so that the two check each other.
//!
//! - Commands: `{"id":N,"connect":{...}}`, `{"id":N,"subscribe":{...}}`,
//!   `{"id":N,"publish":{"channel":C,"data":D}}`, and `{}` (our pong to
//!   the server's `{}` ping).
//! - A server frame holds one or more lines joined by `\n`: replies
//!   `{"id":N,"<method>":{...}}` or `{"id":N,"error":{"code":C,...}}`,
//!   pushes `{"push":{"channel":C,"pub":{"data":D,"offset":O}}}`, pings `{}`.
//!
//! Publication data written by the generator is
//! `{"p":PUBLISHER,"k":CHANNEL_INDEX,"s":SEQ,"t":INTENDED_NS[,"x":"pad"]}`:
//! `s` counts per (publisher, channel) from 0 and `t` is the intended send
//! time on the generator's clock, so a subscriber in the same process
//! measures latency from the schedule.

use super::json::{write_str, write_u64, Scan};

/// What the generator puts in a publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PubData {
    pub p: u32,
    pub k: u32,
    pub s: u64,
    pub t: u64,
}

/// A recovered or pushed publication: its stream offset (0: none) and
/// data (None: not a generator payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub data: Option<PubData>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubReply {
    pub recoverable: bool,
    pub epoch: String,
    pub offset: u64,
    pub recovered: bool,
    pub was_recovering: bool,
    pub positioned: bool,
    pub publications: Vec<Publication>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `ping`: the server's ping interval in seconds (0: none).
    Connect {
        ping: u64,
        pong: bool,
    },
    Subscribe(SubReply),
    Publish,
    Error {
        code: u32,
        message: String,
    },
    /// A result for a method we never send.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `{}`: answer with `{}`.
    Ping,
    Pub {
        channel: &'a [u8],
        publication: Publication,
    },
    /// Another push (`join`, `unsubscribe`, `disconnect`, ...): its kind.
    Push(String),
    Reply {
        id: u32,
        reply: Reply,
    },
    /// Not JSON, or not a shape the protocol allows.
    Bad,
}

/// `{"id":N,"connect":{["token":T,]"name":"wsrelay-load"}}`.
pub fn connect(out: &mut Vec<u8>, id: u32, token: Option<&str>) {
    head(out, id, "connect");
    if let Some(t) = token {
        out.extend_from_slice(b"\"token\":");
        write_str(out, t);
        out.push(b',');
    }
    out.extend_from_slice(b"\"name\":\"wsrelay-load\"}}");
}

/// `{"id":N,"subscribe":{"channel":C[,"recover":true,"epoch":E,"offset":O]}}`.
pub fn subscribe(out: &mut Vec<u8>, id: u32, channel: &str, recover: Option<(u64, &str)>) {
    head(out, id, "subscribe");
    out.extend_from_slice(b"\"channel\":");
    write_str(out, channel);
    if let Some((offset, epoch)) = recover {
        out.extend_from_slice(b",\"recover\":true,\"epoch\":");
        write_str(out, epoch);
        out.extend_from_slice(b",\"offset\":");
        write_u64(out, offset);
    }
    out.extend_from_slice(b"}}");
}

/// `{"id":N,"publish":{"channel":C,"data":{"p":..,"k":..,"s":..,"t":..}}}`,
/// the data padded with `"x":"aaa..."` to at least `pad_to` bytes.
pub fn publish(out: &mut Vec<u8>, id: u32, channel: &str, d: PubData, pad_to: usize) {
    head(out, id, "publish");
    out.extend_from_slice(b"\"channel\":");
    write_str(out, channel);
    out.extend_from_slice(b",\"data\":");
    let start = out.len();
    out.extend_from_slice(b"{\"p\":");
    write_u64(out, d.p as u64);
    out.extend_from_slice(b",\"k\":");
    write_u64(out, d.k as u64);
    out.extend_from_slice(b",\"s\":");
    write_u64(out, d.s);
    out.extend_from_slice(b",\"t\":");
    write_u64(out, d.t);
    let len = out.len() - start + 1;
    // `,"x":""` is 7 bytes.
    if pad_to > len + 7 {
        out.extend_from_slice(b",\"x\":\"");
        out.resize(out.len() + pad_to - len - 7, b'a');
        out.push(b'"');
    }
    out.extend_from_slice(b"}}}");
}

/// Our answer to the server's ping.
pub fn pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{}");
}

fn head(out: &mut Vec<u8>, id: u32, method: &str) {
    out.extend_from_slice(b"{\"id\":");
    write_u64(out, id as u64);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\":{");
}

/// Splits a server frame into lines (`\n`-joined, blank lines ignored).
pub fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame
        .split(|&b| b == b'\n')
        .filter(|l| l.iter().any(|c| !c.is_ascii_whitespace()))
}

/// Decodes one server line.
pub fn decode(line: &[u8]) -> Line<'_> {
    decode_opt(line).unwrap_or(Line::Bad)
}

fn text(raw: &[u8], escaped: bool) -> String {
    if escaped {
        let mut q = Vec::with_capacity(raw.len() + 2);
        q.push(b'"');
        q.extend_from_slice(raw);
        q.push(b'"');
        if let Ok(s) = serde_json::from_slice::<String>(&q) {
            return s;
        }
    }
    String::from_utf8_lossy(raw).into_owned()
}

fn decode_opt(line: &[u8]) -> Option<Line<'_>> {
    let mut s = Scan::new(line);
    let mut id: Option<u32> = None;
    let mut out: Option<Line> = None;
    let mut reply: Option<Reply> = None;
    let mut keys = 0;
    s.object(|s, key| {
        keys += 1;
        match key {
            b"id" => id = Some(u32::try_from(s.u64()?).ok()?),
            b"push" => out = Some(push(s)?),
            b"error" => {
                let (mut code, mut message) = (None, String::new());
                s.object(|s, k| {
                    match k {
                        b"code" => code = Some(u32::try_from(s.u64()?).ok()?),
                        b"message" => {
                            let (m, e) = s.string()?;
                            message = text(m, e);
                        }
                        _ => {
                            s.skip()?;
                        }
                    }
                    Some(())
                })?;
                reply = Some(Reply::Error {
                    code: code?,
                    message,
                });
            }
            b"connect" => {
                let (mut ping, mut pong) = (0, false);
                s.object(|s, k| {
                    match k {
                        b"ping" => ping = s.u64()?,
                        b"pong" => pong = s.bool()?,
                        _ => {
                            s.skip()?;
                        }
                    }
                    Some(())
                })?;
                reply = Some(Reply::Connect { ping, pong });
            }
            b"subscribe" => reply = Some(Reply::Subscribe(sub_reply(s)?)),
            b"publish" => {
                s.skip()?;
                reply = Some(Reply::Publish);
            }
            other => {
                s.skip()?;
                if reply.is_none() {
                    reply = Some(Reply::Other(String::from_utf8_lossy(other).into_owned()));
                }
            }
        }
        Some(())
    })?;
    if !s.at_end() {
        return None;
    }
    if keys == 0 {
        return Some(Line::Ping);
    }
    if let Some(l) = out {
        return (id.is_none() && reply.is_none()).then_some(l);
    }
    Some(Line::Reply {
        id: id.filter(|&i| i > 0)?,
        reply: reply?,
    })
}

fn push<'a>(s: &mut Scan<'a>) -> Option<Line<'a>> {
    let mut channel: &[u8] = b"";
    let mut publication = None;
    let mut kind = None;
    s.object(|s, k| {
        match k {
            b"channel" => channel = s.string()?.0,
            b"pub" => publication = Some(publication_obj(s)?),
            other => {
                s.skip()?;
                kind = Some(String::from_utf8_lossy(other).into_owned());
            }
        }
        Some(())
    })?;
    Some(match publication {
        Some(publication) => Line::Pub {
            channel,
            publication,
        },
        None => Line::Push(kind.unwrap_or_default()),
    })
}

fn publication_obj(s: &mut Scan<'_>) -> Option<Publication> {
    let mut p = Publication {
        offset: 0,
        data: None,
    };
    s.object(|s, k| {
        match k {
            b"offset" => p.offset = s.u64()?,
            b"data" => p.data = pub_data_at(s)?,
            _ => {
                s.skip()?;
            }
        }
        Some(())
    })?;
    Some(p)
}

/// Parses generator publication data; None if it is something else.
#[cfg(test)]
pub fn pub_data(raw: &[u8]) -> Option<PubData> {
    let mut s = Scan::new(raw);
    let d = pub_data_at(&mut s)?;
    s.at_end().then_some(d)?
}

/// Parses the data value at the scanner's position in one pass: the
/// outer None is malformed JSON, the inner one valid JSON that is not
/// generator data (another shape, or numbers out of range).
fn pub_data_at(s: &mut Scan<'_>) -> Option<Option<PubData>> {
    if s.peek()? != b'{' {
        s.skip()?;
        return Some(None);
    }
    let (mut p, mut k, mut sq, mut t) = (None, None, None, None);
    s.object(|s, key| {
        let slot = match key {
            b"p" => &mut p,
            b"k" => &mut k,
            b"s" => &mut sq,
            b"t" => &mut t,
            _ => {
                s.skip()?;
                return Some(());
            }
        };
        let at = s.i;
        match s.u64() {
            Some(v) => *slot = Some(v),
            None => {
                s.i = at;
                s.skip()?;
            }
        }
        Some(())
    })?;
    Some((|| {
        Some(PubData {
            p: u32::try_from(p?).ok()?,
            k: u32::try_from(k?).ok()?,
            s: sq?,
            t: t?,
        })
    })())
}

fn sub_reply(s: &mut Scan<'_>) -> Option<SubReply> {
    let mut r = SubReply::default();
    s.object(|s, k| {
        match k {
            b"recoverable" => r.recoverable = s.bool()?,
            b"recovered" => r.recovered = s.bool()?,
            b"was_recovering" => r.was_recovering = s.bool()?,
            b"positioned" => r.positioned = s.bool()?,
            b"offset" => r.offset = s.u64()?,
            b"epoch" => {
                let (e, esc) = s.string()?;
                r.epoch = text(e, esc);
            }
            b"publications" => s.array(|s| {
                r.publications.push(publication_obj(s)?);
                Some(())
            })?,
            _ => {
                s.skip()?;
            }
        }
        Some(())
    })?;
    Some(r)
}
