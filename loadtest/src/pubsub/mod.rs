//! The `pubsub` scenario: Centrifugo client protocol v2 (JSON) clients.
//! Sans-IO: [`proto`] encodes commands and decodes server lines, [`track`]
//! accounts loss, duplicates, order, offsets and recovery per
//! subscription, [`client`] is one connection's protocol state machine.
//! The worker only moves bytes and decides when to drop and reconnect.

pub mod client;
pub mod json;
pub mod proto;
pub mod track;

#[cfg(test)]
mod tests;
