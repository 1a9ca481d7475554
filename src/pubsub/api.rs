//! Server HTTP API compatible with Centrifugo v5's (`POST /api/<method>`,
//! JSON body, JSON answer), sans-IO: the HTTP layer hands over the method
//! (the path segment after `/api/`), the API key it found in the headers
//! ([`api_key_from_headers`]) and the body; [`handle`] parses, checks,
//! calls the [`ApiEngine`] and returns the status and body to write. So the
//! backend libraries written for Centrifugo (`cent` for Python, `gocent`,
//! `phpcent`, ...) work against wsrelay.
//!
//! # Methods
//!
//! `publish`, `broadcast`, `history`, `history_remove`, `presence`,
//! `presence_stats`, `channels`, `info`, `disconnect`, `unsubscribe`, and
//! `batch` (several of those in one request, what `cent`'s `batch()`
//! sends). Centrifugo's `subscribe`, `refresh`, `rpc` and the PRO methods
//! are not implemented: 404, like any unknown method. The method `""` is
//! the legacy single endpoint `POST /api` (`{"method":..,"params":..}`
//! commands, see [`handle`]), which Centrifugo v5 still serves for older
//! backend libraries; the caller should route both `/api` and `/api/*`.
//!
//! # What is answered how (Centrifugo v5 `internal/api`)
//!
//! | situation                                  | status | body                                 |
//! |--------------------------------------------|--------|--------------------------------------|
//! | API off (configured key empty)             | 404    | empty                                |
//! | key missing or wrong                       | 401    | empty                                |
//! | unknown method                             | 404    | empty                                |
//! | body is not JSON of the method's shape     | 400    | text `bad request: <why>`            |
//! | request understood, the call failed        | 200    | `{"error":{"code":N,"message":M}}`   |
//! | success                                    | 200    | `{"result":{...}}`                   |
//!
//! Decode errors are HTTP 400 (Centrifugo: `http.Error(w, "Bad Request",
//! 400)`; clients only look at the status, we add the parser's reason to
//! the text for whoever reads it). Everything Centrifugo finds *after*
//! decoding — a missing `channel`, missing `data`, a channel whose
//! namespace does not exist, history off for the channel — is an API error
//! in a 200 answer, which `cent` raises as `CentApiResponseError(code)`.
//! Error codes and texts are Centrifugo's API ones: 100 internal server
//! error, 102 unknown channel, 104 not found, 107 bad request, 108 not
//! available, 112 unrecoverable position.
//!
//! With the request header `X-Centrifugo-Error-Mode: transport`
//! ([`ApiRequest::transport_errors`]), a failed call is instead answered
//! with an HTTP status derived from the code (Centrifugo's
//! `MapErrorToHTTPCode`: 100 → 500, 102/104 → 404, 107/108 → 400, 112 →
//! 416, others 500) and the bare error object `{"code":N,"message":M}` as
//! body. `batch` and the per-channel answers of `broadcast` are not
//! affected, as in Centrifugo.
//!
//! # Leniency, as Go's `encoding/json` decoder that Centrifugo uses
//!
//! Unknown fields are ignored; `null` for a field means "absent" (except
//! `data`, below); an empty body is read as `{}` (so `curl -X POST
//! .../api/info` works; Centrifugo answers 400 to it). `data` must be
//! present for `publish`/`broadcast` (else 107), and `"data": null` *is*
//! data: Centrifugo publishes the four bytes `null`, and so do we.
//! `b64data`, when non-empty, replaces `data` and is decoded from standard
//! base64 (bad base64 → 107); the decoded bytes may be binary, the engine
//! treats them like any raw payload. Not lenient where serde is stricter
//! than Go: duplicate keys and wrongly-cased keys are a 400 or ignored.
//!
//! # Deliberate differences
//!
//! - `disconnect` with a custom `{"code","reason"}`: the code must be in
//!   3000..=4999 and the reason at most 123 bytes (107 otherwise), because
//!   the engine sends them in a WebSocket close frame, which can carry
//!   nothing else; Centrifugo passes anything through.
//! - `session` in `disconnect`/`unsubscribe`: wsrelay connections have no
//!   session id, so a non-empty `session` matches no connection: the call
//!   succeeds and does nothing (the engine is not called).
//! - `channels` with an invalid `pattern` answers 107 (Centrifugo: 100).
//! - `batch` with more than [`MAX_BATCH_COMMANDS`] commands is a 400.
//! - `delta` is accepted and ignored (no delta compression in wsrelay).

mod glob;
#[cfg(test)]
mod tests;

pub use glob::{Glob, GlobError};

use super::history::{EpochId, HistoryResult, StreamPosition};
use super::presence::{ClientInfo, PresenceStats};
use super::proto::ErrorCode;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Most commands in one `batch` request. Each command may produce a large
/// answer (`channels`, `info`), so an unbounded count would let a small
/// request ask for a huge response.
pub const MAX_BATCH_COMMANDS: usize = 1000;

