//! The process-wide pub/sub state every worker shares: channel options by
//! namespace, history, presence, the token verifier, and the node's
//! identity. Workers hold an `Arc<Hub>` through `Shared`; everything in it
//! is either immutable after start or locked per channel shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::auth::{AuthConfig, Secret, Verifier};
use super::channel::ChannelName;
use super::history::{History, HistoryConfig, StreamOptions};
use super::presence::{Presence, PresenceConfig};
use super::proto::{ErrorCode, Limits};
use crate::config::{ChannelOptions, Config};

/// Commands per frame a client may batch (reconnects resubscribe with one
/// frame per subscription set; 128 channels by default).
const MAX_COMMANDS_PER_FRAME: usize = 1024;

/// Presence entries live as long as their subscription: this process
/// removes them on unsubscribe and on close, so no expiry is needed as a
/// safety net (a cluster broker will need one; see issue "Redis").
const PRESENCE_TTL_MS: u64 = u64::MAX >> 2;

pub struct Hub {
    pub history: History,
    pub presence: Presence,
    pub verifier: Verifier,
    pub limits: Limits,
    pub max_channel_bytes: usize,
    pub client_channel_limit: usize,
    default_options: Arc<ChannelOptions>,
    namespaces: HashMap<String, Arc<ChannelOptions>>,
    /// Metric slot of each namespace, and each slot's label.
    slots: HashMap<String, usize>,
    pub slot_labels: Vec<String>,
    /// This node's id (random per start; `info` and client ids use it).
    pub node_id: String,
    started: Instant,
    client_seq: AtomicU64,
    /// Secret the demo page's tokens are signed with (demo mode only).
    pub demo_secret: Option<String>,
    /// Connected protocol clients, and connections per user id (`info`).
    clients: AtomicU64,
    users: std::sync::Mutex<HashMap<Arc<str>, u32>>,
}

