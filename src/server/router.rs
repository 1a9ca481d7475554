//! What requests and messages mean: the relay's [`Handler`].
//!
//! Plain HTTP (`/healthz`, `/readyz`, `/metrics`, `POST /publish/{room}`,
//! the server API), the upgrade routes (`/echo`, `/rooms/{name}`,
//! `/connection/websocket`), and where a message goes (back to its sender,
//! or into its room's batch). With an admin listener, each listener serves
//! its share of the routes (`admin.rs`) and answers 404 to the others. A `Router` is built for
//! one connection's read from the worker's parts; the connection's
//! attachment travels with it and is stored back afterwards.

use super::admin::{readiness, Listener, RouteGroup};
use super::admission::{IpKey, Refusal};
use super::api_backend::ApiBackend;
use super::client::Exec;
use super::connection::Attachment;
use super::http::{self, MemberRole, WsRoute};
use super::local_rooms::LocalRooms;
use super::mesh::MeshPort;
use super::outbound::OutboundQueue;
use super::session::{Handler, HeadVerdict, Response, Verdict};
use super::Shared;
use crate::config::ChannelOptions;
use crate::metrics::{Gauges, WorkerMetrics};
use crate::protocol::response::http_response;
use crate::protocol::{CloseCode, HttpRequest, MessageKind, RejectReason, UpgradeRequest};
use crate::pubsub::api;
use crate::pubsub::hub::Hub;
use crate::pubsub::proto::DisconnectCode;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Router<'a> {
    pub shared: &'a Shared,
    pub rooms: &'a mut LocalRooms,
    pub port: &'a mut MeshPort,
    pub metrics: &'a WorkerMetrics,
    /// The connection being read, and its generation.
    pub key: usize,
    pub generation: u32,
    pub attachment: Option<Attachment>,
    /// The connection's admission key; moved to the client a trusted
    /// proxy names (`on_client`).
    pub peer: IpKey,
    /// The connection upgraded during this read.
    pub upgraded: bool,
    pub shutting_down: bool,
    /// Replies of a protocol client's frame (reused buffer).
    pub replies: &'a mut Vec<u8>,
    /// Protocol commands waiting for Redis.
    pub awaiting: &'a mut crate::server::awaiting::Awaiting,
    /// The listener the connection came in on.
    pub listener: Listener,
}

fn answer(bytes: Vec<u8>, keep_alive: bool) -> Response {
    Response { bytes, keep_alive }
}

fn refuse(reason: RejectReason) -> Response {
    answer(reason.response(), false)
}

/// The answer of the admin listener to a WebSocket route.
const NOT_ON_ADMIN: &str = "not found: WebSocket routes are served on the public listener only\n";

