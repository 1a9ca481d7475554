//! Reply and push encoders for the JSON codec.
//!
//! Every encoder appends exactly one JSON object to a caller-provided
//! `Vec<u8>` and allocates nothing else, so a connection can reuse one
//! buffer. Several replies in one WebSocket frame are joined by `\n`
//! ([`separate`]); centrifuge-js splits on `\n` after trimming.
//!
//! Fields at their default (empty string, 0, false, no data, empty list) are
//! omitted, in protocol field order, exactly like Centrifugo's generated JSON
//! encoder (`client.pb_easyjson.go`); the exceptions it makes are kept too:
//! `ClientInfo.user` and `.client` are always written, and an empty result
//! is written as `{}` because the SDK looks for the method key in the reply.

use super::codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
use serde_json::value::RawValue;
use std::io::Write as _;

/// Who published / joined / is present.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    pub user: &'a str,
    /// The connection id (`client` from the connect result).
    pub client: &'a str,
    pub conn_info: Option<&'a RawValue>,
    pub chan_info: Option<&'a RawValue>,
}

/// A message in a channel. `data` is the publisher's JSON, written verbatim.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    pub data: &'a RawValue,
    pub info: Option<ClientInfo<'a>>,
    /// Position in the channel stream (0: stream not positioned).
    pub offset: u64,
    pub tags: &'a [(&'a str, &'a str)],
}

/// `connect` result. `ping` is the server ping interval in seconds and `pong`
/// tells the SDK to answer each server ping with `{}`.
#[derive(Debug)]
pub struct ConnectResult<'a, P = Publication<'a>> {
    pub client: &'a str,
    pub version: &'a str,
    pub expires: bool,
    pub ttl: u32,
    pub data: Option<&'a RawValue>,
    /// Server-side subscriptions, channel → result.
    pub subs: &'a [(&'a str, SubscribeResult<'a, P>)],
    pub ping: u32,
    pub pong: bool,
}

/// `subscribe` result (also the value type of `ConnectResult::subs`).
#[derive(Debug)]
pub struct SubscribeResult<'a, P = Publication<'a>> {
    pub expires: bool,
    pub ttl: u32,
    pub recoverable: bool,
    pub epoch: &'a str,
    pub publications: &'a [P],
    pub recovered: bool,
    pub offset: u64,
    pub positioned: bool,
    pub data: Option<&'a RawValue>,
    pub was_recovering: bool,
}

/// `history` result.
#[derive(Debug)]
pub struct HistoryResult<'a, P = Publication<'a>> {
    pub publications: &'a [P],
    pub epoch: &'a str,
    pub offset: u64,
}

/// `refresh` result.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefreshResult<'a> {
    pub client: &'a str,
    pub version: &'a str,
    pub expires: bool,
    pub ttl: u32,
}

/// Methods whose result has no fields: the reply is `{"id":N,"<method>":{}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyResult {
    Unsubscribe,
    Publish,
    Ping,
}

impl EmptyResult {
    fn key(self) -> &'static str {
        match self {
            EmptyResult::Unsubscribe => "unsubscribe",
            EmptyResult::Publish => "publish",
            EmptyResult::Ping => "ping",
        }
    }
}

/// Appends the `\n` that separates replies in one frame, if `out` already
/// holds one.
pub fn separate(out: &mut Vec<u8>) {
    if !out.is_empty() {
        out.push(b'\n');
    }
}

/// The server ping: an empty reply `{}` (no id, no push).
pub fn encode_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{}");
}

/// `{"id":N,"error":{"code":C,"message":M[,"temporary":true]}}`.
pub fn encode_error_reply(id: u32, error: ErrorCode, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut e = o.object("error");
    e.uint("code", error.code().into());
    e.str("message", error.text());
    e.flag("temporary", error.temporary());
    e.close();
    o.close();
}

/// Reply for a method with an empty result (`unsubscribe`, `publish`, `ping`).
pub fn encode_empty_reply(id: u32, method: EmptyResult, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    o.object(method.key()).close();
    o.close();
}

pub fn encode_connect_reply<P: WritePublication>(
    id: u32,
    r: &ConnectResult<'_, P>,
    out: &mut Vec<u8>,
) {
    let mut o = reply(id, out);
    let mut c = o.object("connect");
    c.str("client", r.client);
    c.str("version", r.version);
    c.flag("expires", r.expires);
    c.uint("ttl", r.ttl.into());
    c.raw("data", r.data);
    if !r.subs.is_empty() {
        let mut subs = c.object("subs");
        for (channel, sub) in r.subs {
            subs.key(channel);
            subscribe_result(sub, subs.out);
        }
        subs.close();
    }
    c.uint("ping", r.ping.into());
    c.flag("pong", r.pong);
    c.close();
    o.close();
}

