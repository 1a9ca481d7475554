//! Sans-IO codec for the Centrifugo client protocol v2, JSON flavour.
//!
//! Wire shape (what centrifuge-js 5.x sends and expects):
//!
//! - A client frame is one or more JSON command objects joined by `\n`, at
//!   most one trailing `\n`. Each is `{"id":N,"<method>":{...}}` with exactly
//!   one method key (`connect`, `subscribe`, ...); `{}` is the client's pong
//!   to a server ping. `send` may omit `id` (no reply is expected).
//! - A server frame is one or more replies joined by `\n`: `{"id":N,"<method>":
//!   {...}}` or `{"id":N,"error":{...}}` for command results, `{"push":{...}}`
//!   for asynchronous events, and `{}` for the server ping.
//! - `data` fields are raw JSON values on the JSON codec (protobuf `bytes`
//!   carry the JSON text), so they are kept as [`RawValue`] and copied through
//!   byte for byte.
//!
//! Unknown fields are ignored, as Centrifugo's decoder does: newer SDKs send
//! fields (`flag`, `profile`, `delta`, `tf` ...) we do not implement, and
//! rejecting them would break forward compatibility. What is rejected (with
//! the [`DisconnectCode`] the server must close with) is listed on
//! [`ProtoError`].
//!
//! Parsing borrows from the frame: strings without escapes and all `data`
//! values point into the input.

mod codes;
mod encode;
#[cfg(test)]
mod tests;

pub use codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
pub use encode::{
    encode_connect_reply, encode_disconnect_push, encode_empty_reply, encode_error_reply,
    encode_history_reply, encode_join_push, encode_leave_push, encode_ping, encode_presence_reply,
    encode_presence_stats_reply, encode_pub_push, encode_refresh_reply, encode_rpc_reply,
    encode_sub_refresh_reply, encode_subscribe_reply, encode_unsubscribe_push, separate, write_str,
    write_with_offset, ClientInfo, ConnectResult, EmptyResult, HistoryResult, Publication,
    RefreshResult, SubscribeResult, WritePublication,
};

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Bounds applied before any JSON is parsed, so a hostile frame costs at most
/// one scan for `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame, all commands included.
    pub max_frame_bytes: usize,
    /// Largest accepted single command (one line).
    pub max_command_bytes: usize,
    /// Most commands accepted in one frame (SDK batching, reconnect with many
    /// subscriptions).
    pub max_commands_per_frame: usize,
}

impl Default for Limits {
    /// 64 KiB per frame and per command (Centrifugo's default WebSocket
    /// message size limit), 256 commands per frame.
    fn default() -> Self {
        Limits {
            max_frame_bytes: 65536,
            max_command_bytes: 65536,
            max_commands_per_frame: 256,
        }
    }
}

/// Why a frame was rejected. Every variant is fatal for the connection: the
/// protocol has no per-command error for a command it cannot read (the id may
/// be unreadable), so the server closes with [`ProtoError::disconnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Frame longer than [`Limits::max_frame_bytes`] → 1009.
    FrameTooLarge { len: usize, max: usize },
    /// One command longer than [`Limits::max_command_bytes`] → 1009.
    CommandTooLarge { len: usize, max: usize },
    /// More than [`Limits::max_commands_per_frame`] commands → 3013.
    TooManyCommands { count: usize, max: usize },
    /// Empty frame or empty line between commands → 3501.
    Empty,
    /// Not JSON, wrong types, id not a `u32`, duplicate key → 3501.
    Malformed(String),
    /// `id` missing (or 0) on a method other than `send` → 3501.
    MissingId,
    /// `id` present but no method key we know → 3501 (Centrifugo does the
    /// same; `104 method not found` is only for unknown RPC methods).
    UnknownMethod,
    /// More than one method key in one command → 3501 (the protocol allows
    /// the server to reject this instead of picking the first).
    MultipleMethods,
}

