use super::*;
use std::sync::Barrier;
use std::thread;

const TTL: u64 = 60_000;

fn config(per_channel: usize, global: usize) -> PresenceConfig {
    PresenceConfig {
        shards: 4,
        max_clients_per_channel: per_channel,
        max_entries: global,
        ttl_ms: TTL,
    }
}

fn presence() -> Presence {
    Presence::new(config(0, 0))
}

fn info(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
        conn_info: Some(br#"{"name":"x"}"#.as_slice().into()),
        chan_info: None,
    }
}

fn stats(clients: usize, users: usize) -> PresenceStats {
    PresenceStats {
        num_clients: clients,
        num_users: users,
    }
}

fn joined(first: bool) -> Result<JoinOutcome, PresenceError> {
    Ok(JoinOutcome {
        first_for_user: first,
    })
}

#[test]
fn join_leave_stats_count_distinct_users() {
    let p = presence();
    assert_eq!(p.join("ch", info("c1", "alice"), 0), joined(true));
    assert_eq!(p.join("ch", info("c2", "alice"), 0), joined(false));
    assert_eq!(p.join("ch", info("c3", "bob"), 0), joined(true));
    assert_eq!(p.stats("ch"), stats(3, 2));
    let mut ids: Vec<_> = p.presence("ch").iter().map(|i| i.client.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["c1".into(), "c2".into(), "c3".into()] as [Arc<str>; 3]
    );
    assert_eq!(
        p.presence("ch")[0].conn_info.as_deref(),
        Some(&br#"{"name":"x"}"#[..])
    );

    let out = p.leave("ch", "c1").expect("present");
    assert!(!out.last_for_user);
    assert_eq!(out.info, info("c1", "alice"));
    assert_eq!(p.stats("ch"), stats(2, 2));
    assert!(p.leave("ch", "c2").expect("present").last_for_user);
    assert_eq!(p.stats("ch"), stats(1, 1));
    // Another channel is independent.
    assert_eq!(p.join("other", info("c1", "alice"), 0), joined(true));
    assert_eq!(p.stats("other"), stats(1, 1));
}

#[test]
fn anonymous_clients_count_as_one_user() {
    let p = presence();
    assert_eq!(p.join("ch", info("a1", ""), 0), joined(true));
    assert_eq!(p.join("ch", info("a2", ""), 0), joined(false));
    assert_eq!(p.join("ch", info("u1", "alice"), 0), joined(true));
    assert_eq!(p.stats("ch"), stats(3, 2));
    assert!(!p.leave("ch", "a1").expect("present").last_for_user);
    assert!(p.leave("ch", "a2").expect("present").last_for_user);
    assert_eq!(p.stats("ch"), stats(1, 1));
}

#[test]
fn leave_of_unknown_client_or_channel_is_none() {
    let p = presence();
    assert_eq!(p.leave("nope", "c1"), None);
    p.join("ch", info("c1", "u"), 0).unwrap();
    assert_eq!(p.leave("ch", "c2"), None);
    assert!(p.leave("ch", "c1").is_some());
    assert_eq!(p.leave("ch", "c1"), None);
    assert!(!p.touch("ch", "c1", 0));
}

#[test]
fn empty_channels_are_removed_and_counters_follow() {
    let p = presence();
    p.join("a", info("c1", "u"), 0).unwrap();
    p.join("a", info("c2", "v"), 0).unwrap();
    p.join("b", info("c1", "u"), 0).unwrap();
    let c = p.counters();
    assert_eq!((c.entries, c.channels), (3, 2));
    p.leave("a", "c1");
    p.leave("a", "c2");
    let c = p.counters();
    assert_eq!((c.entries, c.channels), (1, 1));
    assert_eq!(p.stats("a"), stats(0, 0));
    assert!(p.presence("a").is_empty());
    p.shards
        .each(|shard| assert!(!shard.channels.contains_key("a")));
}

#[test]
fn rejoin_replaces_entry_without_counting_twice() {
    let p = Presence::new(config(1, 1));
    p.join("ch", info("c1", "alice"), 0).unwrap();
    // Same client id: an upsert, not refused by the caps.
    let mut updated = info("c1", "alice");
    updated.chan_info = Some(b"{}".as_slice().into());
    assert_eq!(p.join("ch", updated.clone(), 10), joined(false));
    assert_eq!(p.presence("ch"), vec![updated]);
    assert_eq!(p.stats("ch"), stats(1, 1));
    assert_eq!(p.counters().entries, 1);
    // A changed user moves the per-user count.
    assert_eq!(p.join("ch", info("c1", "bob"), 20), joined(true));
    assert_eq!(p.stats("ch"), stats(1, 1));
    assert!(p.leave("ch", "c1").expect("present").last_for_user);
    assert_eq!(p.counters().entries, 0);
}

#[test]
fn per_channel_cap_refuses_with_channel_full() {
    let p = Presence::new(config(2, 0));
    p.join("ch", info("c1", "u"), 0).unwrap();
    p.join("ch", info("c2", "u"), 0).unwrap();
    assert_eq!(
        p.join("ch", info("c3", "u"), 0),
        Err(PresenceError::ChannelFull)
    );
    assert_eq!(p.stats("ch"), stats(2, 1));
    // Other channels are not affected, and a leave frees a slot.
    assert!(p.join("other", info("c3", "u"), 0).is_ok());
    p.leave("ch", "c1");
    assert!(p.join("ch", info("c3", "u"), 0).is_ok());
    let c = p.counters();
    assert_eq!((c.entries, c.refused_channel_full), (3, 1));
}

#[test]
fn global_cap_refuses_with_global_full() {
    let p = Presence::new(config(0, 3));
    for (i, ch) in ["a", "b", "c"].iter().enumerate() {
        p.join(ch, info(&format!("c{i}"), "u"), 0).unwrap();
    }
    assert_eq!(
        p.join("d", info("c9", "u"), 0),
        Err(PresenceError::GlobalFull)
    );
    assert_eq!(
        p.join("a", info("c9", "u"), 0),
        Err(PresenceError::GlobalFull)
    );
    let c = p.counters();
    assert_eq!((c.entries, c.channels, c.refused_global_full), (3, 3, 2));
    // A refused join into a new channel leaves no empty channel behind.
    assert_eq!(p.stats("d"), stats(0, 0));
    p.leave("b", "c1");
    assert!(p.join("d", info("c9", "u"), 0).is_ok());
    assert_eq!(p.counters().entries, 3);
}

#[test]
fn ttl_expiry_with_touch_keeping_entries_alive() {
    let p = presence();
    p.join("ch", info("idle", "u"), 0).unwrap();
    p.join("ch", info("busy", "u"), 0).unwrap();
    p.join("other", info("idle2", ""), 1_000).unwrap();
    // Not due yet.
    assert_eq!(p.expire(TTL - 1, 100), 0);
    assert!(p.touch("ch", "busy", 30_000));
    let mut seen = Vec::new();
    let n = p.expire_with(TTL, 100, |ch, out| {
        seen.push((ch.to_owned(), out.info.client.clone(), out.last_for_user))
    });
    assert_eq!(n, 1);
    assert_eq!(seen, vec![("ch".to_owned(), "idle".into(), false)]);
    assert_eq!(p.stats("ch"), stats(1, 1));
    // Touched at 30 s: alive until 90 s; touching again keeps it alive.
    assert!(p.touch("ch", "busy", 80_000));
    assert_eq!(p.expire(100_000, 100), 1); // idle2 (due at 61 s)
    assert_eq!(p.stats("ch"), stats(1, 1));
    assert_eq!(p.expire(80_000 + TTL, 100), 1);
    assert_eq!(p.stats("ch"), stats(0, 0));
    assert!(!p.touch("ch", "busy", 200_000));
    let c = p.counters();
    assert_eq!((c.entries, c.channels, c.expired), (0, 0, 3));
}

#[test]
fn expire_respects_budget_and_skips_stale_items() {
    let p = presence();
    for i in 0..10 {
        p.join("ch", info(&format!("c{i}"), "u"), 0).unwrap();
    }
    // A client that left and came back later must not be expired by the
    // item of its first join.
    p.leave("ch", "c0");
    p.join("ch", info("c0", "u"), 50_000).unwrap();
    let mut total = 0;
    loop {
        let n = p.expire(TTL, 3);
        assert!(n <= 3);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 9);
    assert_eq!(p.stats("ch"), stats(1, 1));
    assert_eq!(p.expire(50_000 + TTL, 100), 1);
    assert_eq!(p.counters().entries, 0);
}

#[test]
fn churn_does_not_grow_the_expiry_index() {
    let p = Presence::new(PresenceConfig {
        shards: 1,
        ..config(0, 0)
    });
    p.join("ch", info("stay", "u"), 0).unwrap();
    for i in 0..10_000 {
        p.join("ch", info(&format!("c{i}"), "u"), i).unwrap();
        p.leave("ch", &format!("c{i}")).unwrap();
        p.join("ch", info("stay", "u"), i).unwrap();
    }
    let shard = p.shards.lock(0);
    assert!(shard.expiry.len() <= 2 * shard.live + 64 + 1);
}

#[test]
fn concurrent_joins_and_leaves_keep_counts_consistent() {
    const THREADS: usize = 8;
    const CLIENTS: usize = 500;
    let p = Arc::new(Presence::new(PresenceConfig {
        shards: 4,
        max_clients_per_channel: 0,
        max_entries: THREADS * CLIENTS,
        ttl_ms: TTL,
    }));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (p, barrier) = (p.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for i in 0..CLIENTS {
                    let ch = format!("ch{}", i % 7);
                    let user = format!("u{}", i % 13);
                    p.join(&ch, info(&format!("t{t}c{i}"), &user), 0).unwrap();
                    // Every other client leaves again.
                    if i % 2 == 1 {
                        p.leave(&ch, &format!("t{t}c{i}")).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total: usize = (0..7).map(|c| p.stats(&format!("ch{c}")).num_clients).sum();
    assert_eq!(total, THREADS * CLIENTS / 2);
    let c = p.counters();
    assert_eq!((c.entries, c.channels), (total, 7));
    for c in 0..7 {
        let ch = format!("ch{c}");
        let list = p.presence(&ch);
        let mut users: Vec<_> = list.iter().map(|i| i.user.clone()).collect();
        users.sort();
        users.dedup();
        assert_eq!(p.stats(&ch), stats(list.len(), users.len()));
    }
    // Everything expires; nothing is left behind.
    for _ in 0..100 {
        p.expire(TTL, 1_000);
    }
    let c = p.counters();
    assert_eq!((c.entries, c.channels), (0, 0));
}
