//! The Lua scripts run in Redis. Each is loaded once per command
//! connection (`SCRIPT LOAD`) and called with `EVALSHA`. Key layout
//! (`P` = `redis_prefix`, `C` = channel name):
//!
//! - `P.ch.C`: the Pub/Sub channel carrying envelopes;
//! - `P.meta.C`: hash `e` (epoch), `s` (top offset) of a channel's stream;
//! - `P.stream.C`: Redis stream of envelopes, entry id `<offset>-0`;
//! - `P.pz.C`: sorted set client id -> expiry (ms, Redis clock);
//! - `P.ph.C`: hash client id -> encoded presence entry.
//!
//! Timestamps come from Redis' own `TIME`, so node clocks do not matter.

use sha1::{Digest, Sha1};

/// Publish with history, atomically: epoch created if absent (a new epoch
/// also drops a stale stream), offset incremented, envelope completed with
/// `offset.epoch`, appended to the capped stream, TTLs refreshed, PUBLISHed.
///
/// KEYS: meta, stream. ARGV: pubsub channel, envelope head, envelope tail,
/// history size, ttl ms, epoch to create if absent. Returns {offset, epoch}.
pub const PUBLISH: &str = r#"
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[1], 's', 1)
local pos = string.format('%d', offset) .. '.' .. epoch
local env = ARGV[2] .. string.char(#pos) .. pos .. ARGV[3]
redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[4], string.format('%d-0', offset), 'd', env)
redis.call('pexpire', KEYS[1], ARGV[5])
redis.call('pexpire', KEYS[2], ARGV[5])
redis.call('publish', ARGV[1], env)
return {offset, epoch}
"#;

/// History read. Creates the stream's epoch if absent (so the position it
/// reports stays valid for a later recovery), with a TTL.
///
/// KEYS: meta, stream. ARGV: since offset (entries after it), limit
/// (0 = none, -1 = all), epoch to create if absent, ttl ms of a created
/// meta. Returns {top, epoch, front offset, {envelopes...}}; front is the
/// oldest retained offset (top + 1 when none is retained).
pub const HISTORY: &str = r#"
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch, 's', 0)
  redis.call('pexpire', KEYS[1], ARGV[4])
end
local top = tonumber(redis.call('hget', KEYS[1], 's') or '0')
local front = top + 1
local first = redis.call('xrange', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then
  front = tonumber(string.match(first[1][1], '^(%d+)'))
end
local entries = {}
local limit = tonumber(ARGV[2])
if limit ~= 0 then
  local start = string.format('%d-0', tonumber(ARGV[1]) + 1)
  local r
  if limit > 0 then
    r = redis.call('xrange', KEYS[2], start, '+', 'COUNT', limit)
  else
    r = redis.call('xrange', KEYS[2], start, '+')
  end
  for _, e in ipairs(r) do
    entries[#entries + 1] = e[2][2]
  end
end
return {top, epoch, front, entries}
"#;

/// Presence add or refresh. KEYS: zset, hash. ARGV: ttl ms, client id,
/// entry. Returns 1.
pub const PRESENCE_ADD: &str = r#"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
-- The keys live as long as their longest-lived entry (nodes may differ
-- in presence_ttl): never shorten them.
for _, k in ipairs(KEYS) do
  if redis.call('pttl', k) < tonumber(ARGV[1]) then
    redis.call('pexpire', k, ARGV[1])
  end
end
return 1
"#;

/// Presence read: removes expired entries first. KEYS: zset, hash.
/// Returns the hash as {client, entry, client, entry, ...}.
pub const PRESENCE_GET: &str = r#"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', now)
for _, c in ipairs(expired) do
  redis.call('hdel', KEYS[2], c)
end
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
return redis.call('hgetall', KEYS[2])
"#;

/// Presence remove. KEYS: zset, hash. ARGV: client id. Returns 1.
pub const PRESENCE_REMOVE: &str = r#"
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"#;

/// The scripts, in `Script` index order.
pub const ALL: [&str; 5] = [
    PUBLISH,
    HISTORY,
    PRESENCE_ADD,
    PRESENCE_GET,
    PRESENCE_REMOVE,
];

/// A script's index in [`ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    Publish = 0,
    History = 1,
    PresenceAdd = 2,
    PresenceGet = 3,
    PresenceRemove = 4,
}

/// SHA1 (hex) of a script body, as `SCRIPT LOAD` and `EVALSHA` name it.
pub fn sha1_hex(body: &str) -> String {
    let d = Sha1::digest(body.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA1 of every script in [`ALL`].
pub fn shas() -> Vec<String> {
    ALL.iter().map(|s| sha1_hex(s)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha1_matches_redis() {
        // `redis-cli SCRIPT LOAD "return 1"`.
        assert_eq!(
            super::sha1_hex("return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
