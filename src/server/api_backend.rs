//! The relay side of the server HTTP API ([`crate::pubsub::api`]): what
//! each method does to channels, history, presence and connections, from
//! the worker that received the request.
//!
//! Publications into a channel with history are sequenced at once (the
//! answer carries their offset); others join this iteration's room batch.
//! Requests about connections (`disconnect`, `unsubscribe`) go to every
//! worker, this one included, as control messages through the mesh.

use super::local_rooms::{LocalRooms, Sequencer};
use super::mesh::{Control, MeshPort, WorkerMsg};
use super::node_status;
use super::Shared;
use crate::metrics::WorkerMetrics;
use crate::protocol::MessageKind;
use crate::pubsub::api::{ApiEngine, DisconnectTarget, Glob, NodeInfo, PublishOptions};
use crate::pubsub::history::{HistoryError, HistoryResult, Publication, StreamPosition};
use crate::pubsub::hub::Hub;
use crate::pubsub::presence::{ClientInfo, PresenceStats};
use crate::pubsub::proto::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

pub struct ApiBackend<'a> {
    pub shared: &'a Shared,
    pub rooms: &'a mut LocalRooms,
    pub port: &'a mut MeshPort,
    pub metrics: &'a WorkerMetrics,
}

impl ApiBackend<'_> {
    fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Sends a control message to every worker (this one included).
    fn broadcast(&mut self, c: Control) {
        let all = (1u64 << self.shared.mesh.len()) - 1;
        let msg = WorkerMsg::Control(Arc::new(c));
        self.port
            .send(&self.shared.mesh, all, &msg, 0, self.metrics);
    }
}

/// The `data` of a publication object as history keeps it
/// (`{"data":D,"info":..}`, see `server::push`).
fn data_of(obj: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    match serde_json::from_slice::<Stored<'_>>(obj) {
        Ok(s) => s.data.get().as_bytes().to_vec(),
        Err(_) => obj.to_vec(),
    }
}

