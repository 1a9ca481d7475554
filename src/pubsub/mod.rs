//! Centrifugo client protocol (v2) support: pub/sub on top of the relay engine.
//!
//! - [`auth`]: connection and subscription JWT verification (pure functions).

pub mod auth;
