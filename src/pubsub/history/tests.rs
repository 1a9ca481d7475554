use super::*;
use std::sync::{Barrier, Mutex};
use std::thread;

const OPTS: StreamOptions = StreamOptions {
    size: 100,
    ttl_ms: 10_000,
};

fn history() -> History {
    History::new(HistoryConfig {
        shards: 4,
        max_bytes: 0,
        empty_stream_ttl_ms: 1_000,
    })
}

fn p(s: &str) -> Payload {
    s.as_bytes().into()
}

fn offsets(pubs: &[Publication]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

fn publish_n(h: &History, ch: &str, n: u64, now: u64, opts: StreamOptions) -> Position {
    let mut last = None;
    for i in 0..n {
        last = Some(h.publish(ch, p(&format!("m{i}")), now, opts));
    }
    last.expect("n > 0")
}

#[test]
fn offsets_gap_free_and_fan_out_in_offset_order_across_threads() {
    const THREADS: usize = 8;
    const PER: usize = 2_000;
    let h = Arc::new(history());
    // Stands for one destination worker's MPSC queue.
    let queue = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (h, queue, barrier) = (h.clone(), queue.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let opts = StreamOptions {
                    size: THREADS * PER,
                    ttl_ms: 1_000_000,
                };
                (0..PER)
                    .map(|i| {
                        let payload = p(&format!("{t}:{i}"));
                        h.publish_with("chat", payload, 0, opts, |pos, _| {
                            queue.lock().unwrap().push(pos.offset);
                            pos.offset
                        })
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        let seen = handle.join().unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "per-thread increasing"
        );
        all.extend(seen);
    }
    all.sort_unstable();
    let n = (THREADS * PER) as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    assert_eq!(*queue.lock().unwrap(), (1..=n).collect::<Vec<_>>());
    let r = h.history("chat", None, None, false, 0).unwrap();
    assert_eq!(offsets(&r.publications), (1..=n).collect::<Vec<_>>());
    assert_eq!(r.position.offset, n);
}

#[test]
fn capped_stream_drops_oldest_and_keeps_offsets() {
    let h = history();
    let opts = StreamOptions {
        size: 3,
        ttl_ms: 10_000,
    };
    let top = publish_n(&h, "c", 5, 0, opts);
    assert_eq!(top.offset, 5);
    let r = h.history("c", None, None, false, 0).unwrap();
    assert_eq!(offsets(&r.publications), [3, 4, 5]);
    assert_eq!(&*r.publications[0].payload, b"m2");
    assert_eq!(h.stats().publications, 3);
}

#[test]
fn ttl_expiry_starts_new_epoch_and_recovery_fails() {
    let h = history();
    let old = publish_n(&h, "c", 3, 0, OPTS);
    // Still alive just before the TTL, even with a sweep.
    assert_eq!(h.expire(9_999, 100), 0);
    assert!(h.recover("c", &old, 9_999, 0).recovered);
    // Expired at 10_000 after the last publication, with or without a sweep.
    let new = h.publish("c", p("x"), 10_000, OPTS);
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let rec = h.recover("c", &old, 10_001, 0);
    assert!(!rec.recovered);
    assert!(rec.publications.is_empty(), "other epoch: nothing");
    assert_eq!(rec.position, new);
    assert_eq!(h.stats().expired_streams, 1);
}

#[test]
fn expire_sweep_is_bounded_and_removes_only_due_streams() {
    let h = history();
    for i in 0..10 {
        h.publish(&format!("c{i}"), p("x"), 0, OPTS);
    }
    h.publish("late", p("x"), 5_000, OPTS);
    assert_eq!(h.stats().streams, 11);
    let mut removed = 0;
    for _ in 0..20 {
        let r = h.expire(10_000, 3);
        assert!(r <= 3);
        removed += r;
    }
    assert_eq!(removed, 10);
    let s = h.stats();
    assert_eq!((s.streams, s.publications), (1, 1));
    assert_eq!(s.bytes, (1 + ENTRY_OVERHEAD) as u64);
    // A publish pushes the expiry later: the sweep re-queues, not removes.
    h.publish("late", p("y"), 14_000, OPTS);
    assert_eq!(h.expire(15_000, 100), 0);
    assert_eq!(h.expire(24_000, 100), 1);
}

#[test]
fn recovery_exact_after_missed() {
    let h = history();
    let seen = publish_n(&h, "c", 4, 0, OPTS);
    publish_n(&h, "c", 6, 1, OPTS);
    let rec = h.recover("c", &seen, 2, 0);
    assert!(rec.recovered);
    assert_eq!(offsets(&rec.publications), (5..=10).collect::<Vec<_>>());
    assert_eq!(rec.position.offset, 10);
    // Nothing missed.
    let rec = h.recover("c", &rec.position, 2, 0);
    assert!(rec.recovered && rec.publications.is_empty());
}

#[test]
fn recovery_with_gap_is_never_complete() {
    let h = history();
    let opts = StreamOptions {
        size: 5,
        ttl_ms: 10_000,
    };
    let seen = publish_n(&h, "c", 2, 0, opts);
    publish_n(&h, "c", 8, 0, opts); // top 10, retained 6..=10, 3..=5 gone
    let rec = h.recover("c", &seen, 0, 0);
    assert!(!rec.recovered);
    assert_eq!(offsets(&rec.publications), [6, 7, 8, 9, 10]);
    // Exactly at the edge: 5 missed, 5 retained.
    let edge = StreamPosition {
        offset: 5,
        epoch: seen.epoch.clone(),
    };
    assert!(h.recover("c", &edge, 0, 0).recovered);
}

#[test]
fn recovery_over_max_publications_is_not_complete() {
    let h = history();
    let seen = publish_n(&h, "c", 1, 0, OPTS);
    publish_n(&h, "c", 9, 0, OPTS);
    let rec = h.recover("c", &seen, 0, 4);
    assert!(!rec.recovered);
    // The newest, so they join the live stream without a hole.
    assert_eq!(offsets(&rec.publications), [7, 8, 9, 10]);
    let rec = h.recover("c", &seen, 0, 9);
    assert!(rec.recovered);
    assert_eq!(rec.publications.len(), 9);
}

#[test]
fn recovery_from_future_offset_or_empty_channel() {
    let h = history();
    let top = publish_n(&h, "c", 3, 0, OPTS);
    let future = StreamPosition {
        offset: 7,
        epoch: top.epoch.clone(),
    };
    let rec = h.recover("c", &future, 0, 0);
    assert!(!rec.recovered && rec.publications.is_empty());
    // A read on an unknown channel creates its epoch, which the first
    // publication then keeps.
    let r = h.history("new", None, Some(0), false, 0).unwrap();
    assert_eq!(r.position.offset, 0);
    let first = h.publish("new", p("a"), 10, OPTS);
    assert_eq!(first.epoch, r.position.epoch);
    let rec = h.recover("new", &r.position, 20, 0);
    assert!(rec.recovered);
    assert_eq!(offsets(&rec.publications), [1]);
}

#[test]
fn history_since_with_wrong_epoch_is_unrecoverable() {
    let h = history();
    let top = publish_n(&h, "c", 3, 0, OPTS);
    let wrong = StreamPosition {
        offset: 1,
        epoch: "other".into(),
    };
    assert_eq!(
        h.history("c", Some(&wrong), None, false, 0),
        Err(HistoryError::UnrecoverablePosition {
            position: top.clone()
        })
    );
    // An empty epoch is accepted (Centrifuge: `sinceEpoch == ""`).
    let any = StreamPosition {
        offset: 1,
        epoch: "".into(),
    };
    let r = h.history("c", Some(&any), None, false, 0).unwrap();
    assert_eq!(offsets(&r.publications), [2, 3]);
    let zero = StreamPosition {
        offset: 0,
        epoch: top.epoch.clone(),
    };
    assert_eq!(
        h.history("c", Some(&zero), None, true, 0),
        Err(HistoryError::BadRequest)
    );
}

#[test]
fn history_limit_and_reverse() {
    let h = history();
    let top = publish_n(&h, "c", 6, 0, OPTS);
    let get = |since: Option<u64>, limit, reverse| {
        let since = since.map(|offset| StreamPosition {
            offset,
            epoch: top.epoch.clone(),
        });
        let r = h.history("c", since.as_ref(), limit, reverse, 0).unwrap();
        assert_eq!(r.position, top);
        offsets(&r.publications)
    };
    assert_eq!(get(None, Some(0), false), [] as [u64; 0]);
    assert_eq!(get(Some(2), Some(0), false), [] as [u64; 0]);
    assert_eq!(get(None, None, false), [1, 2, 3, 4, 5, 6]);
    assert_eq!(get(None, Some(2), false), [1, 2]);
    assert_eq!(get(None, Some(2), true), [6, 5]);
    assert_eq!(get(None, None, true), [6, 5, 4, 3, 2, 1]);
    assert_eq!(get(Some(2), None, false), [3, 4, 5, 6]);
    assert_eq!(get(Some(2), Some(2), false), [3, 4]);
    assert_eq!(get(Some(6), None, false), [] as [u64; 0]);
    assert_eq!(get(Some(4), None, true), [3, 2, 1]);
    assert_eq!(get(Some(4), Some(2), true), [3, 2]);
    assert_eq!(get(Some(9), Some(2), true), [6, 5]);
}

#[test]
fn global_cap_evicts_oldest_in_shard_and_recovery_reports_it() {
    // One shard so the whole budget is one pool: 4 entries of 10 bytes.
    let h = History::new(HistoryConfig {
        shards: 1,
        max_bytes: 4 * (10 + ENTRY_OVERHEAD),
        empty_stream_ttl_ms: 1_000,
    });
    let ten = || Payload::from(&b"0123456789"[..]);
    let a1 = h.publish("a", ten(), 0, OPTS);
    h.publish("b", ten(), 0, OPTS);
    h.publish("a", ten(), 0, OPTS);
    h.publish("b", ten(), 0, OPTS);
    assert_eq!(h.stats().cap_evictions, 0);
    let a3 = h.publish("a", ten(), 0, OPTS); // evicts a:1, the oldest
    let s = h.stats();
    assert_eq!((s.cap_evictions, s.publications), (1, 4));
    assert!(s.bytes <= 4 * (10 + ENTRY_OVERHEAD) as u64);
    assert_eq!(a3.offset, 3, "eviction does not touch offsets");
    assert_eq!(a3.epoch, a1.epoch, "nor epochs");
    let since0 = StreamPosition {
        offset: 0,
        epoch: a1.epoch.clone(),
    };
    let rec = h.recover("a", &since0, 0, 0);
    assert!(!rec.recovered);
    assert_eq!(offsets(&rec.publications), [2, 3]);
    assert!(h.recover("a", &a1, 0, 0).recovered);
    // Larger than the whole budget: empties the shard, nothing retained.
    let big: Payload = vec![0u8; 200].into();
    let top = h.publish("b", big, 0, OPTS);
    assert_eq!(top.offset, 3);
    assert_eq!(h.stats().bytes, 0);
    assert!(h
        .history("b", None, None, false, 0)
        .unwrap()
        .publications
        .is_empty());
}

#[test]
fn epochs_are_distinct_short_strings() {
    let h = history();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let (e, _) = h.new_epoch();
        assert_eq!(e.as_str().len(), 13);
        assert!(seen.insert(e));
    }
}

// ---- live publications during a recovery ----

/// Pre-existing history `1..=pre`, client saw `seen`; then publications
/// `pre+1..=total` each go to the history and to the subscriber's queue.
/// The snapshot is read after `k` of them were published and after `d` of
/// them reached the subscriber's merge (`d <= k`: a publication reaches the
/// queue only once it is appended; the queue is FIFO). Every (k, d) must
/// give the client exactly `seen+1..=total`, in order, once.
#[test]
fn live_merge_no_loss_no_dup_under_all_interleavings() {
    let (pre, seen, total) = (3u64, 1u64, 9u64);
    let live = total - pre;
    for k in 0..=live {
        for d in 0..=k {
            let h = history();
            let first = publish_n(&h, "c", pre, 0, OPTS);
            let since = StreamPosition {
                offset: seen,
                epoch: first.epoch.clone(),
            };
            let mut merge = RecoveryMerge::new(); // registered as subscriber
            let mut queue = std::collections::VecDeque::new();
            let mut got = Vec::new();
            let publish = |queue: &mut std::collections::VecDeque<_>| {
                h.publish_with("c", p("x"), 0, OPTS, |pos, _| queue.push_back(pos.clone()));
            };
            for _ in 0..k {
                publish(&mut queue);
            }
            for _ in 0..d {
                let pos = queue.pop_front().unwrap();
                assert_eq!(merge.on_live(&pos, pos.offset), LiveStep::Buffered);
            }
            let rec = h.recover("c", &since, 0, 0);
            assert!(rec.recovered);
            got.extend(offsets(&rec.publications));
            got.extend(merge.on_snapshot(&rec.position).unwrap());
            for _ in k..live {
                publish(&mut queue);
            }
            while let Some(pos) = queue.pop_front() {
                match merge.on_live(&pos, pos.offset) {
                    LiveStep::Deliver(o) => got.push(o),
                    LiveStep::Skip => {}
                    other => panic!("k={k} d={d}: {other:?}"),
                }
            }
            assert_eq!(got, (seen + 1..=total).collect::<Vec<_>>(), "k={k} d={d}");
            assert_eq!(merge.next_offset(), Some(total + 1));
        }
    }
}

fn at(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.into(),
    }
}

