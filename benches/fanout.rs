//! Criterion benches for the fan-out hot path, without sockets: a broadcast
//! is encoded once (`SharedFrame::encode`), enqueued by reference to N local
//! subscribers' `OutboundQueue`s (`try_push_shared`), and every queue is
//! flushed into a writer so it is drained each iteration (the relay's
//! end-of-iteration `writev`, minus the system call).
//!
//! - `fanout_single/sink/N`: one 64 B message to N subscribers, flushed into
//!   `std::io::sink()` (no copy: the user-space cost alone).
//! - `fanout_single/vec/N`: the same, flushed into a reused `Vec` (the bytes
//!   are copied once per subscriber, as the kernel's copy into a socket would).
//! - `fanout_batch16/sink/N`: 16 concatenated 64 B frames shared as one
//!   buffer (`SharedFrame::from_encoded`), what the relay builds when a room
//!   received 16 messages in one loop iteration; enqueued to N and flushed.
//!
//! Throughput is set to N (single) or 16·N (batch) elements, so criterion's
//! "elements/s" is subscriber-deliveries per second; per-subscriber ns =
//! median / N (docs/benchmarks.md).
//!
//! Run (figures in docs/benchmarks.md):
//!   taskset -c 1 cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 3

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{self, Write};
use wsrelay::protocol::{OpCode, SharedFrame};
use wsrelay::server::outbound::{Flush, OutboundQueue};

const SUBSCRIBERS: [usize; 4] = [1, 100, 1000, 10_000];
const PAYLOAD: usize = 64;
const BATCH: usize = 16;
/// The relay's default `max_outbound_bytes`.
const LIMIT: usize = 1 << 20;

/// A writer that keeps only the last write's bytes: every flushed byte is
/// copied once, the buffer is reused (no growth across iterations).
struct CopySink(Vec<u8>);

impl Write for CopySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.clear();
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.clear();
        for b in bufs {
            self.0.extend_from_slice(b);
        }
        Ok(self.0.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i * 7) as u8).collect()
}

fn enqueue_and_flush<W: Write>(queues: &mut [OutboundQueue], frame: &SharedFrame, w: &mut W) {
    for q in queues.iter_mut() {
        let ok = q.try_push_shared(frame, LIMIT);
        debug_assert!(ok);
    }
    for q in queues.iter_mut() {
        let (outcome, _) = q.flush(w).expect("flush into an in-memory writer");
        debug_assert_eq!(outcome, Flush::Done);
    }
}

fn fanout_single(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_single");
    let payload = payload();
    for &n in &SUBSCRIBERS {
        g.throughput(Throughput::Elements(n as u64));
        let mut queues: Vec<OutboundQueue> = (0..n).map(|_| OutboundQueue::new()).collect();
        g.bench_with_input(BenchmarkId::new("sink", n), &n, |b, _| {
            let mut sink = io::sink();
            b.iter(|| {
                let frame = SharedFrame::encode(OpCode::Binary, black_box(&payload));
                enqueue_and_flush(&mut queues, &frame, &mut sink);
            })
        });
        g.bench_with_input(BenchmarkId::new("vec", n), &n, |b, _| {
            let mut w = CopySink(Vec::with_capacity(4096));
            b.iter(|| {
                let frame = SharedFrame::encode(OpCode::Binary, black_box(&payload));
                enqueue_and_flush(&mut queues, &frame, &mut w);
                black_box(w.0.len());
            })
        });
    }
    g.finish();
}

fn fanout_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_batch16");
    let payload = payload();
    // 16 complete 64 B frames back to back (66 B each): what a room's batch
    // buffer holds after 16 messages in one loop iteration.
    let mut encoded = Vec::new();
    for _ in 0..BATCH {
        encoded.extend_from_slice(SharedFrame::encode(OpCode::Binary, &payload).as_bytes());
    }
    for &n in &SUBSCRIBERS {
        g.throughput(Throughput::Elements((n * BATCH) as u64));
        let mut queues: Vec<OutboundQueue> = (0..n).map(|_| OutboundQueue::new()).collect();
        g.bench_with_input(BenchmarkId::new("sink", n), &n, |b, _| {
            let mut sink = io::sink();
            b.iter(|| {
                let frame = SharedFrame::from_encoded(black_box(&encoded));
                enqueue_and_flush(&mut queues, &frame, &mut sink);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout_single, fanout_batch);
criterion_main!(benches);