/// Centrifugo's default for a `disconnect` without a custom one: 3503
/// "force disconnect" (the client does not reconnect).
pub const DEFAULT_DISCONNECT_CODE: u32 = 3503;
/// Reason sent with [`DEFAULT_DISCONNECT_CODE`].
pub const DEFAULT_DISCONNECT_REASON: &str = "force disconnect";

/// Longest reason a close frame can carry (125-byte payload minus the code).
pub const MAX_DISCONNECT_REASON_BYTES: usize = 123;

/// Options of one publication (`publish`, and each channel of `broadcast`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Do not add this publication to the channel's history (it still gets
    /// fanned out). The answer then carries no position.
    pub skip_history: bool,
    /// Publication tags (`tags` of the client protocol's `pub` push).
    pub tags: BTreeMap<String, String>,
    /// Centrifugo drops a publication whose key it has seen for this channel
    /// in the last 5 minutes and answers with the first one's result. The
    /// engine may implement it or ignore it (empty = none).
    pub idempotency_key: String,
}

/// The `info` answer for this node (Centrifugo's `NodeResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique id of this process (Centrifugo: a UUID made at start).
    pub uid: String,
    /// Node name (Centrifugo: hostname + port).
    pub name: String,
    pub version: String,
    /// Connections.
    pub num_clients: u64,
    /// Distinct users among the connections.
    pub num_users: u64,
    /// Channels with at least one subscriber.
    pub num_channels: u64,
    /// Subscriptions (client × channel).
    pub num_subs: u64,
    /// Seconds since start.
    pub uptime: u64,
}

/// Who a `disconnect` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectTarget<'a> {
    /// The user id; `""` targets anonymous connections (as in Centrifugo,
    /// where anonymous connections have the user id `""`).
    pub user: &'a str,
    /// Only this connection (client id), if it belongs to `user`.
    pub client: Option<&'a str>,
    /// Connections (client ids) to leave alone.
    pub whitelist: &'a [String],
    /// Close code, 3000..=4999 (checked here).
    pub code: u32,
    /// Close reason, at most [`MAX_DISCONNECT_REASON_BYTES`] (checked here).
    pub reason: &'a str,
}

/// What the API needs from the relay. Every method runs synchronously on
/// the caller's thread; errors are Centrifugo API error codes (see the
/// module docs for which ones clients expect where).
///
/// Validation split: this module checks what needs no configuration (empty
/// channel, missing data, bad base64, disconnect code range, glob syntax);
/// the engine checks the rest: channel name grammar and namespace
/// ([`ErrorCode::UnknownChannel`] 102 for a namespace that is not
/// configured, [`ErrorCode::BadRequest`] 107 for an invalid name), and
/// whether history/presence is on for the channel
/// ([`ErrorCode::NotAvailable`] 108 when not).
pub trait ApiEngine {
    /// Publishes `payload` into `channel` (to protocol subscribers and raw
    /// room members alike). `payload` is the JSON text of `data`, or the
    /// decoded `b64data` bytes, which may not be JSON. Returns the position
    /// given to the publication when the channel keeps history and
    /// `opts.skip_history` is off, `None` otherwise.
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode>;

    /// The channel's history, as [`crate::pubsub::history::History::history`]:
    /// `limit` `None` = no limit (the request had a negative limit),
    /// `Some(0)` = only the stream top (the request had no or a zero limit,
    /// Centrifugo's default). The engine may cap `limit`. Publications whose
    /// payload is not JSON are answered as JSON strings (see
    /// [`write_payload`]).
    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode>;

    /// Drops the channel's retained publications.
    fn history_remove(&mut self, channel: &str) -> Result<(), ErrorCode>;

    /// Clients subscribed to the channel.
    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode>;

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode>;

    /// Channels with at least one subscriber and their subscriber counts,
    /// only those `pattern` matches (all when `None`). Entries with a count
    /// of 0 are dropped from the answer.
    fn channels(&mut self, pattern: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode>;

    fn info(&mut self) -> Result<NodeInfo, ErrorCode>;

    /// Every live node for `info`: this one ([`Self::info`]) and, in a
    /// cluster, the others.
    fn nodes(&mut self) -> Result<Vec<NodeInfo>, ErrorCode> {
        Ok(vec![self.info()?])
    }

    /// Closes the matching connections with `target.code`/`reason`.
    /// Success means accepted: connections on other workers may close a
    /// little later (Centrifugo is asynchronous across nodes too).
    fn disconnect(&mut self, target: &DisconnectTarget<'_>) -> Result<(), ErrorCode>;

    /// Ends the subscription of `user`'s connections (only `client` if
    /// given) to `channel`, with an `unsubscribe` push (code 2000 "server
    /// unsubscribe"). Accepted-not-done semantics as for `disconnect`.
    fn unsubscribe(
        &mut self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), ErrorCode>;
}

/// One API call as the HTTP layer received it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// The path after `/api/` (`"publish"`, ...); `""` for `POST /api`
    /// itself (the legacy format).
    pub method: &'a str,
    /// The key from [`api_key_from_headers`].
    pub api_key: Option<&'a str>,
    /// Header `X-Centrifugo-Error-Mode` equals `transport` (module docs).
    pub transport_errors: bool,
    /// The request body; the caller bounds its size before reading it.
    pub body: &'a [u8],
}

/// The HTTP answer to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    /// `application/json` for 200 answers and transport-mode errors,
    /// `text/plain; charset=utf-8` otherwise.
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

impl ApiResponse {
    fn json(status: u16, body: Vec<u8>) -> Self {
        ApiResponse {
            status,
            content_type: JSON,
            body,
        }
    }