impl Router<'_> {
    /// Whether this connection's listener serves `group`.
    fn serves(&self, group: RouteGroup) -> bool {
        self.shared.routes.serves(self.listener, group)
    }

    /// A 404 for a route this listener does not serve.
    fn not_here(&self, keep_alive: bool) -> Response {
        self.metrics.rejection(RejectReason::NotFound).inc();
        answer(http::text(404, "not found\n", keep_alive), keep_alive)
    }

    fn render_metrics(&self) -> String {
        let workers: Vec<&WorkerMetrics> = self.shared.metrics.iter().map(|m| m.as_ref()).collect();
        let depths = self.shared.mesh.depths();
        let hub = &self.shared.hub;
        let history = hub.history.stats();
        let presence = hub.presence.counters();
        let mut page = crate::metrics::render_prometheus(
            &workers,
            &Gauges {
                rooms_open: self.shared.directory.len(),
                queue_depths: &depths,
                accepting: !self.shared.shutdown.load(Ordering::Relaxed),
                pubsub: Some(crate::metrics::PubSubGauges {
                    namespaces: &hub.slot_labels,
                    history_bytes: history.bytes,
                    history_publications: history.publications,
                    history_streams: history.streams,
                    history_cap_evictions: history.cap_evictions,
                    presence_entries: presence.entries as u64,
                }),
            },
        );
        if let Some(b) = &self.shared.broker {
            crate::metrics::render_broker(&mut page, &b.metrics, b.shards);
        }
        page
    }

    /// Workers other than this one with members of `room`, and whether
    /// this one has members.
    fn destinations(&self, room: &str) -> Option<(u64, bool)> {
        let shared = self.shared.directory.get(room)?;
        let remote = shared.worker_mask() & !(1u64 << self.port_worker());
        Some((remote, self.rooms.id_of(room).is_some()))
    }

    fn port_worker(&self) -> usize {
        self.rooms.worker()
    }

    /// The plain (non-publish) routes.
    fn serve(&mut self, req: &HttpRequest) -> Response {
        self.metrics.http_requests.inc();
        let has_body = req.content_length().map_or(true, |n| n.unwrap_or(0) > 0)
            || req.header("transfer-encoding").is_some();
        // A body we do not read ends the connection after the answer.
        let keep_alive = http::wants_keep_alive(req) && !self.shutting_down && !has_body;
        let metrics_on = self.shared.config.metrics;
        let group = match req.path.as_str() {
            "/healthz" | "/readyz" => Some(RouteGroup::Health),
            "/metrics" => Some(RouteGroup::Metrics),
            _ => None,
        };
        if group.is_some_and(|g| !self.serves(g)) {
            return self.not_here(keep_alive);
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/readyz") => {
                let c = &self.shared.config;
                let (status, body) = readiness(
                    self.shutting_down,
                    self.shared.admission.open(),
                    c.max_connections,
                );
                let keep_alive = keep_alive && status == 200;
                answer(http::text(status, body, keep_alive), keep_alive)
            }
            ("GET" | "HEAD", "/healthz") => {
                if self.shutting_down {
                    answer(http::text(503, "shutting down\n", false), false)
                } else if self.shared.broker.as_ref().is_some_and(|b| !b.is_up()) {
                    // Still 200: the node serves its own clients, and
                    // every node loses Redis at once, so a 503 would take
                    // the whole cluster out of the load balancer
                    // (docs/cluster.md, Faults).
                    let body = "degraded: broker down (cross-node delivery stopped)\n";
                    answer(http::text(200, body, keep_alive), keep_alive)
                } else {
                    answer(http::text(200, "ok\n", keep_alive), keep_alive)
                }
            }
            ("GET" | "HEAD", "/metrics") if metrics_on => {
                let body = self.render_metrics();
                let bytes = http_response(
                    200,
                    "",
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    keep_alive,
                );
                answer(bytes, keep_alive)
            }
            (_, "/healthz" | "/readyz") | (_, "/metrics")
                if metrics_on || req.path != "/metrics" =>
            {
                let bytes = http_response(
                    405,
                    "Allow: GET, HEAD\r\n",
                    "text/plain; charset=utf-8",
                    b"method not allowed\n",
                    keep_alive,
                );
                answer(bytes, keep_alive)
            }
            (_, path) if http::is_ws_path(path) && self.listener == Listener::Admin => {
                self.metrics.rejection(RejectReason::NotFound).inc();
                answer(http::text(404, NOT_ON_ADMIN, keep_alive), keep_alive)
            }
            (_, path) if http::is_ws_path(path) => {
                self.metrics.rejection(RejectReason::UpgradeRequired).inc();
                refuse(RejectReason::UpgradeRequired)
            }
            _ => {
                self.metrics.rejection(RejectReason::NotFound).inc();
                answer(http::text(404, "not found\n", keep_alive), keep_alive)
            }
        }
    }

    /// `POST /publish/{room}` with its body.
    fn publish(&mut self, req: &HttpRequest, room: &str, body: &[u8]) -> Response {
        let keep_alive = http::wants_keep_alive(req) && !self.shutting_down;
        let kind = http::publish_kind(req);
        if kind == MessageKind::Text && std::str::from_utf8(body).is_err() {
            let text = "body is not valid UTF-8 for a text content type\n";
            return answer(http::text(400, text, keep_alive), keep_alive);
        }
        self.metrics.publish_requests.inc();
        let (remote, local) = self.destinations(room).unwrap_or_default();
        if self.port.is_blocked(remote) {
            return answer(http::busy(), false);
        }
        let hub = &self.shared.hub;
        let options = match hub.options(room) {
            Ok(o) => o,
            Err(_) => {
                return answer(
                    http::text(404, "unknown namespace\n", keep_alive),
                    keep_alive,
                )
            }
        };
        // The room batch reaches every worker with members (and the
        // channel's history, if it has one).
        self.metrics.namespaces[hub.channel_slot(room)]
            .publications
            .inc();
        match self.rooms.ensure(&self.shared.directory, room, options) {
            Ok(id) => {
                let published = self.rooms.publish(id, kind, body, None);
                // Made for this publication, and nothing batched here (a
                // refusal, or history in Redis: delivered when it comes
                // back): not kept.
                self.rooms.discard_if_unused(id, &self.shared.directory);
                if let Err(e) = published {
                    return answer(http::broker_unavailable(&e), false);
                }
            }
            Err(_) => return answer(http::text(503, "too many rooms\n", false), false),
        }
        let bytes = http::publish_accepted(
            room,
            usize::from(local),
            remote.count_ones() as usize,
            keep_alive,
        );
        answer(bytes, keep_alive)
    }
}