pub fn encode_subscribe_reply<P: WritePublication>(
    id: u32,
    r: &SubscribeResult<'_, P>,
    out: &mut Vec<u8>,
) {
    let mut o = reply(id, out);
    o.key("subscribe");
    subscribe_result(r, o.out);
    o.close();
}

pub fn encode_history_reply<P: WritePublication>(
    id: u32,
    r: &HistoryResult<'_, P>,
    out: &mut Vec<u8>,
) {
    let mut o = reply(id, out);
    let mut h = o.object("history");
    h.publications("publications", r.publications);
    h.str("epoch", r.epoch);
    h.uint("offset", r.offset);
    h.close();
    o.close();
}

/// `presence` result: connection id → client info.
pub fn encode_presence_reply(id: u32, clients: &[(&str, ClientInfo<'_>)], out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut p = o.object("presence");
    if !clients.is_empty() {
        let mut m = p.object("presence");
        for (conn, info) in clients {
            m.key(conn);
            client_info(info, m.out);
        }
        m.close();
    }
    p.close();
    o.close();
}

pub fn encode_presence_stats_reply(id: u32, num_clients: u32, num_users: u32, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut p = o.object("presence_stats");
    p.uint("num_clients", num_clients.into());
    p.uint("num_users", num_users.into());
    p.close();
    o.close();
}

pub fn encode_refresh_reply(id: u32, r: &RefreshResult<'_>, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut c = o.object("refresh");
    c.str("client", r.client);
    c.str("version", r.version);
    c.flag("expires", r.expires);
    c.uint("ttl", r.ttl.into());
    c.close();
    o.close();
}

pub fn encode_sub_refresh_reply(id: u32, expires: bool, ttl: u32, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut c = o.object("sub_refresh");
    c.flag("expires", expires);
    c.uint("ttl", ttl.into());
    c.close();
    o.close();
}

pub fn encode_rpc_reply(id: u32, data: Option<&RawValue>, out: &mut Vec<u8>) {
    let mut o = reply(id, out);
    let mut c = o.object("rpc");
    c.raw("data", data);
    c.close();
    o.close();
}

/// `{"push":{"channel":C,"pub":{...}}}`. Depends only on the channel and the
/// publication, never on the receiving connection, so the engine encodes it
/// once per batch and shares the bytes with every subscriber.
pub fn encode_pub_push(channel: &str, publication: &Publication<'_>, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    let mut p = o.object("push");
    p.str("channel", channel);
    p.key("pub");
    publication_obj(publication, p.out);
    p.close();
    o.close();
}

/// `{"push":{"channel":C,"join":{"info":{...}}}}`.
pub fn encode_join_push(channel: &str, info: &ClientInfo<'_>, out: &mut Vec<u8>) {
    join_leave("join", channel, info, out);
}

/// `{"push":{"channel":C,"leave":{"info":{...}}}}`.
pub fn encode_leave_push(channel: &str, info: &ClientInfo<'_>, out: &mut Vec<u8>) {
    join_leave("leave", channel, info, out);
}

/// `{"push":{"channel":C,"unsubscribe":{"code":N,"reason":R}}}`.
pub fn encode_unsubscribe_push(channel: &str, code: UnsubscribeCode, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    let mut p = o.object("push");
    p.str("channel", channel);
    let mut u = p.object("unsubscribe");
    u.uint("code", code.code().into());
    u.str("reason", code.text());
    u.close();
    p.close();
    o.close();
}

/// `{"push":{"disconnect":{"code":N,"reason":R}}}`, sent before closing when
/// the close frame alone may not arrive. Like Centrifugo we send no
/// `reconnect` field: the SDK derives it from the code range.
pub fn encode_disconnect_push(code: DisconnectCode, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    let mut p = o.object("push");
    let mut d = p.object("disconnect");
    d.uint("code", code.code().into());
    d.str("reason", code.text());
    d.close();
    p.close();
    o.close();
}

fn join_leave(kind: &str, channel: &str, info: &ClientInfo<'_>, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    let mut p = o.object("push");
    p.str("channel", channel);
    let mut j = p.object(kind);
    j.key("info");
    client_info(info, j.out);
    j.close();
    p.close();
    o.close();
}

fn reply(id: u32, out: &mut Vec<u8>) -> Obj<'_> {
    let mut o = Obj::open(out);
    o.uint("id", id.into());
    o
}

fn subscribe_result<P: WritePublication>(r: &SubscribeResult<'_, P>, out: &mut Vec<u8>) {
    let mut s = Obj::open(out);
    s.flag("expires", r.expires);
    s.uint("ttl", r.ttl.into());
    s.flag("recoverable", r.recoverable);
    s.str("epoch", r.epoch);
    s.publications("publications", r.publications);
    s.flag("recovered", r.recovered);
    s.uint("offset", r.offset);
    s.flag("positioned", r.positioned);
    s.raw("data", r.data);
    s.flag("was_recovering", r.was_recovering);
    s.close();
}

/// A publication as it appears in a reply's `publications` list: typed,
/// or as kept in history (the object without its offset, see
/// [`write_with_offset`]).
pub trait WritePublication {
    fn write_publication(&self, out: &mut Vec<u8>);
}

impl WritePublication for Publication<'_> {
    fn write_publication(&self, out: &mut Vec<u8>) {
        publication_obj(self, out);
    }
}

