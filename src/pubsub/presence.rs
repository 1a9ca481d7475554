//! Channel presence (Centrifugo client protocol v2 `presence` and
//! `presence_stats`), sans-IO: time comes in as `now_ms`. Not wired into the
//! engine yet.
//!
//! A channel's presence is the set of clients subscribed to it, keyed by
//! client id, each with its [`ClientInfo`]. Joining again with a client id
//! that is already present replaces its info and refreshes it (an upsert,
//! as Centrifugo's `AddPresence` is), so a caller may re-join instead of
//! remembering whether a join happened.
//!
//! Users: several clients (tabs, devices) may belong to one user, so each
//! channel also counts clients per user id. That gives
//! [`PresenceStats::num_users`] without a scan, and the
//! [`JoinOutcome::first_for_user`] / [`LeaveOutcome::last_for_user`] flags
//! for apps that want join/leave pushes per user rather than per connection.
//! An empty user id (anonymous client) is counted like any other id: all
//! anonymous clients of a channel together are **one** user. That is what
//! Centrifugo does: its memory and Redis presence managers compute
//! `NumUsers` as the number of distinct `UserID` strings, `""` included
//! (centrifugal/centrifuge, `PresenceStats` of the memory hub and of
//! `RedisPresenceManager`). The flags follow the same key, so for anonymous
//! clients they say "first/last anonymous client"; a caller that wants a
//! push per anonymous connection checks `user.is_empty()` itself.
//!
//! Expiry: every entry lives `ttl_ms` after its join or last
//! [`touch`](Presence::touch) (Centrifugo's `presence_ttl`, refreshed by its
//! periodic presence update). [`Presence::expire`] removes entries that
//! were not refreshed, so a worker that dies or a leave that is lost leaves
//! no ghost behind. In one process this is a safety net; across nodes it is
//! the only thing that removes the entries of a node that went away. Until
//! the sweep reaches them, expired entries are still reported by reads.
//!
//! Concurrency: [`Presence`] is shared by all workers (`Arc<Presence>`) and
//! split into shards by channel-name hash, each a `Mutex` over its channels,
//! so joins into different channels rarely meet on one lock.
//!
//! Bounds: at most [`PresenceConfig::max_clients_per_channel`] clients per
//! channel (checked under the channel's lock, so strict) and at most
//! [`PresenceConfig::max_entries`] entries in all (an atomic reservation
//! taken before inserting, so strict too). An empty channel is removed from
//! its map at once, so memory follows the live entries, plus the expiry
//! index, which is compacted when stale items outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};

use super::sharded::Sharded;

#[cfg(test)]
mod tests;

/// What presence reports about one client (Centrifugo's `ClientInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client (connection) id, unique per connection.
    pub client: Arc<str>,
    /// User id; empty for an anonymous client.
    pub user: Arc<str>,
    /// Connection info from the connection token or proxy, raw JSON.
    pub conn_info: Option<Arc<[u8]>>,
    /// Channel info from the subscription token or proxy, raw JSON.
    pub chan_info: Option<Arc<[u8]>>,
}

/// Process-wide settings.
#[derive(Clone, Copy, Debug)]
pub struct PresenceConfig {
    /// Number of locks (rounded up to a power of two, at least 1).
    pub shards: usize,
    /// Clients per channel; 0 = no limit.
    pub max_clients_per_channel: usize,
    /// Entries over all channels; 0 = no limit.
    pub max_entries: usize,
    /// An entry is removed by [`Presence::expire`] this long after its join
    /// or last touch (Centrifugo's `presence_ttl`, 60 s by default).
    pub ttl_ms: u64,
}

/// Why a join was refused. The caller answers the subscribe with
/// Centrifugo's error 106 "limit exceeded" (`proto::codes` `LimitExceeded`)
/// for either: both are configured limits, and the client may retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceError {
    /// The channel already has `max_clients_per_channel` clients.
    ChannelFull,
    /// The process already holds `max_entries` entries.
    GlobalFull,
}

