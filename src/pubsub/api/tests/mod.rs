//! The server API, sans-IO, against a fake engine that records calls.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: &str = "secret-key";

/// What the fake engine was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Publish {
        channel: String,
        payload: Vec<u8>,
        opts: PublishOptions,
    },
    History {
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    },
    HistoryRemove(String),
    Presence(String),
    PresenceStats(String),
    Channels {
        pattern: bool,
    },
    Info,
    Disconnect {
        user: String,
        client: Option<String>,
        whitelist: Vec<String>,
        code: u32,
        reason: String,
    },
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
}

/// A relay stand-in: records calls, answers from its fields.
#[derive(Default)]
struct Fake {
    calls: Vec<Rec>,
    /// Every call on this channel fails with this code.
    fail_channel: Option<(&'static str, ErrorCode)>,
    /// Every call fails with this code.
    fail_all: Option<ErrorCode>,
    /// Publishes return positions (offset = publish count, epoch "ep").
    positioned: bool,
    history: Option<HistoryResult>,
    presence: Vec<ClientInfo>,
    channels: Vec<(String, u64)>,
    info: NodeInfo,
}

impl Fake {
    fn check(&self, channel: &str) -> Result<(), ErrorCode> {
        if let Some(code) = self.fail_all {
            return Err(code);
        }
        match self.fail_channel {
            Some((ch, code)) if ch == channel => Err(code),
            _ => Ok(()),
        }
    }
}

impl ApiEngine for Fake {
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode> {
        self.calls.push(Rec::Publish {
            channel: channel.into(),
            payload: payload.to_vec(),
            opts: opts.clone(),
        });
        self.check(channel)?;
        let n = self
            .calls
            .iter()
            .filter(|c| matches!(c, Rec::Publish { .. }))
            .count();
        Ok((self.positioned && !opts.skip_history).then(|| pos(n as u64, "ep")))
    }

    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        self.calls.push(Rec::History {
            channel: channel.into(),
            since: since.cloned(),
            limit,
            reverse,
        });
        self.check(channel)?;
        Ok(self.history.clone().unwrap_or(HistoryResult {
            publications: Vec::new(),
            position: pos(0, "e0"),
        }))
    }

    fn history_remove(&mut self, channel: &str) -> Result<(), ErrorCode> {
        self.calls.push(Rec::HistoryRemove(channel.into()));
        self.check(channel)
    }

    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode> {
        self.calls.push(Rec::Presence(channel.into()));
        self.check(channel)?;
        Ok(self.presence.clone())
    }

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        self.calls.push(Rec::PresenceStats(channel.into()));
        self.check(channel)?;
        Ok(PresenceStats {
            num_clients: 3,
            num_users: 2,
        })
    }

    fn channels(&mut self, pattern: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode> {
        self.calls.push(Rec::Channels {
            pattern: pattern.is_some(),
        });
        self.check("")?;
        Ok(self
            .channels
            .iter()
            .filter(|(ch, _)| pattern.is_none_or(|g| g.matches(ch)))
            .cloned()
            .collect())
    }

    fn info(&mut self) -> Result<NodeInfo, ErrorCode> {
        self.calls.push(Rec::Info);
        self.check("")?;
        Ok(self.info.clone())
    }

    fn disconnect(&mut self, t: &DisconnectTarget<'_>) -> Result<(), ErrorCode> {
        self.calls.push(Rec::Disconnect {
            user: t.user.into(),
            client: t.client.map(Into::into),
            whitelist: t.whitelist.to_vec(),
            code: t.code,
            reason: t.reason.into(),
        });
        self.check("")
    }

    fn unsubscribe(
        &mut self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), ErrorCode> {
        self.calls.push(Rec::Unsubscribe {
            user: user.into(),
            channel: channel.into(),
            client: client.map(Into::into),
        });
        self.check(channel)
    }
}

fn pos(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: EpochId::from(epoch),
    }
}

fn req<'a>(method: &'a str, body: &'a str) -> ApiRequest<'a> {
    ApiRequest {
        method,
        api_key: Some(KEY),
        transport_errors: false,
        body: body.as_bytes(),
    }
}

/// Calls `method` with a good key; returns (status, body text).
fn call(engine: &mut Fake, method: &str, body: &str) -> (u16, String) {
    let resp = handle(&req(method, body), KEY, engine);
    (
        resp.status,
        String::from_utf8(resp.body).expect("utf-8 body"),
    )
}

/// Calls `method` and parses the 200 JSON answer.
fn call_json(engine: &mut Fake, method: &str, body: &str) -> Value {
    let resp = handle(&req(method, body), KEY, engine);
    assert_eq!(resp.status, 200, "{method} {body}: {:?}", resp);
    assert_eq!(resp.content_type, "application/json");
    serde_json::from_slice(&resp.body).expect("JSON body")
}

fn api_error(code: u32, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn bad_request() -> Value {
    api_error(107, "bad request")
}

fn publication(offset: u64, payload: &[u8]) -> crate::pubsub::history::Publication {
    crate::pubsub::history::Publication {
        offset,
        payload: payload.into(),
    }
}

fn client(id: &str, user: &str, conn: Option<&[u8]>, chan: Option<&[u8]>) -> ClientInfo {
    ClientInfo {
        client: id.into(),
        user: user.into(),
        conn_info: conn.map(Arc::from),
        chan_info: chan.map(Arc::from),
    }
}

mod auth;
mod batch;
mod connections;
mod decode;
mod fuzz;
mod patterns;
mod publish;
mod reads;