    fn text(status: u16, body: &str) -> Self {
        ApiResponse {
            status,
            content_type: TEXT,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The API key of a request, from its `X-API-Key` header value or else its
/// `Authorization` header value of the form `apikey KEY` (scheme
/// case-insensitive, exactly two whitespace-separated words), as
/// Centrifugo's `APIKeyAuth` reads them. A non-empty `X-API-Key` wins even
/// if wrong. Centrifugo's `?api_key=` query parameter is not supported
/// (keys in URLs end up in logs).
pub fn api_key_from_headers<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(key) = x_api_key.filter(|k| !k.is_empty()) {
        return Some(key);
    }
    let mut words = authorization?.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(scheme), Some(key), None) if scheme.eq_ignore_ascii_case("apikey") => Some(key),
        _ => None,
    }
}

/// Compares the keys in time that depends only on their lengths, not on
/// where they differ, so the key cannot be guessed byte by byte from
/// response times.
pub fn keys_equal(given: &[u8], configured: &[u8]) -> bool {
    let mut diff = given.len() ^ configured.len();
    for i in 0..given.len().max(configured.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = configured.get(i).copied().unwrap_or(0);
        diff |= usize::from(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

/// Answers one API request. `configured_key` is the `api_key` setting:
/// when it is empty the API is off and every request gets 404 (the caller
/// may as well not route `/api/` at all; this check makes an empty key
/// never match an absent one). Never panics, whatever the body.
///
/// Legacy format (method `""`): the body is one or more commands
/// `{"id":N,"method":"publish","params":{...}}`, the answer one reply per
/// command, `{"id":N,"result":{...}}` or `{"id":N,"error":{...}}`, joined
/// by `\n` (see `handle_legacy`).
pub fn handle(
    req: &ApiRequest<'_>,
    configured_key: &str,
    engine: &mut (impl ApiEngine + ?Sized),
) -> ApiResponse {
    if configured_key.is_empty() {
        return ApiResponse::text(404, "");
    }
    match req.api_key {
        Some(key) if keys_equal(key.as_bytes(), configured_key.as_bytes()) => {}
        _ => return ApiResponse::text(401, ""),
    }
    if req.method.is_empty() {
        return handle_legacy(req.body, engine);
    }
    let body = if req.body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        req.body
    };
    if req.method == "batch" {
        return handle_batch(body, engine);
    }
    let Some(method) = Method::from_name(req.method) else {
        return ApiResponse::text(404, "");
    };
    let call = match Call::parse(method, body) {
        Ok(call) => call,
        Err(e) => return bad_request(&e),
    };
    let outcome = call.execute(engine);
    let mut out = Vec::with_capacity(64);
    match outcome {
        Err(code) if req.transport_errors => {
            write_json(&ApiError::from(code), &mut out);
            ApiResponse::json(transport_status(code), out)
        }
        Err(code) => {
            out.extend_from_slice(b"{\"error\":");
            write_json(&ApiError::from(code), &mut out);
            out.push(b'}');
            ApiResponse::json(200, out)
        }
        Ok(result) => {
            out.extend_from_slice(b"{\"result\":");
            result.write(&mut out);
            out.push(b'}');
            ApiResponse::json(200, out)
        }
    }
}

fn bad_request(e: &serde_json::Error) -> ApiResponse {
    ApiResponse::text(400, &format!("bad request: {e}\n"))
}

/// Centrifugo's `MapErrorToHTTPCode`.
fn transport_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::UnknownChannel | ErrorCode::MethodNotFound => 404,
        ErrorCode::BadRequest | ErrorCode::NotAvailable => 400,
        ErrorCode::UnrecoverablePosition => 416,
        _ => 500,
    }
}

/// `{"commands":[{"publish":{...}},{"history":{...}}],"parallel":false}` →
/// `{"replies":[{"publish":{...}},{"error":{...}}]}`, in order. Commands
/// run one after the other (`parallel` is accepted; running them in order
/// is one valid schedule of a parallel batch). As in Centrifugo every
/// command is decoded before any runs, so a malformed one fails the whole
/// request with 400 and nothing is executed; a command with no method we
/// know gets the reply error 104 "not found".
fn handle_batch(body: &[u8], engine: &mut (impl ApiEngine + ?Sized)) -> ApiResponse {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow, default, deserialize_with = "nullable")]
        commands: Vec<Option<BatchCommand<'a>>>,
        #[serde(default, deserialize_with = "nullable")]
        #[allow(dead_code)]
        parallel: bool,
    }
    let batch: Batch<'_> = match expect_object(body).and_then(|()| serde_json::from_slice(body)) {
        Ok(b) => b,
        Err(e) => return bad_request(&e),
    };
    if batch.commands.len() > MAX_BATCH_COMMANDS {
        return ApiResponse::text(
            400,
            &format!("bad request: more than {MAX_BATCH_COMMANDS} commands in batch\n"),
        );
    }
    let mut calls = Vec::with_capacity(batch.commands.len());
    for command in &batch.commands {
        let call = match command.as_ref().and_then(BatchCommand::first) {
            None => None,
            Some((method, params)) => match Call::parse(method, params.get().as_bytes()) {
                Ok(call) => Some(call),
                Err(e) => return bad_request(&e),
            },
        };
        calls.push(call);
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"replies\":[");
    for (i, call) in calls.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (key, outcome) = match call {
            None => ("error", Err(ErrorCode::MethodNotFound)),
            Some(call) => (call.method().name(), call.execute(engine)),
        };
        out.push(b'{');
        match outcome {
            Ok(result) => {
                write_json(key, &mut out);
                out.push(b':');
                result.write(&mut out);
            }
            Err(code) => {
                out.extend_from_slice(b"\"error\":");
                write_json(&ApiError::from(code), &mut out);
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    ApiResponse::json(200, out)
}

/// The legacy single endpoint `POST /api` (method `""`), which Centrifugo
/// v5 still serves and older backend libraries use: the body is one or
/// more commands `{"id":N,"method":"publish","params":{...}}` (whitespace
/// or newlines between them), the answer one reply per command,
/// `{"id":N,"result":{...}}` or `{"id":N,"error":{...}}`, joined by `\n`
/// (`id` omitted when 0). `method` is a name, case-insensitive, or
/// Centrifugo's enum number (publish 0, broadcast 1, unsubscribe 2,
/// disconnect 3, presence 4, presence_stats 5, history 6,
/// history_remove 7, channels 8, info 9); missing means publish (0), as
/// in Go. As in Centrifugo: an empty body, a command that is not JSON or
/// a method name we do not know is a 400; an unknown method number is
/// reply error 104; `params` that do not decode are reply error 107.
/// Unlike Centrifugo, which runs each command as it decodes it, all are
/// decoded first, so a 400 means nothing ran.
fn handle_legacy(body: &[u8], engine: &mut (impl ApiEngine + ?Sized)) -> ApiResponse {
    #[derive(Deserialize)]
    struct LegacyCommand<'a> {
        #[serde(default, deserialize_with = "nullable")]
        id: u32,
        #[serde(default)]
        method: LegacyMethod,
        #[serde(borrow, default)]
        params: Option<&'a RawValue>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return ApiResponse::text(400, "bad request: empty body\n");
    }
    let mut commands = Vec::new();
    for raw in serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>() {
        let command: LegacyCommand<'_> = match raw.and_then(|raw| {
            expect_object(raw.get().as_bytes())?;
            serde_json::from_str(raw.get())
        }) {
            Ok(c) => c,
            Err(e) => return bad_request(&e),
        };
        if commands.len() == MAX_BATCH_COMMANDS {
            return ApiResponse::text(
                400,
                &format!("bad request: more than {MAX_BATCH_COMMANDS} commands\n"),
            );
        }
        commands.push(command);
    }
    let mut out = Vec::with_capacity(64);
    for (i, command) in commands.into_iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let params = command.params.map_or(&b""[..], |p| p.get().as_bytes());
        let outcome = match command.method {
            LegacyMethod::Unknown => Err(ErrorCode::MethodNotFound),
            // `info` has no parameters; Centrifugo does not read them.
            LegacyMethod::Known(Method::Info) => Call::Info.execute(engine),
            LegacyMethod::Known(method) => match Call::parse(method, params) {
                Ok(call) => call.execute(engine),
                Err(_) => Err(ErrorCode::BadRequest),
            },
        };
        out.push(b'{');
        if command.id != 0 {
            out.extend_from_slice(format!("\"id\":{},", command.id).as_bytes());
        }
        match outcome {
            Ok(result) => {
                out.extend_from_slice(b"\"result\":");
                result.write(&mut out);
            }
            Err(code) => {
                out.extend_from_slice(b"\"error\":");
                write_json(&ApiError::from(code), &mut out);
            }
        }
        out.push(b'}');
    }
    ApiResponse::json(200, out)
}