impl WritePublication for crate::pubsub::history::Publication {
    fn write_publication(&self, out: &mut Vec<u8>) {
        write_with_offset(&self.payload, self.offset, out);
    }
}

/// A stored publication object (`{"data":..}` without offset) with its
/// offset appended; as is when `offset` is 0.
pub fn write_with_offset(obj: &[u8], offset: u64, out: &mut Vec<u8>) {
    if offset == 0 || obj.last() != Some(&b'}') {
        out.extend_from_slice(obj);
        return;
    }
    out.extend_from_slice(&obj[..obj.len() - 1]);
    let _ = write!(out, ",\"offset\":{offset}}}");
}

fn publication_obj(p: &Publication<'_>, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.raw("data", Some(p.data));
    if let Some(info) = &p.info {
        o.key("info");
        client_info(info, o.out);
    }
    o.uint("offset", p.offset);
    if !p.tags.is_empty() {
        let mut t = o.object("tags");
        for (k, v) in p.tags {
            t.key(k);
            write_str(v, t.out);
        }
        t.close();
    }
    o.close();
}

fn client_info(info: &ClientInfo<'_>, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.key("user");
    write_str(info.user, o.out);
    o.key("client");
    write_str(info.client, o.out);
    o.raw("conn_info", info.conn_info);
    o.raw("chan_info", info.chan_info);
    o.close();
}

/// A JSON object being written; each setter skips default values.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Obj<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(key, self.out);
        self.out.push(b':');
    }

    fn object(&mut self, key: &str) -> Obj<'_> {
        self.key(key);
        Obj::open(self.out)
    }

    fn str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.key(key);
            write_str(value, self.out);
        }
    }

    fn uint(&mut self, key: &str, value: u64) {
        if value != 0 {
            self.key(key);
            // Writing into a Vec cannot fail.
            let _ = write!(self.out, "{value}");
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.key(key);
            self.out.extend_from_slice(b"true");
        }
    }

    fn raw(&mut self, key: &str, value: Option<&RawValue>) {
        if let Some(v) = value {
            self.key(key);
            self.out.extend_from_slice(v.get().as_bytes());
        }
    }

    fn publications<P: WritePublication>(&mut self, key: &str, pubs: &[P]) {
        if pubs.is_empty() {
            return;
        }
        self.key(key);
        self.out.push(b'[');
        for (i, p) in pubs.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            p.write_publication(self.out);
        }
        self.out.push(b']');
    }
}

/// Writes `s` as a JSON string. Only `"`, `\` and control characters are
/// escaped; other UTF-8 passes through (valid JSON, smaller than `\u` forms).
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

impl<P> Default for ConnectResult<'_, P> {
    fn default() -> Self {
        ConnectResult {
            client: "",
            version: "",
            expires: false,
            ttl: 0,
            data: None,
            subs: &[],
            ping: 0,
            pong: false,
        }
    }
}

impl<P> Default for SubscribeResult<'_, P> {
    fn default() -> Self {
        SubscribeResult {
            expires: false,
            ttl: 0,
            recoverable: false,
            epoch: "",
            publications: &[],
            recovered: false,
            offset: 0,
            positioned: false,
            data: None,
            was_recovering: false,
        }
    }
}

impl<P> Default for HistoryResult<'_, P> {
    fn default() -> Self {
        HistoryResult {
            publications: &[],
            epoch: "",
            offset: 0,
        }
    }
}