impl std::fmt::Display for PresenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PresenceError::ChannelFull => "presence: channel client limit reached",
            PresenceError::GlobalFull => "presence: global entry limit reached",
        })
    }
}

impl std::error::Error for PresenceError {}

/// Result of a successful [`Presence::join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// No other client of this user was present in the channel.
    pub first_for_user: bool,
}

/// Result of a [`Presence::leave`] (or an expiry) that removed an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// No other client of this user remains in the channel.
    pub last_for_user: bool,
    /// The removed entry, for the leave push.
    pub info: ClientInfo,
}

/// Centrifugo's `presence_stats` reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: usize,
    /// Distinct user ids; all anonymous clients count as one (module docs).
    pub num_users: usize,
}

/// Process-wide counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceCounters {
    /// Live entries (clients × channels).
    pub entries: usize,
    /// Channels with at least one entry.
    pub channels: usize,
    /// Entries removed by [`Presence::expire`] since start.
    pub expired: u64,
    /// Joins refused with [`PresenceError::ChannelFull`].
    pub refused_channel_full: u64,
    /// Joins refused with [`PresenceError::GlobalFull`].
    pub refused_global_full: u64,
}

struct Member {
    info: ClientInfo,
    expires_at: u64,
    /// Shard-wide join stamp: tells this entry's expiry item from the items
    /// of an earlier entry with the same client id.
    stamp: u64,
}

#[derive(Default)]
struct ChannelPresence {
    clients: HashMap<Arc<str>, Member>,
    /// Clients per user id (never 0: a user is removed with its last client).
    users: HashMap<Arc<str>, usize>,
}

impl ChannelPresence {
    fn add_user(&mut self, user: &Arc<str>) -> bool {
        let n = self.users.entry(user.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    fn remove_user(&mut self, user: &str) -> bool {
        match self.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(user);
                true
            }
            // Unreachable while the two maps are kept in step.
            None => true,
        }
    }
}

/// Expiry index item: (expires_at, stamp, channel, client).
type ExpiryItem = Reverse<(u64, u64, Arc<str>, Arc<str>)>;

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, ChannelPresence>,
    /// Min-heap with one item per live entry, plus stale items of entries
    /// that left or were re-joined (skipped when popped, dropped by
    /// [`Shard::compact`]). A touch only moves `expires_at` forward; the
    /// item is re-pushed at the new time when it comes due, so touching
    /// costs no heap work.
    expiry: BinaryHeap<ExpiryItem>,
    live: usize,
    next_stamp: u64,
}

impl Shard {
    /// Rebuilds the expiry index from the live entries once stale items
    /// outnumber them, so churn (join/leave well within the TTL) cannot grow
    /// it without bound. Amortised O(1) per leave.
    fn compact(&mut self) {
        if self.expiry.len() <= 2 * self.live + 64 {
            return;
        }
        let items: Vec<ExpiryItem> = self
            .channels
            .iter()
            .flat_map(|(ch, cp)| {
                cp.clients
                    .iter()
                    .map(|(id, m)| Reverse((m.expires_at, m.stamp, ch.clone(), id.clone())))
            })
            .collect();
        self.expiry = BinaryHeap::from(items);
    }
}

/// Presence of every channel in the process. See the module docs.
pub struct Presence {
    shards: Sharded<Shard>,
    max_per_channel: usize,
    max_entries: usize,
    ttl_ms: u64,
    entries: AtomicUsize,
    channels: AtomicUsize,
    expired: AtomicU64,
    refused_channel_full: AtomicU64,
    refused_global_full: AtomicU64,
}