/// `method` of a legacy command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegacyMethod {
    Known(Method),
    /// A number that is none of ours: reply error 104.
    Unknown,
}

impl Default for LegacyMethod {
    /// Go's zero value of the method enum is PUBLISH.
    fn default() -> Self {
        LegacyMethod::Known(Method::Publish)
    }
}

impl<'de> Deserialize<'de> for LegacyMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            Number(u64),
            #[serde(borrow)]
            Name(std::borrow::Cow<'a, str>),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(usize::try_from(n)
                .ok()
                .and_then(|n| LEGACY_METHOD_NUMBERS.get(n))
                .map_or(LegacyMethod::Unknown, |&m| LegacyMethod::Known(m))),
            Raw::Name(name) => Method::ALL
                .into_iter()
                .find(|m| m.name().eq_ignore_ascii_case(&name))
                .map(LegacyMethod::Known)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown method {name:?}"))),
        }
    }
}

/// Centrifugo's `Command.MethodType` numbers 0..=9.
const LEGACY_METHOD_NUMBERS: [Method; 10] = [
    Method::Publish,
    Method::Broadcast,
    Method::Unsubscribe,
    Method::Disconnect,
    Method::Presence,
    Method::PresenceStats,
    Method::History,
    Method::HistoryRemove,
    Method::Channels,
    Method::Info,
];