impl ApiEngine for ApiBackend<'_> {
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode> {
        let options = self.hub().options(channel)?;
        self.metrics.namespaces[self.hub().channel_slot(channel)]
            .publications
            .inc();
        let seq = Sequencer {
            hub: &self.shared.hub,
            mesh: &self.shared.mesh,
            metrics: self.metrics,
            worker: self.rooms.worker(),
        };
        if options.has_history() && self.rooms.broker().is_some() {
            // Kept in Redis: `api_redis` publishes it and answers with its
            // position. Here only `skip_history`: sent live without one.
            if !opts.skip_history {
                return Err(ErrorCode::Internal);
            }
            let room = self
                .rooms
                .ensure(&self.shared.directory, channel, options)
                .map_err(|_| ErrorCode::LimitExceeded)?;
            let sent = self.rooms.publish_live(room, payload);
            self.rooms.discard_if_unused(room, &self.shared.directory);
            return sent.map(|()| None).map_err(|_| ErrorCode::Internal);
        }
        if options.has_history() && opts.skip_history {
            // Delivered live, not kept: no offset (as in Centrifugo).
            self.rooms
                .publish_unkept(&seq, self.port, &self.shared.directory, channel, payload);
            return Ok(None);
        }
        if options.has_history() {
            let pos = self.rooms.publish_sequenced(
                &seq,
                self.port,
                &self.shared.directory,
                channel,
                &options,
                payload,
            );
            return Ok(Some(pos));
        }
        // Without history: this iteration's room batch.
        let room = self
            .rooms
            .ensure(&self.shared.directory, channel, options)
            .map_err(|_| ErrorCode::LimitExceeded)?;
        let kind = if std::str::from_utf8(payload).is_ok() {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        // With a broker that refused it (Redis down, outbox full): not
        // published anywhere, Centrifugo's "internal server error".
        if self.rooms.publish(room, kind, payload, None).is_err() {
            self.rooms.discard_if_unused(room, &self.shared.directory);
            return Err(ErrorCode::Internal);
        }
        Ok(None)
    }

    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        let options = self.hub().options(channel)?;
        if !options.has_history() || self.rooms.broker().is_some() {
            // With Redis the history is there: such reads are answered by
            // `api_redis` (recorded, fetched, replayed), never from here.
            return Err(ErrorCode::NotAvailable);
        }
        let now = self.hub().now_ms();
        let r = self
            .hub()
            .history
            .history(channel, since, limit, reverse, now)
            .map_err(|e| match e {
                HistoryError::BadRequest => ErrorCode::BadRequest,
                HistoryError::UnrecoverablePosition { .. } => ErrorCode::UnrecoverablePosition,
            })?;
        Ok(HistoryResult {
            publications: r
                .publications
                .into_iter()
                .map(|p| Publication {
                    offset: p.offset,
                    payload: data_of(&p.payload).into(),
                })
                .collect(),
            position: r.position,
        })
    }

    fn history_remove(&mut self, channel: &str) -> Result<(), ErrorCode> {
        let options = self.hub().options(channel)?;
        if !options.has_history() {
            return Err(ErrorCode::NotAvailable);
        }
        if let Some(port) = self.rooms.broker_mut() {
            // Removed in Redis: the next read or publication starts a new
            // epoch, and subscribers recover from it (`recovered: false`).
            port.remove_history(channel)
                .map_err(|_| ErrorCode::Internal)?;
            return Ok(());
        }
        self.hub().history.remove(channel);
        Ok(())
    }

    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode> {
        // With Redis, presence is there: see `history`.
        if !self.hub().options(channel)?.presence || self.rooms.broker().is_some() {
            return Err(ErrorCode::NotAvailable);
        }
        Ok(self.hub().presence.presence(channel))
    }

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        if !self.hub().options(channel)?.presence || self.rooms.broker().is_some() {
            return Err(ErrorCode::NotAvailable);
        }
        Ok(self.hub().presence.stats(channel))
    }

    fn channels(&mut self, pattern: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode> {
        let matches = |name: &str| pattern.is_none_or(|p| p.matches(name));
        let mut merged: HashMap<String, u64> = node_status::subscribed_rooms(self.shared)
            .iter()
            .filter(|r| matches(&r.name))
            .map(|r| (r.name.to_string(), u64::from(r.subscribers())))
            .collect();
        // With Redis: the other nodes' channels from their latest records
        // (each at most `redis_node_channels_max`), counts summed.
        if let Some(port) = self.rooms.broker() {
            for node in port.nodes() {
                for (name, n) in node.channels.iter().filter(|(c, _)| matches(c)) {
                    *merged.entry(name.clone()).or_default() += u64::from(*n);
                }
            }
        }
        Ok(merged.into_iter().filter(|(_, n)| *n > 0).collect())
    }

    fn info(&mut self) -> Result<NodeInfo, ErrorCode> {
        Ok(node_status::own_info(self.shared))
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, ErrorCode> {
        // This node from its live figures, the others (Redis) from their
        // latest records.
        let mut nodes = vec![node_status::own_info(self.shared)];
        if let Some(port) = self.rooms.broker() {
            nodes.extend(port.nodes().iter().map(|r| r.info.clone()));
        }
        Ok(nodes)
    }

    fn disconnect(&mut self, target: &DisconnectTarget<'_>) -> Result<(), ErrorCode> {
        self.broadcast(Control::Disconnect {
            user: target.user.to_string(),
            client: target.client.map(str::to_string),
            whitelist: target.whitelist.to_vec(),
            code: target.code,
            reason: target.reason.to_string(),
        });
        Ok(())
    }

    fn unsubscribe(
        &mut self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), ErrorCode> {
        self.hub().options(channel)?;
        self.broadcast(Control::Unsubscribe {
            user: user.to_string(),
            channel: channel.to_string(),
            client: client.map(str::to_string),
        });
        Ok(())
    }
}
