//! wsrelay: a standalone, high-performance WebSocket relay.
//!
//! - [`protocol`]: the sans-IO RFC 6455 core (handshake, frames, masking,
//!   message assembly, close handshake, client mode).
//! - [`server`]: the relay engine (per-core mio loops, rooms, fan-out).
//! - [`config`]: configuration file and flags; [`metrics`]: counters;
//!   [`logs`]: the binary's start-up, warning and stats lines.
//! - [`pubsub`]: Centrifugo client protocol (v2) layers: codec, channel
//!   names, token auth, history and recovery (not wired in yet).
//! - [`broker`]: the Redis bridge between nodes (docs/cluster.md).

pub mod broker;
pub mod config;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod pubsub;
pub mod server;