/// One command of a batch: the first method key present, in Centrifugo's
/// order (`processCmd`); a `null` value counts as absent.
#[derive(Deserialize)]
struct BatchCommand<'a> {
    #[serde(borrow, default)]
    publish: Option<&'a RawValue>,
    #[serde(borrow, default)]
    broadcast: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    disconnect: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history_remove: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence_stats: Option<&'a RawValue>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
}

impl<'a> BatchCommand<'a> {
    fn first(&self) -> Option<(Method, &'a RawValue)> {
        [
            (Method::Publish, self.publish),
            (Method::Broadcast, self.broadcast),
            (Method::Unsubscribe, self.unsubscribe),
            (Method::Disconnect, self.disconnect),
            (Method::History, self.history),
            (Method::HistoryRemove, self.history_remove),
            (Method::Presence, self.presence),
            (Method::PresenceStats, self.presence_stats),
            (Method::Info, self.info),
            (Method::Channels, self.channels),
        ]
        .into_iter()
        .find_map(|(m, p)| p.map(|p| (m, p)))
    }
}

/// The methods we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Publish,
    Broadcast,
    History,
    HistoryRemove,
    Presence,
    PresenceStats,
    Channels,
    Info,
    Disconnect,
    Unsubscribe,
}

impl Method {
    const ALL: [Method; 10] = [
        Method::Publish,
        Method::Broadcast,
        Method::History,
        Method::HistoryRemove,
        Method::Presence,
        Method::PresenceStats,
        Method::Channels,
        Method::Info,
        Method::Disconnect,
        Method::Unsubscribe,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Publish => "publish",
            Method::Broadcast => "broadcast",
            Method::History => "history",
            Method::HistoryRemove => "history_remove",
            Method::Presence => "presence",
            Method::PresenceStats => "presence_stats",
            Method::Channels => "channels",
            Method::Info => "info",
            Method::Disconnect => "disconnect",
            Method::Unsubscribe => "unsubscribe",
        }
    }

    fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// serde reads a struct from a JSON array too (fields by position); Go's
/// decoder, and so Centrifugo, does not.
fn expect_object(body: &[u8]) -> Result<(), serde_json::Error> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(serde::de::Error::custom("expected a JSON object")),
    }
}

/// `Option<T>` read with `null` meaning "absent", as Go's decoder does for
/// non-pointer fields.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `data`: present (even as `null`) → `Some`. Plain `Option<&RawValue>`
/// would turn `null` into `None`.
fn present<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(d).map(Some)
}

/// The fields `publish` and `broadcast` share. Two request structs rather
/// than one flattened into the other: serde's `flatten` buffers the input,
/// which a borrowed `RawValue` cannot be read from.
struct PublishFields<'a> {
    data: Option<&'a RawValue>,
    b64data: String,
    skip_history: bool,
    tags: BTreeMap<String, String>,
    idempotency_key: String,
}

impl PublishFields<'_> {
    /// The payload bytes and options, or 107.
    fn payload(self) -> Result<(Vec<u8>, PublishOptions), ErrorCode> {
        let payload = if !self.b64data.is_empty() {
            base64::engine::general_purpose::STANDARD
                .decode(self.b64data.as_bytes())
                .map_err(|_| ErrorCode::BadRequest)?
        } else {
            match self.data {
                Some(raw) => raw.get().as_bytes().to_vec(),
                None => Vec::new(),
            }
        };
        if payload.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        let opts = PublishOptions {
            skip_history: self.skip_history,
            tags: self.tags,
            idempotency_key: self.idempotency_key,
        };
        Ok((payload, opts))
    }
}