/// The API method of a path: `/api/<method>`, or `""` for `/api` (the
/// legacy single endpoint).
fn api_method(path: &str) -> Option<&str> {
    match path.strip_prefix("/api") {
        Some("") => Some(""),
        Some(rest) => rest.strip_prefix('/'),
        None => None,
    }
}

impl Router<'_> {
    /// The server API's request head: off (404) without `api_key`; the key
    /// and the body size are checked before the body is read.
    fn api_head(&mut self, req: &HttpRequest, method: &str) -> HeadVerdict {
        let _ = method;
        let c = &self.shared.config;
        let text = |status, body: &str| {
            HeadVerdict::Answer(answer(http::text(status, body, false), false))
        };
        if c.api_key.is_empty() {
            return text(404, "not found\n");
        }
        if req.method != "POST" {
            let bytes = http_response(
                405,
                "Allow: POST\r\n",
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                false,
            );
            return HeadVerdict::Answer(answer(bytes, false));
        }
        let key = api::api_key_from_headers(req.header("x-api-key"), req.header("authorization"));
        if !key.is_some_and(|k| api::keys_equal(k.as_bytes(), c.api_key.as_bytes())) {
            return HeadVerdict::Answer(answer(
                http_response(401, "", "text/plain; charset=utf-8", b"", false),
                false,
            ));
        }
        if req.header("transfer-encoding").is_some() {
            return text(
                411,
                "Content-Length required (chunked bodies are not accepted)\n",
            );
        }
        match req.content_length() {
            Ok(Some(n)) if n <= c.max_api_body_bytes => HeadVerdict::ReadBody(n),
            Ok(Some(_)) => text(413, "body larger than max_api_body_bytes\n"),
            Ok(None) => HeadVerdict::ReadBody(0),
            Err(()) => text(400, "invalid Content-Length\n"),
        }
    }

    /// A server API call with its body.
    fn api(&mut self, req: &HttpRequest, method: &str, body: &[u8]) -> Response {
        self.metrics.http_requests.inc();
        let keep_alive = http::wants_keep_alive(req) && !self.shutting_down;
        let request = api::ApiRequest {
            method,
            api_key: api::api_key_from_headers(
                req.header("x-api-key"),
                req.header("authorization"),
            ),
            transport_errors: req
                .header("x-centrifugo-error-mode")
                .is_some_and(|v| v.eq_ignore_ascii_case("transport")),
            body,
        };
        if let Some(later) = self.api_reads_from_redis(&request, keep_alive) {
            return later;
        }
        let mut backend = ApiBackend {
            shared: self.shared,
            rooms: self.rooms,
            port: self.port,
            metrics: self.metrics,
        };
        let r = api::handle(&request, &self.shared.config.api_key, &mut backend);
        let bytes = http_response(r.status, "", r.content_type, &r.body, keep_alive);
        answer(bytes, keep_alive)
    }

    /// With `broker = "redis"`: a request that reads history or presence
    /// sends those reads to Redis and is answered when they are
    /// (`api_redis.rs`); `None`: answer it now.
    fn api_reads_from_redis(
        &mut self,
        request: &api::ApiRequest<'_>,
        keep_alive: bool,
    ) -> Option<Response> {
        self.rooms.broker()?;
        let mut recorder = crate::server::api_redis::Recorder::new(&self.shared.hub);
        let _ = api::handle(request, &self.shared.config.api_key, &mut recorder);
        if !recorder.needs_redis() {
            return None;
        }
        let (slots, tokens) = recorder.send(self.rooms.broker_mut()?);
        let pending = crate::server::api_redis::PendingApi {
            key: self.key,
            generation: self.generation,
            method: request.method.to_string(),
            api_key: request.api_key.map(str::to_string),
            transport_errors: request.transport_errors,
            body: request.body.to_vec(),
            keep_alive,
            waiting: tokens.len(),
            slots,
        };
        if tokens.is_empty() {
            // Every read refused at once: answered now, from the refusals.
            return Some(answer(
                crate::server::api_redis::replay(
                    pending,
                    self.shared,
                    self.rooms,
                    self.port,
                    self.metrics,
                ),
                keep_alive,
            ));
        }
        self.awaiting.hold_api(pending, &tokens);
        Some(Response::later(keep_alive))
    }

    /// The demo page and its token route (`demo = true` only).
    fn demo(&mut self, req: &HttpRequest) -> Option<Response> {
        let secret = self.shared.hub.demo_secret.as_deref()?;
        if !req.path.starts_with("/demo") {
            return None;
        }
        self.metrics.http_requests.inc();
        let keep_alive = http::wants_keep_alive(req) && !self.shutting_down;
        if req.path == "/demo/token" {
            let user = req
                .query
                .as_deref()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("user=")))
                .map(percent_decode)
                .unwrap_or_default();
            let body = match crate::pubsub::auth::demo_token(secret, &user) {
                Some(t) => format!("{{\"token\":\"{t}\"}}"),
                None => {
                    return Some(answer(
                        http::text(400, "user: 1-32 letters, digits, - or _\n", keep_alive),
                        keep_alive,
                    ))
                }
            };
            let bytes = http_response(
                200,
                "Cache-Control: no-store\r\n",
                "application/json",
                body.as_bytes(),
                keep_alive,
            );
            return Some(answer(bytes, keep_alive));
        }
        let (content_type, body) = super::demo::asset(&req.path)?;
        let bytes = http_response(200, "", content_type, body, keep_alive);
        Some(answer(bytes, keep_alive))
    }
}