impl ProtoError {
    /// The disconnect the server must send for this error.
    pub fn disconnect(&self) -> DisconnectCode {
        match self {
            ProtoError::FrameTooLarge { .. } | ProtoError::CommandTooLarge { .. } => {
                DisconnectCode::MessageTooBig
            }
            ProtoError::TooManyCommands { .. } => DisconnectCode::TooManyRequests,
            ProtoError::Empty
            | ProtoError::Malformed(_)
            | ProtoError::MissingId
            | ProtoError::UnknownMethod
            | ProtoError::MultipleMethods => DisconnectCode::BadRequest,
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::FrameTooLarge { len, max } => write!(f, "frame {len} bytes > {max}"),
            ProtoError::CommandTooLarge { len, max } => write!(f, "command {len} bytes > {max}"),
            ProtoError::TooManyCommands { count, max } => {
                write!(f, "{count} commands in frame > {max}")
            }
            ProtoError::Empty => f.write_str("empty command"),
            ProtoError::Malformed(e) => write!(f, "malformed command: {e}"),
            ProtoError::MissingId => f.write_str("command id required"),
            ProtoError::UnknownMethod => f.write_str("unknown command method"),
            ProtoError::MultipleMethods => f.write_str("more than one method in command"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// One client command.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    /// Matches the reply to the command; 0 only for [`CommandBody::Pong`] and
    /// [`CommandBody::Send`], which get no reply.
    pub id: u32,
    pub body: CommandBody<'a>,
}

/// The method of a command, with its request.
#[derive(Debug, Clone)]
pub enum CommandBody<'a> {
    Connect(ConnectRequest<'a>),
    Subscribe(SubscribeRequest<'a>),
    Unsubscribe(ChannelRequest<'a>),
    Publish(PublishRequest<'a>),
    History(HistoryRequest<'a>),
    Presence(ChannelRequest<'a>),
    PresenceStats(ChannelRequest<'a>),
    Refresh(RefreshRequest<'a>),
    SubRefresh(SubRefreshRequest<'a>),
    Rpc(RpcRequest<'a>),
    /// Fire-and-forget message; `id` may be 0.
    Send(SendRequest<'a>),
    /// `{"id":N,"ping":{}}`: an explicit client ping, answered with
    /// `{"id":N,"ping":{}}` (see [`encode_empty_reply`]).
    Ping,
    /// `{}`: the client's pong to the server's `{}` ping. No reply.
    Pong,
}

impl CommandBody<'_> {
    /// The JSON key of the method, which is also the key of its reply.
    pub fn method(&self) -> &'static str {
        match self {
            CommandBody::Connect(_) => "connect",
            CommandBody::Subscribe(_) => "subscribe",
            CommandBody::Unsubscribe(_) => "unsubscribe",
            CommandBody::Publish(_) => "publish",
            CommandBody::History(_) => "history",
            CommandBody::Presence(_) => "presence",
            CommandBody::PresenceStats(_) => "presence_stats",
            CommandBody::Refresh(_) => "refresh",
            CommandBody::SubRefresh(_) => "sub_refresh",
            CommandBody::Rpc(_) => "rpc",
            CommandBody::Send(_) => "send",
            CommandBody::Ping => "ping",
            CommandBody::Pong => "",
        }
    }
}

/// `connect`: authenticates the connection; `subs` lists subscriptions to
/// recover in the same round trip (server-side subscriptions).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest<'a> {
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub subs: BTreeMap<Cow<'a, str>, SubscribeRequest<'a>>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// Emulated headers (SDK option `headers`), for transports without them.
    #[serde(borrow)]
    pub headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

/// `subscribe`, also the value type of `connect.subs` (where only `recover`,
/// `offset` and `epoch` are meaningful).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    /// Recover missed publications from `offset` in stream `epoch`.
    pub recover: bool,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    pub offset: u64,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    pub positioned: bool,
    pub recoverable: bool,
    /// Ask for join/leave pushes (when the namespace permits it).
    pub join_leave: bool,
    /// Delta compression requested (`"fossil"`); empty if not. We do not
    /// implement deltas, so the engine answers without `delta: true`.
    #[serde(borrow)]
    pub delta: Cow<'a, str>,
}

/// `unsubscribe`, `presence`, `presence_stats`: just a channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
}

/// `publish`. `data` is required by meaning (an empty publish is useless) but
/// the engine decides; the codec reports it as absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PublishRequest<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// Stream position: `offset` within `epoch` (epoch changes when history is
/// lost, which invalidates offsets).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct StreamPosition<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// `history`. `limit` 0 asks only for the stream top (offset/epoch), -1 for
/// everything the server allows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    pub limit: i32,
    #[serde(borrow)]
    pub since: Option<StreamPosition<'a>>,
    pub reverse: bool,
}

/// `refresh`: a new connection token before the current one expires.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest<'a> {
    #[serde(borrow)]
    pub token: Cow<'a, str>,
}

/// `sub_refresh`: a new subscription token for `channel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub token: Cow<'a, str>,
}

/// `rpc`: application call, answered with `{"rpc":{"data":...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RpcRequest<'a> {
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// `send`: asynchronous message to the server, no reply.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendRequest<'a> {
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// The envelope exactly as it is on the wire: every method is an optional
/// key, because the protocol uses separate fields rather than a tagged union.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Envelope<'a> {
    id: u32,
    #[serde(borrow)]
    connect: Option<ConnectRequest<'a>>,
    #[serde(borrow)]
    subscribe: Option<SubscribeRequest<'a>>,
    #[serde(borrow)]
    unsubscribe: Option<ChannelRequest<'a>>,
    #[serde(borrow)]
    publish: Option<PublishRequest<'a>>,
    #[serde(borrow)]
    presence: Option<ChannelRequest<'a>>,
    #[serde(borrow)]
    presence_stats: Option<ChannelRequest<'a>>,
    #[serde(borrow)]
    history: Option<HistoryRequest<'a>>,
    ping: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    send: Option<SendRequest<'a>>,
    #[serde(borrow)]
    rpc: Option<RpcRequest<'a>>,
    #[serde(borrow)]
    refresh: Option<RefreshRequest<'a>>,
    #[serde(borrow)]
    sub_refresh: Option<SubRefreshRequest<'a>>,
}

impl<'a> Envelope<'a> {
    fn into_command(self) -> Result<Command<'a>, ProtoError> {
        let id = self.id;
        let mut bodies = [
            self.connect.map(CommandBody::Connect),
            self.subscribe.map(CommandBody::Subscribe),
            self.unsubscribe.map(CommandBody::Unsubscribe),
            self.publish.map(CommandBody::Publish),
            self.presence.map(CommandBody::Presence),
            self.presence_stats.map(CommandBody::PresenceStats),
            self.history.map(CommandBody::History),
            self.ping.map(|_| CommandBody::Ping),
            self.send.map(CommandBody::Send),
            self.rpc.map(CommandBody::Rpc),
            self.refresh.map(CommandBody::Refresh),
            self.sub_refresh.map(CommandBody::SubRefresh),
        ];
        let mut found = bodies.iter_mut().filter_map(Option::take);
        let body = match (found.next(), found.next()) {
            (Some(_), Some(_)) => return Err(ProtoError::MultipleMethods),
            (Some(body), None) => body,
            (None, _) if id == 0 => {
                return Ok(Command {
                    id,
                    body: CommandBody::Pong,
                })
            }
            (None, _) => return Err(ProtoError::UnknownMethod),
        };
        // Centrifugo treats any id-less non-`send` command as a pong; we are
        // stricter and reject it, since an SDK never sends one.
        if id == 0 && !matches!(body, CommandBody::Send(_)) {
            return Err(ProtoError::MissingId);
        }
        Ok(Command { id, body })
    }
}

/// Parses one command (one line of a frame, without the `\n`).
pub fn parse_command<'a>(line: &'a [u8], limits: &Limits) -> Result<Command<'a>, ProtoError> {
    if line.len() > limits.max_command_bytes {
        return Err(ProtoError::CommandTooLarge {
            len: line.len(),
            max: limits.max_command_bytes,
        });
    }
    match line.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ProtoError::Empty),
        Some(b'{') => {}
        // serde's derived structs also accept a JSON array (fields by
        // position); the protocol only has objects.
        Some(_) => return Err(ProtoError::Malformed("command is not an object".into())),
    }
    let env: Envelope<'a> =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    env.into_command()
}

