//! The server API's calls answered by Redis (`broker = "redis"`):
//! `publish` into a channel with history (its answer carries the offset
//! and epoch Redis gave it), `history`, `presence` and `presence_stats`.
//! The API answers synchronously (`crate::pubsub::api`), so a request
//! that makes such calls is run twice: once with a [`Recorder`] that only
//! notes them, in order, and sends them to the bridge in that order (so
//! Redis applies them in the request's order: a batch's `history` after
//! its `publish` sees it), while the HTTP answer waits
//! (`Response::later`); and once for real when every one is answered,
//! with a [`Replayer`] that answers them, in the same order, from Redis'
//! answers and hands everything else (publications without history,
//! disconnects, ...) to the real engine, so those happen once, then. The
//! API's request handling stays one piece of code.

use super::api_backend::ApiBackend;
use crate::broker::{BrokerError, BrokerPort, Envelope, Kind, Reply, Token};
use crate::config::ChannelOptions;
use crate::pubsub::api::{ApiEngine, DisconnectTarget, Glob, NodeInfo, PublishOptions};
use crate::pubsub::history::{HistoryResult, Publication, StreamPosition};
use crate::pubsub::hub::Hub;
use crate::pubsub::presence::{ClientInfo, PresenceStats};
use crate::pubsub::proto::ErrorCode;
use std::collections::VecDeque;
use std::sync::Arc;

/// One call of an API request that Redis answers.
#[derive(Debug, Clone)]
enum Read {
    Publish {
        channel: String,
        payload: Vec<u8>,
        stream: crate::pubsub::history::StreamOptions,
    },
    History {
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    },
    Presence(String),
    PresenceStats(String),
}

/// A read's answer for the replay.
#[derive(Debug)]
pub enum Slot {
    /// Not a Redis read (unknown channel, feature off): the real engine
    /// answers it (with its error).
    Engine,
    Waiting,
    Answered(Result<Reply, BrokerError>),
}

/// Runs an API request without effects, noting its reads.
pub struct Recorder<'a> {
    hub: &'a Hub,
    reads: Vec<Option<Read>>,
}

impl<'a> Recorder<'a> {
    pub fn new(hub: &'a Hub) -> Recorder<'a> {
        Recorder {
            hub,
            reads: Vec::new(),
        }
    }

    /// Whether any call needs Redis.
    pub fn needs_redis(&self) -> bool {
        self.reads.iter().any(Option::is_some)
    }

    fn options(&self, channel: &str) -> Option<Arc<ChannelOptions>> {
        self.hub.options(channel).ok()
    }

    /// Sends the reads to the bridge: the slots for the replay, and the
    /// tokens of those sent (with their slot index).
    pub fn send(self, port: &mut BrokerPort) -> (Vec<Slot>, Vec<(Token, usize)>) {
        let mut slots = Vec::with_capacity(self.reads.len());
        let mut sent = Vec::new();
        for read in self.reads {
            let Some(read) = read else {
                slots.push(Slot::Engine);
                continue;
            };
            let r = match &read {
                Read::Publish {
                    channel,
                    payload,
                    stream,
                } => {
                    let kind = if std::str::from_utf8(payload).is_ok() {
                        Kind::RawText
                    } else {
                        Kind::RawBinary
                    };
                    let env = Envelope {
                        kind,
                        origin: port.node(),
                        channel: channel.clone(),
                        position: None,
                        info: None,
                        payload: payload.clone(),
                    };
                    port.publish_history(&env, *stream)
                }
                Read::History {
                    channel,
                    since,
                    limit,
                    reverse,
                } => {
                    let ttl = self
                        .hub
                        .options(channel)
                        .map(|o| o.history_ttl)
                        .unwrap_or_default();
                    let (from, n) = match (since, reverse) {
                        (Some(s), false) => (s.offset, limit.map_or(-1, |l| l as i64)),
                        (None, false) => (0, limit.map_or(-1, |l| l as i64)),
                        // The capped stream whole, turned on the node.
                        (_, true) => (0, -1),
                    };
                    port.history(channel, from, n, ttl)
                }
                Read::Presence(channel) | Read::PresenceStats(channel) => port.presence(channel),
            };
            match r {
                Ok(token) => {
                    sent.push((token, slots.len()));
                    slots.push(Slot::Waiting);
                }
                Err(e) => slots.push(Slot::Answered(Err(e))),
            }
        }
        (slots, sent)
    }
}

impl ApiEngine for Recorder<'_> {
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode> {
        let read = self
            .options(channel)
            .filter(|o| o.has_history() && !opts.skip_history)
            .map(|o| Read::Publish {
                channel: channel.to_string(),
                payload: payload.to_vec(),
                stream: Hub::stream_options(&o),
            });
        self.reads.push(read);
        Ok(None)
    }

    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        let read = self
            .options(channel)
            .filter(|o| o.has_history())
            .map(|_| Read::History {
                channel: channel.to_string(),
                since: since.cloned(),
                limit,
                reverse,
            });
        self.reads.push(read);
        Err(ErrorCode::NotAvailable)
    }

    fn history_remove(&mut self, _: &str) -> Result<(), ErrorCode> {
        Ok(())
    }

    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode> {
        let on = self.options(channel).is_some_and(|o| o.presence);
        self.reads
            .push(on.then(|| Read::Presence(channel.to_string())));
        Err(ErrorCode::NotAvailable)
    }

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        let on = self.options(channel).is_some_and(|o| o.presence);
        self.reads
            .push(on.then(|| Read::PresenceStats(channel.to_string())));
        Err(ErrorCode::NotAvailable)
    }

    fn channels(&mut self, _: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode> {
        Ok(Vec::new())
    }

    fn info(&mut self) -> Result<NodeInfo, ErrorCode> {
        Err(ErrorCode::NotAvailable)
    }

    fn disconnect(&mut self, _: &DisconnectTarget<'_>) -> Result<(), ErrorCode> {
        Ok(())
    }

    fn unsubscribe(&mut self, _: &str, _: &str, _: Option<&str>) -> Result<(), ErrorCode> {
        Ok(())
    }
}