/// Declares a request struct with the [`PublishFields`] plus `$extra`.
macro_rules! publish_request {
    ($name:ident { $($extra:ident: $ty:ty),* }) => {
        #[derive(Deserialize)]
        struct $name<'a> {
            $(#[serde(default, deserialize_with = "nullable")] $extra: $ty,)*
            #[serde(borrow, default, deserialize_with = "present")]
            data: Option<&'a RawValue>,
            #[serde(default, deserialize_with = "nullable")]
            b64data: String,
            #[serde(default, deserialize_with = "nullable")]
            skip_history: bool,
            #[serde(default, deserialize_with = "nullable")]
            tags: BTreeMap<String, String>,
            #[serde(default, deserialize_with = "nullable")]
            idempotency_key: String,
        }

        impl<'a> $name<'a> {
            fn fields(&mut self) -> PublishFields<'a> {
                PublishFields {
                    data: self.data,
                    b64data: std::mem::take(&mut self.b64data),
                    skip_history: self.skip_history,
                    tags: std::mem::take(&mut self.tags),
                    idempotency_key: std::mem::take(&mut self.idempotency_key),
                }
            }
        }
    };
}

publish_request!(PublishReq { channel: String });
publish_request!(BroadcastReq { channels: Vec<Option<String>> });

#[derive(Deserialize)]
struct ChannelReq {
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
}

#[derive(Deserialize, Default)]
struct SinceReq {
    #[serde(default, deserialize_with = "nullable")]
    offset: u64,
    #[serde(default, deserialize_with = "nullable")]
    epoch: String,
}

#[derive(Deserialize)]
struct HistoryReq {
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    limit: i32,
    #[serde(default)]
    since: Option<SinceReq>,
    #[serde(default, deserialize_with = "nullable")]
    reverse: bool,
}

#[derive(Deserialize)]
struct ChannelsReq {
    #[serde(default, deserialize_with = "nullable")]
    pattern: String,
}

#[derive(Deserialize, Default)]
struct DisconnectSpec {
    #[serde(default, deserialize_with = "nullable")]
    code: u32,
    #[serde(default, deserialize_with = "nullable")]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectReq {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectSpec>,
}

#[derive(Deserialize)]
struct UnsubscribeReq {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
}

/// `info` takes no parameters; any JSON object is accepted.
#[derive(Deserialize)]
struct InfoReq {}