#[test]
fn live_merge_sorts_and_dedups_the_buffer() {
    let mut m = RecoveryMerge::new();
    for o in [7, 5, 6, 5, 8, 4] {
        assert_eq!(m.on_live(&at(o, "e"), o), LiveStep::Buffered);
    }
    assert_eq!(m.on_snapshot(&at(4, "e")), Ok(vec![5, 6, 7, 8]));
    assert_eq!(m.on_live(&at(8, "e"), 8), LiveStep::Skip);
    assert_eq!(m.on_live(&at(9, "e"), 9), LiveStep::Deliver(9));
    assert_eq!(m.on_snapshot(&at(9, "e")), Err(Insufficient));
}

#[test]
fn live_merge_detects_holes_and_epoch_changes() {
    // A hole between the snapshot top and the buffer.
    let mut m = RecoveryMerge::new();
    m.on_live(&at(7, "e"), 7);
    assert_eq!(m.on_snapshot(&at(5, "e")), Err(Insufficient));
    assert_eq!(m.on_live(&at(8, "e"), 8), LiveStep::Insufficient);
    // Buffered from another epoch.
    let mut m = RecoveryMerge::new();
    m.on_live(&at(1, "old"), 1);
    assert_eq!(m.on_snapshot(&at(0, "e")), Err(Insufficient));
    // A hole after going live, then everything is refused.
    let mut m = RecoveryMerge::<u64>::new();
    assert_eq!(m.on_snapshot(&at(5, "e")), Ok(vec![]));
    assert_eq!(m.on_live(&at(7, "e"), 7), LiveStep::Insufficient);
    assert_eq!(m.on_live(&at(6, "e"), 6), LiveStep::Insufficient);
    // The stream restarted after the snapshot.
    let mut m = RecoveryMerge::new();
    assert_eq!(m.on_snapshot(&at(5, "e")), Ok(vec![]));
    assert_eq!(m.on_live(&at(1, "f"), 1), LiveStep::Insufficient);
}
