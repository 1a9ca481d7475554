//! Cross-worker fan-out: one bounded queue and one waker per worker
//! ([`Mesh`], shared), and each worker's end of it ([`MeshPort`]).
//!
//! A message relayed to a room with members on other workers is encoded
//! once; each such worker receives one [`WorkerMsg`] holding a reference to
//! the shared frame. Queues are bounded `crossbeam-channel`s (lock-free on
//! the fast path). When a queue is full the sender keeps the message in a
//! local overflow for that destination, and the destination counts as
//! blocked until the overflow drains:
//!
//! - a WebSocket publisher into a room with members on a blocked worker is
//!   not read (pressure reaches its TCP window instead of memory), and is
//!   resumed as soon as *its* destinations drain; other publishers are not
//!   affected;
//! - an HTTP publish into such a room is answered `503` with
//!   `Retry-After`;
//!
//! so the overflow holds at most what was already read when the block
//! began (one read's worth per publisher), never an open-ended backlog.
//!
//! Wake-ups are batched and skipped when the receiving worker is busy: a
//! worker announces that it is about to sleep (`sleeping = true`), then
//! re-checks its queue; a sender that enqueued wakes the worker only if it
//! was announced asleep. Both sides use sequentially consistent operations,
//! so either the sender sees the flag or the worker sees the message.

use super::directory::RoomShared;
use super::push::PushBatch;
use crate::protocol::SharedFrame;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;
use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::WorkerMetrics;

/// A message from one worker to another.
#[derive(Clone)]
pub enum WorkerMsg {
    /// A room batch.
    Batch(RoomBatch),
    /// A request every worker applies to its own connections (server API).
    Control(Arc<Control>),
}

/// What a room batch carries, encoded once for every worker.
#[derive(Clone)]
pub struct RoomBatch {
    pub room: Arc<RoomShared>,
    /// Raw members' frames (one or more complete frames), if any message.
    pub frame: Option<SharedFrame>,
    /// How many messages `frame` holds.
    pub messages: u64,
    /// Protocol subscribers' pushes, if the room has subscribers.
    pub push: Option<Arc<PushBatch>>,
    /// The permessage-deflate encoding of `frame`, shared by every worker
    /// the batch goes to (made once per process).
    pub compressed: crate::server::push::Compressed,
}

/// Server API requests that concern connections on every worker.
#[derive(Debug)]
pub enum Control {
    /// Disconnect a user's connections (or one client of theirs).
    Disconnect {
        user: String,
        client: Option<String>,
        /// Client ids to leave connected.
        whitelist: Vec<String>,
        code: u32,
        reason: String,
    },
    /// Unsubscribe a user's connections (or one client) from a channel.
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
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

/// Cross-worker messages handled per iteration before other work.
const INBOX_BATCH: usize = 4096;

/// One worker's end of the mesh: its inbox, what did not fit the other
/// workers' queues, and the publishers waiting for those to drain.
pub struct MeshPort {
    rx: Receiver<WorkerMsg>,
    /// Per destination worker: messages that did not fit its queue.
    overflow: Vec<VecDeque<WorkerMsg>>,
    /// Destinations with a non-empty overflow.
    blocked: u64,
    /// Workers sent to this iteration (woken before we sleep).
    wake: u64,
    /// Publishers not read until their destinations (mask) drain.
    paused: Vec<Paused>,
    /// The inbox had more than one batch's worth.
    inbox_more: bool,
}

/// A publisher waiting for destinations to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    pub key: usize,
    pub generation: u32,
    /// Destination workers it publishes to.
    pub mask: u64,
}

impl MeshPort {
    pub fn new(rx: Receiver<WorkerMsg>, workers: usize) -> MeshPort {
        MeshPort {
            rx,
            overflow: (0..workers).map(|_| VecDeque::new()).collect(),
            blocked: 0,
            wake: 0,
            paused: Vec::new(),
            inbox_more: false,
        }
    }

    /// Whether any worker in `mask` is blocked.
    pub fn is_blocked(&self, mask: u64) -> bool {
        self.blocked & mask != 0
    }

    /// Whether anything waits to be sent.
    pub fn has_blocked(&self) -> bool {
        self.blocked != 0
    }

    /// Whether the inbox was left with messages.
    pub fn inbox_more(&self) -> bool {
        self.inbox_more
    }

    /// The receiving end (for the sleep handshake).
    pub fn receiver(&self) -> &Receiver<WorkerMsg> {
        &self.rx
    }

