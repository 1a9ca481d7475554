//! The value types of [`History`](super::History)'s API.

use std::fmt;
use std::sync::Arc;

/// A publication payload, shared with the fan-out without copying.
pub type Payload = Arc<[u8]>;

/// The epoch of one stream incarnation: a short opaque string (Centrifugo's
/// `epoch` is an arbitrary string). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EpochId(Arc<str>);

impl EpochId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for EpochId {
    /// An epoch as sent back by a client in `subscribe { recover, epoch }`.
    fn from(s: &str) -> Self {
        EpochId(s.into())
    }
}

impl fmt::Debug for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a stream: `offset` within `epoch` (Centrifugo's
/// `StreamPosition`). The top position of a stream with no publication yet
/// is offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: EpochId,
}

/// What [`History::publish`] returns: the position stamped on the publication.
pub type Position = StreamPosition;

/// A retained publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub payload: Payload,
}

/// Per-channel history options (Centrifugo's `history_size`/`history_ttl`;
/// history is meant to be on only when both are > 0: with `size == 0`
/// nothing is retained, with `ttl_ms == 0` every publication starts a new
/// epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications retained; older ones are dropped from the front.
    pub size: usize,
    /// The stream (publications, top offset and epoch) is removed this long
    /// after its last publication.
    pub ttl_ms: u64,
}

/// Process-wide settings.
#[derive(Clone, Copy, Debug)]
pub struct HistoryConfig {
    /// Number of locks (rounded up to a power of two, at least 1).
    pub shards: usize,
    /// Cap on retained payload bytes (plus a fixed per-entry overhead) over
    /// all channels; 0 = no cap.
    pub max_bytes: usize,
    /// Lifetime of a stream created by a read (history/recover on a channel
    /// with no stream) until its first publication. The read creates it so
    /// the epoch it reports stays valid for the client's next recovery, as
    /// Centrifuge's memory broker does (`historyHub.get` → `createStream`).
    pub empty_stream_ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            shards: 64,
            max_bytes: 256 << 20,
            empty_stream_ttl_ms: 60_000,
        }
    }
}

/// Answer to [`History::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    /// The stream top (latest offset and current epoch).
    pub position: StreamPosition,
}

/// Why a history query was refused (Centrifugo client error codes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// 112 "unrecoverable position": `since` names another epoch. Carries the
    /// current top so the caller can report it.
    UnrecoverablePosition { position: StreamPosition },
    /// 107 "bad request": reverse iteration from offset 0.
    BadRequest,
}

/// Answer to [`History::recover`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// In offset order, always ending at `position.offset` when not empty.
    pub publications: Vec<Publication>,
    /// True only if `publications` is exactly everything after `since`.
    pub recovered: bool,
    /// The stream top the answer was read at (the client's new position; the
    /// live merge drops live publications at or below it).
    pub position: StreamPosition,
}

/// Counters for the `/metrics` page (summed over shards when read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Retained bytes now (gauge, `history_bytes`).
    pub bytes: u64,
    /// Streams now (gauge).
    pub streams: u64,
    /// Retained publications now (gauge).
    pub publications: u64,
    /// Publications evicted by the global byte cap (counter).
    pub cap_evictions: u64,
    /// Streams removed by TTL (counter).
    pub expired_streams: u64,
}