/// `%XX` and `+` decoding of a query value (the demo's user name).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `HEAD`: the same headers, no body.
fn strip_body(req: &HttpRequest, mut r: Response) -> Response {
    if req.method == "HEAD" {
        if let Some(p) = r.bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            r.bytes.truncate(p + 4);
        }
    }
    r
}

impl Handler for Router<'_> {
    fn on_request_head(&mut self, req: &HttpRequest) -> HeadVerdict {
        if let Some(method) = api_method(&req.path) {
            if !self.serves(RouteGroup::Api) {
                // A body we do not read ends the connection after the answer.
                return HeadVerdict::Answer(strip_body(req, self.not_here(false)));
            }
            return self.api_head(req, method);
        }
        if self.shared.routes.websockets(self.listener) {
            if let Some(r) = self.demo(req) {
                return HeadVerdict::Answer(strip_body(req, r));
            }
        }
        if !req.path.starts_with("/publish/") {
            let r = self.serve(req);
            return HeadVerdict::Answer(strip_body(req, r));
        }
        if !self.serves(RouteGroup::Publish) {
            return HeadVerdict::Answer(strip_body(req, self.not_here(false)));
        }
        let c = &self.shared.config;
        match http::check_publish(
            req,
            &c.publish_token,
            c.max_message_bytes,
            c.max_room_name_bytes,
        ) {
            Err(r) => {
                let bytes = http_response(
                    r.status,
                    r.extra,
                    "text/plain; charset=utf-8",
                    r.body.as_bytes(),
                    false,
                );
                HeadVerdict::Answer(answer(bytes, false))
            }
            Ok((room, len)) => {
                // Refuse before reading the body when its room's workers
                // cannot take more.
                let remote = self.destinations(room).map_or(0, |d| d.0);
                if self.port.is_blocked(remote) {
                    self.metrics.publish_requests.inc();
                    return HeadVerdict::Answer(answer(http::busy(), false));
                }
                HeadVerdict::ReadBody(len)
            }
        }
    }

    fn on_request(&mut self, req: &HttpRequest, body: &[u8]) -> Response {
        if let Some(method) = api_method(&req.path) {
            return self.api(req, method, body);
        }
        let room = req.path.strip_prefix("/publish/").unwrap_or("");
        self.publish(req, room, body)
    }

    fn on_upgrade(
        &mut self,
        req: &UpgradeRequest,
        deflate: Option<&crate::protocol::deflate::Negotiated>,
    ) -> Result<Vec<u8>, Response> {
        if !self.shared.routes.websockets(self.listener) {
            self.metrics.rejection(RejectReason::NotFound).inc();
            return Err(answer(http::text(404, NOT_ON_ADMIN, false), false));
        }
        if self.shutting_down {
            self.metrics.rejection(RejectReason::Unavailable).inc();
            return Err(refuse(RejectReason::Unavailable));
        }
        let c = &self.shared.config;
        if !http::origin_allowed(req.origin.as_deref(), &c.allowed_origins) {
            self.metrics.rejection(RejectReason::ForbiddenOrigin).inc();
            return Err(refuse(RejectReason::ForbiddenOrigin));
        }
        let route = match http::ws_route(&req.path, req.query.as_deref(), c.max_room_name_bytes) {
            Ok(r) => r,
            Err(RejectReason::BadRoomName) => {
                self.metrics.rejection(RejectReason::BadRoomName).inc();
                let body = http::room_name_rule(c.max_room_name_bytes);
                return Err(answer(http::text(400, &body, false), false));
            }
            Err(reason) => {
                self.metrics.rejection(reason).inc();
                return Err(refuse(reason));
            }
        };
        let mut protocol = req.negotiate_protocol(&c.subprotocols);
        let attachment = match route {
            WsRoute::Echo => Attachment::Echo,
            WsRoute::PubSub => {
                if req
                    .offered_protocols
                    .iter()
                    .any(|p| p == "centrifuge-protobuf")
                {
                    let body = "the protobuf codec (centrifuge-protobuf) is not supported: use the JSON codec\n";
                    return Err(answer(http::text(400, body, false), false));
                }
                if req.offered_protocols.iter().any(|p| p == "centrifuge-json") {
                    protocol = Some("centrifuge-json");
                }
                Attachment::Client(Box::default())
            }
            WsRoute::Room { name, role } => {
                let (options, role) = match raw_access(&self.shared.hub, &name, role) {
                    Ok(a) => a,
                    Err(status) => {
                        let body = if status == 404 {
                            "unknown namespace\n"
                        } else {
                            "this namespace does not allow anonymous raw members\n"
                        };
                        return Err(answer(http::text(status, body, false), false));
                    }
                };
                let ns = self.shared.hub.channel_slot(&name) as u8;
                match self
                    .rooms
                    .join(&self.shared.directory, &name, options, self.key, role, ns)
                {
                    Some(m) => Attachment::Room(m),
                    None => {
                        self.metrics.rejection(RejectReason::Unavailable).inc();
                        return Err(refuse(RejectReason::Unavailable));
                    }
                }
            }
        };
        self.attachment = Some(attachment);
        self.upgraded = true;
        self.metrics.upgrades.inc();
        self.metrics.connections_open.inc();
        self.shared.ws_connections.fetch_add(1, Ordering::AcqRel);
        Ok(req.accept_response_with(protocol, deflate))
    }

    fn on_client(&mut self, client: IpAddr) -> Result<(), Response> {
        match self.shared.admission.rekey(self.peer, client) {
            Ok(key) => {
                self.peer = key;
                Ok(())
            }
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::Full => RejectReason::Unavailable,
                    Refusal::PerIp => RejectReason::TooManyPerIp,
                };
                log::debug!("client {client} refused: {}", reason.label());
                self.metrics.rejection(reason).inc();
                Err(refuse(reason))
            }
        }
    }

    fn on_message(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        out: &mut OutboundQueue,
        limit: usize,
    ) -> Verdict {
        match &mut self.attachment {
            Some(Attachment::Echo) => {
                if out.try_push_message(kind, data, limit) {
                    self.metrics.messages_out.inc();
                    Verdict::Continue
                } else {
                    Verdict::SlowConsumer
                }
            }
            Some(Attachment::Room(m)) => {
                if !m.publishes {
                    return Verdict::Close(CloseCode::POLICY_VIOLATION, "read-only member");
                }
                let room_id = m.room_id;
                self.metrics.namespaces[usize::from(m.ns)]
                    .publications
                    .inc();
                // A broker error is counted; the raw protocol has no
                // answer for it and local members still get the message.
                let _ = self.rooms.publish(room_id, kind, data, Some((self.key, m)));
                Verdict::Continue
            }
            Some(Attachment::Client(client)) => {
                let mut x = Exec {
                    hub: &self.shared.hub,
                    rooms: self.rooms,
                    directory: &self.shared.directory,
                    key: self.key,
                    ping_secs: ping_secs(self.shared.config.ping_interval),
                    now_secs: Hub::unix_secs(),
                    metrics: self.metrics,
                    awaiting: self.awaiting,
                };
                self.replies.clear();
                if kind != MessageKind::Text {
                    return close_with(DisconnectCode::InappropriateProtocol);
                }
                let result = client.handle_frame(data, &mut x, self.replies);
                if !self.replies.is_empty() {
                    // Replies always fit: an empty queue takes any message,
                    // and a client that does not read its replies is slow.
                    if !out.try_push_message(MessageKind::Text, self.replies, limit) {
                        return Verdict::SlowConsumer;
                    }
                    self.metrics.messages_out.inc();
                }
                match result {
                    Ok(()) => Verdict::Continue,
                    Err(code) => close_with(code),
                }
            }
            None => Verdict::Continue,
        }
    }
}

