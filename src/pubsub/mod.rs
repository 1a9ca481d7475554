//! Centrifugo-compatible pub/sub (client protocol v2, JSON codec), so the
//! official SDKs (centrifuge-js 5.x, centrifuge-python) can talk to wsrelay
//! at `GET /connection/websocket`.
//!
//! - [`proto`]: the sans-IO codec: command frames in, replies and pushes out,
//!   error/disconnect/unsubscribe code tables.
//! - [`channel`]: channel-name grammar (namespace `:`, private `$`,
//!   user-limited `#`).
//!
//! Nothing here does I/O or touches the engine; wiring comes in later layers.

pub mod channel;
pub mod proto;