/// Why the hub could not be built from the configuration.
#[derive(Debug)]
pub struct HubError {
    pub key: &'static str,
    pub reason: String,
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// PEM text, or the contents of the file it names.
fn pem_or_file(key: &'static str, value: &str) -> Result<String, HubError> {
    let v = value.trim();
    if v.is_empty() || v.starts_with("-----BEGIN") {
        return Ok(v.to_string());
    }
    std::fs::read_to_string(v).map_err(|e| HubError {
        key,
        reason: format!("cannot read PEM file {v:?}: {e}"),
    })
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The demo's namespace, when the configuration does not define one.
pub const DEMO_NAMESPACE: &str = "demo";

fn demo_options() -> ChannelOptions {
    ChannelOptions {
        history_size: 100,
        history_ttl: std::time::Duration::from_secs(600),
        force_recovery: true,
        presence: true,
        join_leave: true,
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        allow_history_for_subscriber: true,
        allow_presence_for_subscriber: true,
        ..ChannelOptions::default()
    }
}

impl Hub {
    pub fn new(c: &Config) -> Result<Hub, HubError> {
        let demo_secret = c.demo.then(|| {
            if c.token_hmac_secret_key.is_empty() {
                random_hex(32)
            } else {
                c.token_hmac_secret_key.clone()
            }
        });
        let auth = AuthConfig {
            token_hmac_secret_key: Secret(
                demo_secret
                    .clone()
                    .unwrap_or_else(|| c.token_hmac_secret_key.clone()),
            ),
            token_rsa_public_key: pem_or_file("token_rsa_public_key", &c.token_rsa_public_key)?,
            token_ecdsa_public_key: pem_or_file(
                "token_ecdsa_public_key",
                &c.token_ecdsa_public_key,
            )?,
            token_audience: c.token_audience.clone(),
            token_issuer: c.token_issuer.clone(),
            allow_anonymous_connect_without_token: c.allow_anonymous_connect_without_token,
            disallow_anonymous_connection_tokens: c.disallow_anonymous_connection_tokens,
        };
        let verifier = Verifier::new(&auth).map_err(|e| HubError {
            key: e.key,
            reason: e.reason,
        })?;
        let mut namespaces: HashMap<String, Arc<ChannelOptions>> = c
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), Arc::new(n.options.clone())))
            .collect();
        if c.demo {
            namespaces
                .entry(DEMO_NAMESPACE.to_string())
                .or_insert_with(|| Arc::new(demo_options()));
        }
        let mut names: Vec<&String> = c.namespaces.iter().map(|n| &n.name).collect();
        if c.demo && !names.iter().any(|n| *n == DEMO_NAMESPACE) {
            names.push(
                namespaces
                    .keys()
                    .find(|k| *k == DEMO_NAMESPACE)
                    .expect("inserted"),
            );
        }
        let (slots, slot_labels) = metric_slots(&names);
        Ok(Hub {
            slots,
            slot_labels,
            history: History::new(HistoryConfig {
                max_bytes: c.history_max_bytes,
                ..HistoryConfig::default()
            }),
            presence: Presence::new(PresenceConfig {
                shards: 64,
                max_clients_per_channel: 0,
                max_entries: c.presence_max_clients,
                ttl_ms: PRESENCE_TTL_MS,
            }),
            verifier,
            limits: Limits {
                max_frame_bytes: c.max_message_bytes,
                max_command_bytes: c.max_message_bytes,
                max_commands_per_frame: MAX_COMMANDS_PER_FRAME,
            },
            max_channel_bytes: c.max_room_name_bytes,
            client_channel_limit: c.client_channel_limit,
            default_options: Arc::new(ChannelOptions::of(c)),
            namespaces,
            node_id: random_hex(8),
            started: Instant::now(),
            client_seq: AtomicU64::new(0),
            demo_secret,
            clients: AtomicU64::new(0),
            users: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The options of a channel; `UnknownChannel` for a namespace that is
    /// not configured, `BadRequest` for a malformed name.
    pub fn options(&self, channel: &str) -> Result<Arc<ChannelOptions>, ErrorCode> {
        let name =
            ChannelName::parse(channel, self.max_channel_bytes).map_err(|e| e.reply_error())?;
        self.options_of_namespace(name.namespace())
    }

    pub fn options_of_namespace(&self, ns: &str) -> Result<Arc<ChannelOptions>, ErrorCode> {
        if ns.is_empty() {
            return Ok(self.default_options.clone());
        }
        self.namespaces
            .get(ns)
            .cloned()
            .ok_or(ErrorCode::UnknownChannel)
    }

    /// The metrics slot of a namespace ("" = none; see `NAMESPACE_SLOTS`).
    pub fn namespace_slot(&self, ns: &str) -> usize {
        if ns.is_empty() {
            return 0;
        }
        self.slots
            .get(ns)
            .copied()
            .unwrap_or(crate::metrics::NAMESPACE_SLOTS - 1)
    }

    /// The metrics slot of a channel's namespace.
    pub fn channel_slot(&self, channel: &str) -> usize {
        self.namespace_slot(super::channel::channel_namespace(channel))
    }

    /// History settings of a channel with history.
    pub fn stream_options(o: &ChannelOptions) -> StreamOptions {
        StreamOptions {
            size: o.history_size,
            ttl_ms: o.history_ttl.as_millis() as u64,
        }
    }

    /// A new client id: unique in the process and across restarts.
    pub fn new_client_id(&self) -> Arc<str> {
        let n = self.client_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.node_id).into()
    }

    /// The process-wide millisecond clock history and presence expire
    /// by (workers' own clocks start at different instants).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A protocol client connected (`true`) or went away (`false`).
    pub fn count_client(&self, user: &Arc<str>, connected: bool) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if connected {
            self.clients.fetch_add(1, Ordering::Relaxed);
            *users.entry(user.clone()).or_insert(0) += 1;
        } else {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            if let Some(n) = users.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    users.remove(user);
                }
            }
        }
    }

    /// Connected protocol clients.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed) as usize
    }

    /// Distinct users among them (anonymous connections count as one).
    pub fn users(&self) -> usize {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Wall-clock seconds (token `exp` is wall-clock).
    pub fn unix_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Slot 0 is the default namespace, then configured namespaces in order;
/// past the last slot but one they share the last ("other").
fn metric_slots(names: &[&String]) -> (HashMap<String, usize>, Vec<String>) {
    let last = crate::metrics::NAMESPACE_SLOTS - 1;
    let mut labels = vec![String::new()];
    let mut slots = HashMap::new();
    for name in names {
        let slot = labels.len().min(last);
        if slot < last {
            labels.push((*name).clone());
        }
        slots.insert((*name).clone(), slot);
    }
    if names.len() >= last {
        labels.push("other".into());
    }
    (slots, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::auth::tests::ec_pair;

    #[test]
    fn public_keys_are_read_from_pem_files() {
        let pair = ec_pair(0);
        let path =
            std::env::temp_dir().join(format!("wsrelay-hub-test-{}.pem", std::process::id()));
        std::fs::write(&path, &pair.public_pem).unwrap();
        let c = Config {
            token_ecdsa_public_key: path.to_string_lossy().into_owned(),
            ..Config::default()
        };
        let hub = Hub::new(&c).unwrap();
        std::fs::remove_file(&path).unwrap();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &serde_json::json!({"sub": "alice"}),
            &jsonwebtoken::EncodingKey::from_ec_pem(pair.private_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let claims = hub
            .verifier
            .verify_connect(&token, Hub::unix_secs())
            .unwrap();
        assert_eq!(claims.user, "alice");
        // PEM text works as well as a path.
        let c = Config {
            token_ecdsa_public_key: pair.public_pem.clone(),
            ..Config::default()
        };
        assert!(Hub::new(&c).is_ok());
    }

    #[test]
    fn a_missing_pem_file_is_a_start_error_naming_the_key() {
        let c = Config {
            token_rsa_public_key: "/nonexistent/key.pem".into(),
            ..Config::default()
        };
        let e = Hub::new(&c).err().expect("refused");
        assert_eq!(e.key, "token_rsa_public_key");
        assert!(e.reason.contains("/nonexistent/key.pem"), "{}", e.reason);
    }

    #[test]
    fn namespace_metric_slots_are_bounded() {
        let names: Vec<String> = (0..40).map(|i| format!("ns{i}")).collect();
        let refs: Vec<&String> = names.iter().collect();
        let (slots, labels) = metric_slots(&refs);
        assert_eq!(labels.len(), crate::metrics::NAMESPACE_SLOTS);
        assert_eq!(labels[0], "");
        assert_eq!(labels.last().unwrap(), "other");
        assert_eq!(slots["ns0"], 1);
        assert_eq!(slots["ns39"], crate::metrics::NAMESPACE_SLOTS - 1);
    }
}
