//! The relay's integration tests, one binary, one module per concept:
//!
//! - `handshake`: upgrade routing and refusals, plain HTTP on the same port;
//! - `echo`: `/echo` payloads, fragmentation, control frames, close
//!   handshake, protocol violations;
//! - `rooms`: fan-out across workers, roles, echo_self, ordering, churn;
//! - `admin`: the private admin listener (route split, probes while full,
//!   readiness through shutdown);
//! - `admission`: origins, connection / per-IP / room caps;
//! - `deflate`: permessage-deflate (negotiation, compressed messages, bombs);
//! - `publish`: `POST /publish/{room}`;
//! - `metrics`: `/healthz`, `/metrics`;
//! - `lifecycle`: graceful shutdown (in-process and the binary), start-up;
//! - `bounds`: size limits, slow consumers, rate limits, descriptors,
//!   memory and backpressure bounds;
//! - `protocol_props`: property tests of the sans-IO protocol core;
//! - `config`: argv, files and environment through `parse_args_with_env`,
//!   and the binary's own reading of them;
//! - `proxies`: trusted proxies: `X-Forwarded-For` / `Forwarded` from
//!   trusted and untrusted peers, PROXY protocol v1 and v2 (valid,
//!   truncated, garbage, slow), per-IP limits on the forwarded client;
//! - `startup`: the binary starts as one plain process (a piped config is
//!   read once, the process keeps its name).
//! - `tls`: `tls_listen` (wss:// with run-time certificates: ECDSA,
//!   Ed25519 and RSA chains, ALPN, resumption, rooms mixing TLS and plain
//!   members, garbage instead of a ClientHello).
//!
//! Helpers live in `support`. Per-connection deadlines and rate-limit
//! timing (heartbeats, handshake deadline, keep-alive idling, close
//! timeout, token refill) are not tested here over sockets: they are
//! virtual-clock tests of the session (`src/server/session/tests.rs`).

mod support;

mod admin;
mod admission;
mod bounds;
mod config;
mod deflate;
mod echo;
mod handshake;
mod lifecycle;
mod metrics;
mod protocol_props;
mod proxies;
mod publish;
mod pubsub;
mod rooms;
mod startup;
mod tls;
