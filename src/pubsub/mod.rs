//! Centrifugo-compatible pub/sub (client protocol v2, JSON codec), so the
//! official SDKs (centrifuge-js 5.x, centrifuge-python) can talk to wsrelay
//! at `GET /connection/websocket`. Built bottom-up, each layer sans-IO:
//!
//! - [`proto`]: the codec: command frames in, replies and pushes out,
//!   error/disconnect/unsubscribe code tables;
//! - [`channel`]: channel-name grammar (namespace `:`, private `$`,
//!   user-limited `#`);
//! - [`auth`]: JWT connection and subscription tokens;
//! - [`history`]: per-channel history with offsets and epochs, recovery;
//! - [`presence`]: who is subscribed to a channel, per-user counts,
//!   bounded, with TTL expiry as a safety net against ghosts.
//!
//! Not wired into the engine yet: the endpoint, command execution and the
//! fan-out of publication pushes are the next layer.

pub mod api;
pub mod auth;
pub mod channel;
pub mod history;
pub mod hub;
pub mod presence;
pub mod proto;
pub mod sharded;
