//! The Centrifugo-compatible pub/sub layer (issue 11), built bottom-up:
//!
//! - [`auth`]: JWT connection and subscription tokens;
//! - [`history`]: per-channel history with offsets and epochs, recovery.
//!
//! Not wired into the engine yet: the endpoint, commands and fan-out of
//! publication pushes come next.

pub mod auth;
pub mod history;