    /// Hands `msg` (holding `count` messages) to every worker in `mask`.
    pub fn send(
        &mut self,
        mesh: &Mesh,
        mut mask: u64,
        msg: &WorkerMsg,
        count: u64,
        metrics: &WorkerMetrics,
    ) {
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if w >= self.overflow.len() {
                continue;
            }
            let msg = msg.clone();
            metrics.fanout_remote.add(count);
            self.wake |= 1 << w;
            if !self.overflow[w].is_empty() {
                self.overflow[w].push_back(msg);
                continue;
            }
            if let Err(msg) = mesh.try_send(w, msg) {
                self.overflow[w].push_back(msg);
                self.blocked |= 1 << w;
                metrics.fanout_backpressure.inc();
            }
        }
    }

    /// Remembers a publisher to resume once `mask`'s workers drain.
    pub fn pause(&mut self, key: usize, generation: u32, mask: u64) {
        self.paused.push(Paused {
            key,
            generation,
            mask,
        });
    }

    /// Moves overflow into queues that have room; puts the publishers
    /// whose destinations all drained into `resumed`.
    pub fn drain_overflow(&mut self, mesh: &Mesh, resumed: &mut Vec<Paused>) {
        let mut mask = self.blocked;
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            while let Some(msg) = self.overflow[w].pop_front() {
                if let Err(msg) = mesh.try_send(w, msg) {
                    self.overflow[w].push_front(msg);
                    break;
                }
                self.wake |= 1 << w;
            }
            if self.overflow[w].is_empty() {
                self.blocked &= !(1 << w);
            }
        }
        let blocked = self.blocked;
        self.paused.retain(|p| {
            if p.mask & blocked == 0 {
                resumed.push(*p);
                false
            } else {
                true
            }
        });
    }

    /// Takes up to a batch of messages from the inbox.
    pub fn recv_batch(&mut self, out: &mut Vec<WorkerMsg>) {
        self.inbox_more = false;
        for _ in 0..INBOX_BATCH {
            match self.rx.try_recv() {
                Ok(msg) => out.push(msg),
                Err(_) => return,
            }
        }
        self.inbox_more = true;
    }

    /// Wakes the workers sent to since the last call.
    pub fn send_wakes(&mut self, mesh: &Mesh) {
        let mut mask = std::mem::take(&mut self.wake);
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            mesh.notify(w);
        }
    }

    /// Shrinks lists a burst made large.
    pub fn release_scratch(&mut self, keep: usize) {
        for q in &mut self.overflow {
            q.shrink_to(keep);
        }
        self.paused.shrink_to(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::directory::RoomDirectory;
    use mio::{Poll, Token};

    fn raw(room: &Arc<RoomShared>, frame: &SharedFrame) -> WorkerMsg {
        WorkerMsg::Batch(RoomBatch {
            room: room.clone(),
            frame: Some(frame.clone()),
            messages: 1,
            push: None,
            compressed: Default::default(),
        })
    }

    fn frame_of(m: &WorkerMsg) -> &[u8] {
        match m {
            WorkerMsg::Batch(RoomBatch { frame: Some(f), .. }) => f.as_bytes(),
            _ => panic!("not a raw batch"),
        }
    }

    /// A mesh of `n` workers whose queues hold one message each.
    fn mesh(n: usize) -> (Mesh, Vec<Receiver<WorkerMsg>>, Vec<Poll>) {
        let polls: Vec<Poll> = (0..n).map(|_| Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Arc::new(Waker::new(p.registry(), Token(0)).unwrap()))
            .collect();
        let (mesh, rx) = Mesh::new(wakers, 1);
        (mesh, rx, polls)
    }

    #[test]
    fn a_paused_publisher_resumes_when_its_own_destinations_drain() {
        let (mesh, mut rx, _polls) = mesh(3);
        let metrics = WorkerMetrics::default();
        let dir = RoomDirectory::new(10);
        let room = dir.join("r", 0).unwrap();
        let frame = SharedFrame::encode(crate::protocol::OpCode::Text, b"x");
        let mut port = MeshPort::new(rx.remove(0), 3);
        // Fill worker 1's and worker 2's queues, then overflow both.
        for _ in 0..2 {
            port.send(&mesh, 0b110, &raw(&room, &frame), 1, &metrics);
        }
        assert!(port.is_blocked(0b010) && port.is_blocked(0b100));
        assert!(
            !port.is_blocked(0b001),
            "this worker is never a destination"
        );
        port.pause(7, 1, 0b010); // publishes only to worker 1
        port.pause(8, 1, 0b110); // publishes to both
                                 // Worker 1 drains its queue; worker 2 does not.
        while rx[0].try_recv().is_ok() {}
        let mut resumed = Vec::new();
        port.drain_overflow(&mesh, &mut resumed);
        assert_eq!(resumed.iter().map(|p| p.key).collect::<Vec<_>>(), [7]);
        assert!(!port.is_blocked(0b010));
        assert!(port.is_blocked(0b100));
        // Worker 2 drains: the other one resumes too.
        while rx[1].try_recv().is_ok() {}
        resumed.clear();
        port.drain_overflow(&mesh, &mut resumed);
        assert_eq!(resumed.iter().map(|p| p.key).collect::<Vec<_>>(), [8]);
        assert!(!port.has_blocked());
        assert_eq!(metrics.fanout_backpressure.get(), 2);
    }

    #[test]
    fn overflow_keeps_order() {
        let (mesh, mut rx, _polls) = mesh(2);
        let metrics = WorkerMetrics::default();
        let dir = RoomDirectory::new(10);
        let room = dir.join("r", 0).unwrap();
        let mut port = MeshPort::new(rx.remove(0), 2);
        for i in 0..5u8 {
            let f = SharedFrame::encode(crate::protocol::OpCode::Binary, &[i]);
            port.send(&mesh, 0b10, &raw(&room, &f), 1, &metrics);
        }
        let mut got = Vec::new();
        let mut resumed = Vec::new();
        while got.len() < 5 {
            while let Ok(m) = rx[0].try_recv() {
                got.push(*frame_of(&m).last().unwrap());
            }
            port.drain_overflow(&mesh, &mut resumed);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }
}