/// A decoded request, ready to run.
enum Call<'a> {
    Publish(PublishReq<'a>),
    Broadcast(BroadcastReq<'a>),
    History(HistoryReq),
    HistoryRemove(ChannelReq),
    Presence(ChannelReq),
    PresenceStats(ChannelReq),
    Channels(ChannelsReq),
    Info,
    Disconnect(DisconnectReq),
    Unsubscribe(UnsubscribeReq),
}

impl<'a> Call<'a> {
    fn parse(method: Method, body: &'a [u8]) -> Result<Call<'a>, serde_json::Error> {
        use serde_json::from_slice as from;
        expect_object(body)?;
        Ok(match method {
            Method::Publish => Call::Publish(from(body)?),
            Method::Broadcast => Call::Broadcast(from(body)?),
            Method::History => Call::History(from(body)?),
            Method::HistoryRemove => Call::HistoryRemove(from(body)?),
            Method::Presence => Call::Presence(from(body)?),
            Method::PresenceStats => Call::PresenceStats(from(body)?),
            Method::Channels => Call::Channels(from(body)?),
            Method::Info => {
                let _: InfoReq = from(body)?;
                Call::Info
            }
            Method::Disconnect => Call::Disconnect(from(body)?),
            Method::Unsubscribe => Call::Unsubscribe(from(body)?),
        })
    }

    fn method(&self) -> Method {
        match self {
            Call::Publish(_) => Method::Publish,
            Call::Broadcast(_) => Method::Broadcast,
            Call::History(_) => Method::History,
            Call::HistoryRemove(_) => Method::HistoryRemove,
            Call::Presence(_) => Method::Presence,
            Call::PresenceStats(_) => Method::PresenceStats,
            Call::Channels(_) => Method::Channels,
            Call::Info => Method::Info,
            Call::Disconnect(_) => Method::Disconnect,
            Call::Unsubscribe(_) => Method::Unsubscribe,
        }
    }

    fn execute(self, engine: &mut (impl ApiEngine + ?Sized)) -> Result<Answer, ErrorCode> {
        let nonempty = |s: String| {
            if s.is_empty() {
                Err(ErrorCode::BadRequest)
            } else {
                Ok(s)
            }
        };
        match self {
            Call::Publish(mut r) => {
                let channel = nonempty(std::mem::take(&mut r.channel))?;
                let (payload, opts) = r.fields().payload()?;
                engine
                    .publish(&channel, &payload, &opts)
                    .map(Answer::Publish)
            }
            Call::Broadcast(mut r) => {
                if r.channels.is_empty() {
                    return Err(ErrorCode::BadRequest);
                }
                let (payload, opts) = r.fields().payload()?;
                let responses = r
                    .channels
                    .into_iter()
                    .map(|ch| match ch.filter(|c| !c.is_empty()) {
                        None => Err(ErrorCode::BadRequest),
                        Some(ch) => engine.publish(&ch, &payload, &opts),
                    })
                    .collect();
                Ok(Answer::Broadcast(responses))
            }
            Call::History(r) => {
                let channel = nonempty(r.channel)?;
                let since = r.since.map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: EpochId::from(s.epoch.as_str()),
                });
                let limit = usize::try_from(r.limit).ok();
                engine
                    .history(&channel, since.as_ref(), limit, r.reverse)
                    .map(Answer::History)
            }
            Call::HistoryRemove(r) => {
                let channel = nonempty(r.channel)?;
                engine.history_remove(&channel).map(|()| Answer::Empty)
            }
            Call::Presence(r) => {
                let channel = nonempty(r.channel)?;
                engine.presence(&channel).map(Answer::Presence)
            }
            Call::PresenceStats(r) => {
                let channel = nonempty(r.channel)?;
                engine.presence_stats(&channel).map(Answer::PresenceStats)
            }
            Call::Channels(r) => {
                let glob = if r.pattern.is_empty() {
                    None
                } else {
                    Some(Glob::new(&r.pattern).map_err(|_| ErrorCode::BadRequest)?)
                };
                engine.channels(glob.as_ref()).map(Answer::Channels)
            }
            Call::Info => engine.nodes().map(Answer::Info),
            Call::Disconnect(r) => {
                let (code, reason) = match r.disconnect {
                    None => (
                        DEFAULT_DISCONNECT_CODE,
                        DEFAULT_DISCONNECT_REASON.to_owned(),
                    ),
                    Some(d) => (d.code, d.reason),
                };
                if !(3000..=4999).contains(&code) || reason.len() > MAX_DISCONNECT_REASON_BYTES {
                    return Err(ErrorCode::BadRequest);
                }
                if !r.session.is_empty() {
                    return Ok(Answer::Empty);
                }
                let target = DisconnectTarget {
                    user: &r.user,
                    client: Some(r.client.as_str()).filter(|c| !c.is_empty()),
                    whitelist: &r.whitelist,
                    code,
                    reason: &reason,
                };
                engine.disconnect(&target).map(|()| Answer::Empty)
            }
            Call::Unsubscribe(r) => {
                let channel = nonempty(r.channel)?;
                if !r.session.is_empty() {
                    return Ok(Answer::Empty);
                }
                let client = Some(r.client.as_str()).filter(|c| !c.is_empty());
                engine
                    .unsubscribe(&r.user, &channel, client)
                    .map(|()| Answer::Empty)
            }
        }
    }
}

/// A successful call's result, written as the value of `result` (or of the
/// method key in a batch reply).
enum Answer {
    Publish(Option<StreamPosition>),
    Broadcast(Vec<Result<Option<StreamPosition>, ErrorCode>>),
    History(HistoryResult),
    Presence(Vec<ClientInfo>),
    PresenceStats(PresenceStats),
    Channels(Vec<(String, u64)>),
    Info(Vec<NodeInfo>),
    /// `{}`: history_remove, disconnect, unsubscribe.
    Empty,
}

/// `{"code":N,"message":M}`. Centrifugo's API error texts are the client
/// protocol's except 104, which the API calls "not found".
#[derive(Serialize)]
struct ApiError {
    code: u32,
    message: &'static str,
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        let message = match code {
            ErrorCode::MethodNotFound => "not found",
            other => other.text(),
        };
        ApiError {
            code: code.code(),
            message,
        }
    }
}

/// Publish result: `{"offset":N,"epoch":E}`, or `{}` when not positioned
/// (both fields are `omitempty` in Centrifugo).
#[derive(Serialize)]
struct PublishResult<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    epoch: &'a str,
}

impl<'a> PublishResult<'a> {
    fn new(pos: Option<&'a StreamPosition>) -> Self {
        PublishResult {
            offset: pos.map_or(0, |p| p.offset),
            epoch: pos.map_or("", |p| p.epoch.as_str()),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One entry of `broadcast`'s `responses`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum PublishResponse<'a> {
    Result(PublishResult<'a>),
    Error(ApiError),
}

/// A payload written as a JSON value: verbatim if it is one JSON value,
/// else as a JSON string (binary: lossy UTF-8). Payloads published through
/// the raw rooms or `b64data` need not be JSON; protocol subscribers get
/// them as strings too (common context of the pub/sub engine).
pub struct JsonPayload<'a>(pub &'a [u8]);

impl Serialize for JsonPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<&RawValue>(self.0) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(&String::from_utf8_lossy(self.0)),
        }
    }
}

