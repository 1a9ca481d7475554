//! Cross-worker fan-out: one bounded queue and one waker per worker.
//!
//! A message relayed to a room with members on other workers is encoded
//! once; each such worker receives one [`WorkerMsg`] holding a reference to
//! the shared frame. Queues are bounded `crossbeam-channel`s (lock-free on
//! the fast path); when a queue is full the sender keeps the message in a
//! small local overflow and stops reading from the publishers that feed
//! it, so pressure reaches their TCP windows instead of memory.
//!
//! Wake-ups are batched and skipped when the receiving worker is busy: a
//! worker announces that it is about to sleep (`sleeping = true`), then
//! re-checks its queue; a sender that enqueued wakes the worker only if it
//! was announced asleep. Both sides use sequentially consistent operations,
//! so either the sender sees the flag or the worker sees the message.

use super::rooms::RoomShared;
use crate::protocol::SharedFrame;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

/// A message from one worker to another.
pub struct WorkerMsg {
    pub room: Arc<RoomShared>,
    /// One or more complete frames, encoded once.
    pub frame: SharedFrame,
    /// How many messages `frame` holds.
    pub messages: u64,
}

/// The way into one worker.
pub struct WorkerLink {
    sender: Sender<WorkerMsg>,
    waker: Arc<Waker>,
    sleeping: AtomicBool,
}

/// The links of every worker, shared by all of them.
pub struct Mesh {
    links: Vec<WorkerLink>,
}

impl Mesh {
    /// Builds the mesh; returns each worker's receiving end by index.
    pub fn new(wakers: Vec<Arc<Waker>>, queue_len: usize) -> (Mesh, Vec<Receiver<WorkerMsg>>) {
        let mut links = Vec::with_capacity(wakers.len());
        let mut receivers = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = crossbeam_channel::bounded(queue_len.max(1));
            links.push(WorkerLink {
                sender: tx,
                waker,
                sleeping: AtomicBool::new(false),
            });
            receivers.push(rx);
        }
        (Mesh { links }, receivers)
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Enqueues without blocking; gives the message back when full.
    pub fn try_send(&self, to: usize, msg: WorkerMsg) -> Result<(), WorkerMsg> {
        match self.links[to].sender.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => Err(m),
            // Receiver gone: the worker exited (shutdown); drop the message.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Wakes worker `to` if it announced it was going to sleep.
    pub fn notify(&self, to: usize) {
        let link = &self.links[to];
        fence(Ordering::SeqCst);
        if link.sleeping.load(Ordering::SeqCst) && link.sleeping.swap(false, Ordering::SeqCst) {
            let _ = link.waker.wake();
        }
    }

    /// Wakes worker `to` unconditionally (shutdown, control).
    pub fn wake(&self, to: usize) {
        let _ = self.links[to].waker.wake();
    }

    /// Worker `me` is about to block in `poll`: returns false if it must
    /// not, because messages are already waiting.
    pub fn prepare_sleep(&self, me: usize, rx: &Receiver<WorkerMsg>) -> bool {
        self.links[me].sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !rx.is_empty() {
            self.links[me].sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Worker `me` woke up.
    pub fn awake(&self, me: usize) {
        self.links[me].sleeping.store(false, Ordering::SeqCst);
    }

    /// Messages waiting in each worker's queue.
    pub fn depths(&self) -> Vec<usize> {
        self.links.iter().map(|l| l.sender.len()).collect()
    }
}