/// The ping interval announced to SDKs, in whole seconds: rounded up, so
/// a sub-second interval is announced as 1 s (the relay pings at least
/// that often) rather than 0, which the SDKs read as "no pings".
pub fn ping_secs(interval: std::time::Duration) -> u32 {
    let ms = interval.as_millis();
    ms.div_ceil(1000).min(u128::from(u32::MAX)) as u32
}

/// The close frame for a protocol disconnect.
fn close_with(code: DisconnectCode) -> Verdict {
    Verdict::Close(CloseCode(code.code() as u16), code.text())
}

/// What a raw `/rooms/` member may do in a channel: the default namespace
/// is open (rooms predate namespaces); a configured namespace admits raw
/// members only where it lets anonymous clients subscribe, and lets them
/// publish only where anonymous clients may publish. An unknown namespace
/// is 404, a refusal 403.
fn raw_access(
    hub: &Hub,
    name: &str,
    role: MemberRole,
) -> Result<(Option<Arc<ChannelOptions>>, MemberRole), u16> {
    let ns = crate::pubsub::channel::channel_namespace(name);
    let options = hub.options_of_namespace(ns).map_err(|_| 404u16)?;
    if ns.is_empty() {
        return Ok((Some(options), role));
    }
    if !(options.allow_subscribe_for_client && options.allow_subscribe_for_anonymous) {
        return Err(403);
    }
    let may_publish = options.allow_publish_for_anonymous
        && (options.allow_publish_for_client || options.allow_publish_for_subscriber);
    let role = match role {
        MemberRole::Both | MemberRole::Subscriber if !may_publish => MemberRole::Subscriber,
        MemberRole::Publisher if !may_publish => return Err(403),
        r => r,
    };
    Ok((Some(options), role))
}

#[cfg(test)]
mod tests;