/// Appends `payload` as a JSON value (see [`JsonPayload`]).
pub fn write_payload(payload: &[u8], out: &mut Vec<u8>) {
    write_json(&JsonPayload(payload), out);
}

/// Centrifugo's API `ClientInfo`: `user` and `client` always written.
#[derive(Serialize)]
struct ClientInfoOut<'a> {
    user: &'a str,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_info: Option<JsonPayload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chan_info: Option<JsonPayload<'a>>,
}

impl<'a> From<&'a ClientInfo> for ClientInfoOut<'a> {
    fn from(c: &'a ClientInfo) -> Self {
        ClientInfoOut {
            user: &c.user,
            client: &c.client,
            conn_info: c.conn_info.as_deref().map(JsonPayload),
            chan_info: c.chan_info.as_deref().map(JsonPayload),
        }
    }
}

#[derive(Serialize)]
struct PublicationOut<'a> {
    data: JsonPayload<'a>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
}

/// `publications`, `epoch` and `offset` are always written (no
/// `omitempty` in Centrifugo's API proto), `publications` as `[]` when
/// empty: `cent` validates it as a list.
#[derive(Serialize)]
struct HistoryOut<'a> {
    publications: Vec<PublicationOut<'a>>,
    epoch: &'a str,
    offset: u64,
}

#[derive(Serialize)]
struct NodeOut<'a> {
    uid: &'a str,
    name: &'a str,
    version: &'a str,
    num_clients: u64,
    num_users: u64,
    num_channels: u64,
    #[serde(skip_serializing_if = "is_zero")]
    uptime: u64,
    num_subs: u64,
}

#[derive(Serialize)]
struct ChannelInfoOut {
    num_clients: u64,
}

impl Answer {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Answer::Publish(pos) => write_json(&PublishResult::new(pos.as_ref()), out),
            Answer::Broadcast(responses) => {
                #[derive(Serialize)]
                struct Out<'a> {
                    responses: Vec<PublishResponse<'a>>,
                }
                let responses = responses
                    .iter()
                    .map(|r| match r {
                        Ok(pos) => PublishResponse::Result(PublishResult::new(pos.as_ref())),
                        Err(code) => PublishResponse::Error(ApiError::from(*code)),
                    })
                    .collect();
                write_json(&Out { responses }, out);
            }
            Answer::History(h) => {
                let publications = h
                    .publications
                    .iter()
                    .map(|p| PublicationOut {
                        data: JsonPayload(&p.payload),
                        offset: p.offset,
                    })
                    .collect();
                let history = HistoryOut {
                    publications,
                    epoch: h.position.epoch.as_str(),
                    offset: h.position.offset,
                };
                write_json(&history, out);
            }
            Answer::Presence(clients) => {
                // `presence` is always written (`cent` requires it); a
                // client id listed twice appears once.
                #[derive(Serialize)]
                struct Out<'a> {
                    presence: BTreeMap<&'a str, ClientInfoOut<'a>>,
                }
                let presence = clients
                    .iter()
                    .map(|c| (&*c.client, ClientInfoOut::from(c)))
                    .collect();
                write_json(&Out { presence }, out);
            }
            Answer::PresenceStats(stats) => {
                #[derive(Serialize)]
                struct Out {
                    num_clients: u64,
                    num_users: u64,
                }
                let stats = Out {
                    num_clients: stats.num_clients as u64,
                    num_users: stats.num_users as u64,
                };
                write_json(&stats, out);
            }
            Answer::Channels(channels) => {
                #[derive(Serialize)]
                struct Out<'a> {
                    channels: BTreeMap<&'a str, ChannelInfoOut>,
                }
                let channels = channels
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(ch, n)| (ch.as_str(), ChannelInfoOut { num_clients: *n }))
                    .collect();
                write_json(&Out { channels }, out);
            }
            Answer::Info(nodes) => {
                #[derive(Serialize)]
                struct Out<'a> {
                    nodes: Vec<NodeOut<'a>>,
                }
                let nodes = nodes
                    .iter()
                    .map(|node| NodeOut {
                        uid: &node.uid,
                        name: &node.name,
                        version: &node.version,
                        num_clients: node.num_clients,
                        num_users: node.num_users,
                        num_channels: node.num_channels,
                        uptime: node.uptime,
                        num_subs: node.num_subs,
                    })
                    .collect();
                write_json(&Out { nodes }, out);
            }
            Answer::Empty => out.extend_from_slice(b"{}"),
        }
    }
}

/// Serialises into `out`. Our output types only hold strings, numbers,
/// maps with string keys and [`JsonPayload`]s, which cannot fail to
/// serialise into a `Vec`.
fn write_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, value);
}
