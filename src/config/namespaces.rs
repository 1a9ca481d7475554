//! Channel options and namespaces (`[[namespaces]]` in the TOML file).
//!
//! A channel option is an ordinary key of the table in `keys.rs` (so it
//! has a flag, a variable, a range and a docs row); set at the top level it
//! applies to channels without a namespace, as in Centrifugo v4. A
//! namespace is a table with a `name` and any channel option keys; keys it
//! does not set keep their defaults (not the top-level values), again as
//! in Centrifugo. Each namespace table is read by the same key table, so
//! there is no second list of option names to keep in step.

use std::time::Duration;

use toml::Value;

use super::values::{Bound, Kind};
use super::Config;

/// Keys that are channel options (valid in a namespace table).
pub(crate) const CHANNEL_OPTION_KEYS: &[&str] = &[
    "history_size",
    "history_ttl",
    "force_recovery",
    "force_positioning",
    "presence",
    "join_leave",
    "allow_subscribe_for_client",
    "allow_subscribe_for_anonymous",
    "allow_publish_for_subscriber",
    "allow_publish_for_client",
    "allow_publish_for_anonymous",
    "allow_history_for_subscriber",
    "allow_history_for_client",
    "allow_presence_for_subscriber",
    "allow_presence_for_client",
    "allow_user_limited_channels",
];

/// What a channel allows and keeps. Field names are the config keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub history_size: usize,
    pub history_ttl: Duration,
    pub force_recovery: bool,
    pub force_positioning: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_user_limited_channels: bool,
}

impl ChannelOptions {
    /// The channel options of a config (its top-level keys).
    pub fn of(c: &Config) -> ChannelOptions {
        ChannelOptions {
            history_size: c.history_size,
            history_ttl: c.history_ttl,
            force_recovery: c.force_recovery,
            force_positioning: c.force_positioning,
            presence: c.presence,
            join_leave: c.join_leave,
            allow_subscribe_for_client: c.allow_subscribe_for_client,
            allow_subscribe_for_anonymous: c.allow_subscribe_for_anonymous,
            allow_publish_for_subscriber: c.allow_publish_for_subscriber,
            allow_publish_for_client: c.allow_publish_for_client,
            allow_publish_for_anonymous: c.allow_publish_for_anonymous,
            allow_history_for_subscriber: c.allow_history_for_subscriber,
            allow_history_for_client: c.allow_history_for_client,
            allow_presence_for_subscriber: c.allow_presence_for_subscriber,
            allow_presence_for_client: c.allow_presence_for_client,
            allow_user_limited_channels: c.allow_user_limited_channels,
        }
    }

    /// Sets a config's top-level channel options to these.
    fn apply(&self, c: &mut Config) {
        c.history_size = self.history_size;
        c.history_ttl = self.history_ttl;
        c.force_recovery = self.force_recovery;
        c.force_positioning = self.force_positioning;
        c.presence = self.presence;
        c.join_leave = self.join_leave;
        c.allow_subscribe_for_client = self.allow_subscribe_for_client;
        c.allow_subscribe_for_anonymous = self.allow_subscribe_for_anonymous;
        c.allow_publish_for_subscriber = self.allow_publish_for_subscriber;
        c.allow_publish_for_client = self.allow_publish_for_client;
        c.allow_publish_for_anonymous = self.allow_publish_for_anonymous;
        c.allow_history_for_subscriber = self.allow_history_for_subscriber;
        c.allow_history_for_client = self.allow_history_for_client;
        c.allow_presence_for_subscriber = self.allow_presence_for_subscriber;
        c.allow_presence_for_client = self.allow_presence_for_client;
        c.allow_user_limited_channels = self.allow_user_limited_channels;
    }

    /// Whether publications are kept (and carry offsets).
    pub fn has_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// History settings that cannot work, as a message.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return Err("history_size is set but history_ttl is 0: set both (e.g. history_ttl = \"300s\") or neither".into());
        }
        if self.history_size == 0 && !self.history_ttl.is_zero() {
            return Err("history_ttl is set but history_size is 0: set both or neither".into());
        }
        if self.force_recovery && !self.has_history() {
            return Err("force_recovery needs history (history_size and history_ttl)".into());
        }
        Ok(())
    }
}

/// One `[[namespaces]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub options: ChannelOptions,
}