/// Checks the frame-level limits and returns an iterator over its commands.
///
/// The limits are checked up front so that nothing is executed from a frame
/// that will be rejected; each command is then parsed lazily, and the engine
/// must stop (and disconnect) at the first `Err`, like Centrifugo does.
pub fn parse_frame<'a>(frame: &'a [u8], limits: &Limits) -> Result<Commands<'a>, ProtoError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            len: frame.len(),
            max: limits.max_frame_bytes,
        });
    }
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    if body.is_empty() {
        return Err(ProtoError::Empty);
    }
    let count = body.iter().filter(|&&b| b == b'\n').count() + 1;
    if count > limits.max_commands_per_frame {
        return Err(ProtoError::TooManyCommands {
            count,
            max: limits.max_commands_per_frame,
        });
    }
    Ok(Commands {
        rest: Some(body),
        limits: *limits,
    })
}

/// Parses a whole frame into commands, failing on the first bad one.
pub fn parse_frame_all<'a>(
    frame: &'a [u8],
    limits: &Limits,
) -> Result<Vec<Command<'a>>, ProtoError> {
    parse_frame(frame, limits)?.collect()
}

/// Commands of one frame, see [`parse_frame`].
#[derive(Debug, Clone)]
pub struct Commands<'a> {
    rest: Option<&'a [u8]>,
    limits: Limits,
}

impl<'a> Iterator for Commands<'a> {
    type Item = Result<Command<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                &rest[..i]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        let result = parse_command(line, &self.limits);
        if result.is_err() {
            self.rest = None;
        }
        Some(result)
    }
}