impl Presence {
    pub fn new(config: PresenceConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let unlimited = |v: usize| if v == 0 { usize::MAX } else { v };
        Presence {
            shards: Sharded::new(n),
            max_per_channel: unlimited(config.max_clients_per_channel),
            max_entries: unlimited(config.max_entries),
            ttl_ms: config.ttl_ms,
            entries: AtomicUsize::new(0),
            channels: AtomicUsize::new(0),
            expired: AtomicU64::new(0),
            refused_channel_full: AtomicU64::new(0),
            refused_global_full: AtomicU64::new(0),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        // Every mutation keeps the maps, the index and the counters in step
        // before anything that can panic, which is why `Sharded` does not
        // propagate poisoning.
        self.shards.of(channel)
    }

    /// Adds `info` to `channel`, or replaces and refreshes the entry of the
    /// same client id (which never counts against the limits). The entry
    /// expires `ttl_ms` after `now_ms` unless touched.
    ///
    /// Refused with [`PresenceError::ChannelFull`] when the channel has
    /// `max_clients_per_channel` clients, or [`PresenceError::GlobalFull`]
    /// when the process holds `max_entries`; the caller maps both to
    /// Centrifugo's error 106 "limit exceeded" and does not subscribe.
    pub fn join(
        &self,
        channel: &str,
        info: ClientInfo,
        now_ms: u64,
    ) -> Result<JoinOutcome, PresenceError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let expires_at = now_ms.saturating_add(self.ttl_ms);
        let stamp = shard.next_stamp;
        let existing = shard.channels.get(channel);
        if existing.is_some_and(|cp| cp.clients.contains_key(&*info.client)) {
            shard.next_stamp += 1;
            let cp = shard.channels.get_mut(channel).expect("checked");
            let member = cp.clients.get_mut(&*info.client).expect("checked");
            let old_user = std::mem::replace(&mut member.info, info.clone()).user;
            member.expires_at = expires_at;
            member.stamp = stamp;
            let first_for_user = if old_user == info.user {
                false
            } else {
                cp.remove_user(&old_user);
                cp.add_user(&info.user)
            };
            let name = shard.channels.get_key_value(channel).expect("checked").0;
            let item = Reverse((expires_at, stamp, name.clone(), info.client));
            shard.expiry.push(item);
            shard.compact();
            return Ok(JoinOutcome { first_for_user });
        }
        if existing.map_or(0, |cp| cp.clients.len()) >= self.max_per_channel {
            self.refused_channel_full.fetch_add(1, Ordering::Relaxed);
            return Err(PresenceError::ChannelFull);
        }
        let reserved = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_entries).then_some(n + 1)
            });
        if reserved.is_err() {
            self.refused_global_full.fetch_add(1, Ordering::Relaxed);
            return Err(PresenceError::GlobalFull);
        }
        shard.next_stamp += 1;
        let (name, cp) = match shard.channels.get_key_value(channel) {
            Some((name, _)) => {
                let name = name.clone();
                let cp = shard.channels.get_mut(channel).expect("present");
                (name, cp)
            }
            None => {
                let name: Arc<str> = channel.into();
                self.channels.fetch_add(1, Ordering::Relaxed);
                let cp = shard.channels.entry(name.clone()).or_default();
                (name, cp)
            }
        };
        let first_for_user = cp.add_user(&info.user);
        let client = info.client.clone();
        cp.clients.insert(
            client.clone(),
            Member {
                info,
                expires_at,
                stamp,
            },
        );
        shard.live += 1;
        shard
            .expiry
            .push(Reverse((expires_at, stamp, name, client)));
        Ok(JoinOutcome { first_for_user })
    }

    /// Removes `client_id` from `channel`; `None` if it was not present
    /// (never joined, already left, or expired).
    pub fn leave(&self, channel: &str, client_id: &str) -> Option<LeaveOutcome> {
        let mut guard = self.shard(channel);
        let out = self.remove(&mut guard, channel, client_id);
        guard.compact();
        out
    }

    /// Removal shared by leave and expiry; the channel goes with its last
    /// client. The expiry item stays behind as a stale item.
    fn remove(&self, shard: &mut Shard, channel: &str, client_id: &str) -> Option<LeaveOutcome> {
        let cp = shard.channels.get_mut(channel)?;
        let member = cp.clients.remove(client_id)?;
        let last_for_user = cp.remove_user(&member.info.user);
        if cp.clients.is_empty() {
            shard.channels.remove(channel);
            self.channels.fetch_sub(1, Ordering::Relaxed);
        }
        shard.live -= 1;
        self.entries.fetch_sub(1, Ordering::Relaxed);
        Some(LeaveOutcome {
            last_for_user,
            info: member.info,
        })
    }

    /// Refreshes `client_id`'s entry in `channel`: it now expires `ttl_ms`
    /// after `now_ms`. `false` if it is not present (e.g. already expired):
    /// the caller may [`join`](Self::join) again, as Centrifugo's periodic
    /// presence update re-adds the entry.
    pub fn touch(&self, channel: &str, client_id: &str, now_ms: u64) -> bool {
        let mut shard = self.shard(channel);
        let member = shard
            .channels
            .get_mut(channel)
            .and_then(|cp| cp.clients.get_mut(client_id));
        match member {
            Some(m) => {
                m.expires_at = m.expires_at.max(now_ms.saturating_add(self.ttl_ms));
                true
            }
            None => false,
        }
    }

    /// The clients present in `channel` (in no particular order). At most
    /// `max_clients_per_channel` entries, copied under the lock; the info
    /// blobs are shared, not copied.
    pub fn presence(&self, channel: &str) -> Vec<ClientInfo> {
        let shard = self.shard(channel);
        shard.channels.get(channel).map_or_else(Vec::new, |cp| {
            cp.clients.values().map(|m| m.info.clone()).collect()
        })
    }

    /// Centrifugo's `presence_stats`: O(1), no scan.
    pub fn stats(&self, channel: &str) -> PresenceStats {
        let shard = self.shard(channel);
        shard
            .channels
            .get(channel)
            .map_or_else(PresenceStats::default, |cp| PresenceStats {
                num_clients: cp.clients.len(),
                num_users: cp.users.len(),
            })
    }

    /// [`expire_with`](Self::expire_with) without a hook.
    pub fn expire(&self, now_ms: u64, budget: usize) -> usize {
        self.expire_with(now_ms, budget, |_, _| {})
    }

    /// Removes entries whose expiry time is `<= now_ms`, looking at no more
    /// than `budget` index items in all (so one call never stalls a worker;
    /// call it from a timer, what is left waits for the next tick). Stale
    /// and touched items use up budget too, so the count returned (entries
    /// removed) may be below `budget` while due entries remain. Shards are
    /// visited from a rotating start so each gets its turn.
    ///
    /// `on_expired(channel, outcome)` is called for each removed entry
    /// under its shard's lock, for the leave push; it must be short and must
    /// not call back into this `Presence` (same lock: deadlock).
    pub fn expire_with(
        &self,
        now_ms: u64,
        budget: usize,
        mut on_expired: impl FnMut(&str, LeaveOutcome),
    ) -> usize {
        let mut removed = 0;
        self.shards.sweep(budget, |shard, left| {
            let mut used = 0;
            while used < left {
                match shard.expiry.peek() {
                    Some(Reverse((at, ..))) if *at <= now_ms => {}
                    _ => break,
                }
                let Reverse((_, stamp, ch, client)) = shard.expiry.pop().expect("peeked");
                used += 1;
                let current = shard
                    .channels
                    .get(&*ch)
                    .and_then(|cp| cp.clients.get(&*client))
                    .filter(|m| m.stamp == stamp)
                    .map(|m| m.expires_at);
                match current {
                    Some(at) if at <= now_ms => {
                        let out = self.remove(shard, &ch, &client).expect("present");
                        self.expired.fetch_add(1, Ordering::Relaxed);
                        removed += 1;
                        on_expired(&ch, out);
                    }
                    // Touched since: wait for the new expiry.
                    Some(at) => shard.expiry.push(Reverse((at, stamp, ch, client))),
                    // Left or re-joined: a stale item.
                    None => {}
                }
            }
            shard.compact();
            used
        });
        removed
    }

    /// Process-wide counters (atomics only, no lock).
    pub fn counters(&self) -> PresenceCounters {
        PresenceCounters {
            entries: self.entries.load(Ordering::Relaxed),
            channels: self.channels.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            refused_channel_full: self.refused_channel_full.load(Ordering::Relaxed),
            refused_global_full: self.refused_global_full.load(Ordering::Relaxed),
        }
    }
}