impl Namespace {
    /// The table form: `name` and the options that differ from the defaults.
    fn to_table(&self) -> toml::Table {
        let mut c = Config::default();
        self.options.apply(&mut c);
        let defaults = Config::default().entries();
        let mut t = toml::Table::new();
        t.insert("name".into(), Value::String(self.name.clone()));
        for ((key, v), (_, d)) in c.entries().into_iter().zip(defaults) {
            if CHANNEL_OPTION_KEYS.contains(&key) && v != d {
                t.insert(key.into(), v);
            }
        }
        t
    }
}

impl Bound for Vec<Namespace> {}

/// The kind of the `namespaces` key: an array of tables in TOML; on a flag
/// or in the environment the same array in TOML inline syntax
/// (`[{name = "chat", presence = true}]`).
pub(crate) struct Namespaces;

/// Namespace names: what Centrifugo allows (`^[-a-zA-Z0-9_.]{2,}$`).
fn valid_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn read_namespace(i: usize, v: &Value) -> Result<Namespace, String> {
    let Value::Table(table) = v else {
        return Err(format!("namespaces[{i}] must be a table"));
    };
    let name = match table.get("name") {
        Some(Value::String(s)) if valid_name(s) => s.clone(),
        Some(Value::String(s)) => {
            return Err(format!(
                "namespaces[{i}]: invalid name {s:?} (2 to 64 of a-z A-Z 0-9 - _ .)"
            ))
        }
        _ => return Err(format!("namespaces[{i}] needs a `name` string")),
    };
    let mut scratch = Config::default();
    for (key, value) in table {
        if key == "name" {
            continue;
        }
        if !CHANNEL_OPTION_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "namespace {name:?}: {key:?} is not a channel option (allowed: name, {})",
                CHANNEL_OPTION_KEYS.join(", ")
            ));
        }
        match scratch.set_toml(key, value) {
            Some(Ok(())) => {}
            Some(Err(m)) => return Err(format!("namespace {name:?}: key {key:?}: {m}")),
            None => return Err(format!("namespace {name:?}: unknown key {key:?}")),
        }
    }
    scratch
        .check_keys()
        .map_err(|e| format!("namespace {name:?}: {e}"))?;
    let options = ChannelOptions::of(&scratch);
    options
        .check()
        .map_err(|m| format!("namespace {name:?}: {m}"))?;
    Ok(Namespace { name, options })
}

impl Kind for Namespaces {
    type Value = Vec<Namespace>;
    const TYPE: &'static str = "namespaces";
    const VALUE_NAME: &'static str = "TOML-ARRAY";
    fn parse(s: &str) -> Result<Vec<Namespace>, String> {
        let doc: toml::Table = format!("namespaces = {s}")
            .parse()
            .map_err(|e: toml::de::Error| format!("invalid namespaces array: {}", e.message()))?;
        Self::from_toml(&doc["namespaces"])
    }
    fn from_toml(v: &Value) -> Result<Vec<Namespace>, String> {
        let Value::Array(items) = v else {
            return Err("expected an array of tables ([[namespaces]])".into());
        };
        let mut out: Vec<Namespace> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ns = read_namespace(i, item)?;
            if out.iter().any(|n| n.name == ns.name) {
                return Err(format!("namespace {:?} is defined twice", ns.name));
            }
            out.push(ns);
        }
        Ok(out)
    }
    fn to_toml(v: &Vec<Namespace>) -> Value {
        Value::Array(v.iter().map(|n| Value::Table(n.to_table())).collect())
    }
    fn show(v: &Vec<Namespace>) -> String {
        if v.is_empty() {
            return "[]".into();
        }
        Self::to_toml(v).to_string()
    }
}

impl Config {
    /// The options of channels in `namespace` ("" = no namespace), or
    /// `None` for a namespace that is not configured.
    pub fn channel_options(&self, namespace: &str) -> Option<ChannelOptions> {
        if namespace.is_empty() {
            return Some(ChannelOptions::of(self));
        }
        self.namespaces
            .iter()
            .find(|n| n.name == namespace)
            .map(|n| n.options.clone())
    }
}

/// A namespace list that differs per `tag` (config layer tests).
#[cfg(test)]
pub(crate) fn test_namespaces(tag: &str) -> Vec<Namespace> {
    vec![Namespace {
        name: format!("ns-{tag}"),
        options: ChannelOptions {
            presence: true,
            history_size: 5,
            history_ttl: Duration::from_secs(30),
            ..ChannelOptions::default()
        },
    }]
}