/// Runs an API request for real, its Redis reads answered from `slots`.
pub struct Replayer<'a, 'b> {
    pub engine: &'b mut ApiBackend<'a>,
    pub slots: VecDeque<Slot>,
}

impl Replayer<'_, '_> {
    fn next(&mut self) -> Option<Result<Reply, BrokerError>> {
        match self.slots.pop_front() {
            Some(Slot::Answered(r)) => Some(r),
            Some(Slot::Waiting) => Some(Err(BrokerError::Timeout)),
            Some(Slot::Engine) | None => None,
        }
    }
}

/// A broker failure as the API says it.
fn failed(_: BrokerError) -> ErrorCode {
    ErrorCode::Internal
}

impl ApiEngine for Replayer<'_, '_> {
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode> {
        match self.next() {
            None => self.engine.publish(channel, payload, opts),
            Some(Ok(Reply::Position { offset, epoch })) => {
                let hub = &self.engine.shared.hub;
                self.engine.metrics.namespaces[hub.channel_slot(channel)]
                    .publications
                    .inc();
                Ok(Some(StreamPosition {
                    offset,
                    epoch: epoch.as_str().into(),
                }))
            }
            Some(Ok(_)) => Err(ErrorCode::Internal),
            Some(Err(e)) => {
                if let Some(port) = self.engine.rooms.broker() {
                    crate::broker::BrokerMetrics::inc(&port.metrics().publish_errors);
                }
                Err(failed(e))
            }
        }
    }

    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        let h = match self.next() {
            None => return self.engine.history(channel, since, limit, reverse),
            Some(Ok(Reply::History(h))) => h,
            Some(Ok(_)) => return Err(ErrorCode::Internal),
            Some(Err(e)) => return Err(failed(e)),
        };
        if reverse && since.is_some_and(|s| s.offset == 0) {
            return Err(ErrorCode::BadRequest);
        }
        if since.is_some_and(|s| !s.epoch.as_str().is_empty() && s.epoch.as_str() != h.epoch) {
            return Err(ErrorCode::UnrecoverablePosition);
        }
        let mut publications: Vec<Publication> = h
            .publications
            .into_iter()
            .filter_map(|env| {
                let (offset, _) = env.position?;
                Some(Publication {
                    offset,
                    payload: env.payload.into(),
                })
            })
            .collect();
        if reverse {
            if let Some(s) = since {
                publications.retain(|p| p.offset < s.offset);
            }
            publications.reverse();
        }
        if let Some(l) = limit {
            publications.truncate(l);
        }
        Ok(HistoryResult {
            publications,
            position: StreamPosition {
                offset: h.top,
                epoch: h.epoch.as_str().into(),
            },
        })
    }

    fn history_remove(&mut self, channel: &str) -> Result<(), ErrorCode> {
        self.engine.history_remove(channel)
    }

    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode> {
        match self.next() {
            None => self.engine.presence(channel),
            Some(Ok(Reply::Presence(entries))) => {
                Ok(entries.into_iter().map(ClientInfo::from).collect())
            }
            Some(Ok(_)) => Err(ErrorCode::Internal),
            Some(Err(e)) => Err(failed(e)),
        }
    }

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        match self.next() {
            None => self.engine.presence_stats(channel),
            Some(Ok(Reply::Presence(entries))) => {
                let (num_clients, num_users) = crate::broker::PresenceEntry::stats(&entries);
                Ok(PresenceStats {
                    num_clients,
                    num_users,
                })
            }
            Some(Ok(_)) => Err(ErrorCode::Internal),
            Some(Err(e)) => Err(failed(e)),
        }
    }

    fn channels(&mut self, pattern: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode> {
        self.engine.channels(pattern)
    }

    fn info(&mut self) -> Result<NodeInfo, ErrorCode> {
        self.engine.info()
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, ErrorCode> {
        self.engine.nodes()
    }

    fn disconnect(&mut self, target: &DisconnectTarget<'_>) -> Result<(), ErrorCode> {
        self.engine.disconnect(target)
    }

    fn unsubscribe(
        &mut self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), ErrorCode> {
        self.engine.unsubscribe(user, channel, client)
    }
}

/// An API request waiting for its reads.
#[derive(Debug)]
pub struct PendingApi {
    /// The connection's slab key and generation.
    pub key: usize,
    pub generation: u32,
    pub method: String,
    pub api_key: Option<String>,
    pub transport_errors: bool,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    pub slots: Vec<Slot>,
    pub waiting: usize,
}

/// Runs a request whose reads are all answered (or refused): the HTTP
/// answer's bytes.
pub fn replay(
    p: PendingApi,
    shared: &super::Shared,
    rooms: &mut super::local_rooms::LocalRooms,
    port: &mut super::mesh::MeshPort,
    metrics: &crate::metrics::WorkerMetrics,
) -> Vec<u8> {
    let request = crate::pubsub::api::ApiRequest {
        method: &p.method,
        api_key: p.api_key.as_deref(),
        transport_errors: p.transport_errors,
        body: &p.body,
    };
    let mut backend = ApiBackend {
        shared,
        rooms,
        port,
        metrics,
    };
    let mut replayer = Replayer {
        engine: &mut backend,
        slots: p.slots.into(),
    };
    let r = crate::pubsub::api::handle(&request, &shared.config.api_key, &mut replayer);
    crate::protocol::response::http_response(r.status, "", r.content_type, &r.body, p.keep_alive)
}
