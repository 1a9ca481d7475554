//! The process-wide room directory.
//!
//! The [`RoomDirectory`] maps a room name to a shared [`RoomShared`] whose
//! atomic bitmask says which workers currently have members. It is locked
//! only when a worker's local membership of a room goes from zero to one or
//! back (join/leave edges), never per message: a publishing worker reads
//! the bitmask of a room it already holds with one atomic load to learn
//! which other workers to hand the message to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most workers the bitmask can name.
pub const MAX_WORKERS: usize = 64;

/// One room as seen by every worker.
#[derive(Debug)]
pub struct RoomShared {
    pub id: u64,
    pub name: Box<str>,
    /// Bit `w` set while worker `w` has at least one member.
    workers: AtomicU64,
    /// Protocol subscribers on every worker: publishers encode pushes only
    /// while there are some.
    subscribers: AtomicU32,
}

impl RoomShared {
    /// Protocol subscribers on all workers.
    pub fn subscribers(&self) -> u32 {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// One more or one fewer protocol subscriber.
    pub fn count_subscriber(&self, joined: bool) {
        if joined {
            self.subscribers.fetch_add(1, Ordering::SeqCst);
        } else {
            self.subscribers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Workers with members, as a bitmask.
    pub fn worker_mask(&self) -> u64 {
        self.workers.load(Ordering::Acquire)
    }
}

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    /// `max_rooms` rooms exist already.
    TooManyRooms,
}

#[derive(Default)]
struct DirectoryInner {
    rooms: HashMap<Box<str>, Arc<RoomShared>>,
    next_id: u64,
}

/// The process-wide room directory.
pub struct RoomDirectory {
    inner: Mutex<DirectoryInner>,
    max_rooms: usize,
}

impl RoomDirectory {
    pub fn new(max_rooms: usize) -> Self {
        RoomDirectory {
            inner: Mutex::new(DirectoryInner::default()),
            max_rooms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, DirectoryInner> {
        // A panic elsewhere must not take the directory down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `worker` gets its first member of `name`.
    pub fn join(&self, name: &str, worker: usize) -> Result<Arc<RoomShared>, JoinError> {
        let mut inner = self.lock();
        if let Some(room) = inner.rooms.get(name) {
            room.workers.fetch_or(1 << worker, Ordering::AcqRel);
            return Ok(room.clone());
        }
        if inner.rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        inner.next_id += 1;
        let room = Arc::new(RoomShared {
            id: inner.next_id,
            name: name.into(),
            workers: AtomicU64::new(1 << worker),
            subscribers: AtomicU32::new(0),
        });
        inner.rooms.insert(name.into(), room.clone());
        Ok(room)
    }

    /// Worker `worker` lost its last member of `room`; the room is removed
    /// when no worker has members.
    pub fn leave(&self, room: &RoomShared, worker: usize) {
        let mut inner = self.lock();
        let left = room.workers.fetch_and(!(1 << worker), Ordering::AcqRel) & !(1 << worker);
        if left == 0 {
            if let Some(r) = inner.rooms.get(&*room.name) {
                if r.id == room.id {
                    inner.rooms.remove(&*room.name);
                }
            }
        }
    }

    /// The room by name, if it exists (for HTTP publish).
    pub fn get(&self, name: &str) -> Option<Arc<RoomShared>> {
        self.lock().rooms.get(name).cloned()
    }

    /// Every room name with the workers that have members (server API
    /// `channels`).
    pub fn names(&self) -> Vec<Arc<RoomShared>> {
        self.lock().rooms.values().cloned().collect()
    }

    /// Rooms open now.
    pub fn len(&self) -> usize {
        self.lock().rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Valid room name: a channel name of 1..=max bytes, `[A-Za-z0-9._~-]`
/// with an optional `namespace:` prefix (the pub/sub grammar without the
/// private `$` and user-limited `#` markers, which raw members cannot
/// use: they carry no identity).
pub fn valid_room_name(name: &str, max: usize) -> bool {
    crate::pubsub::channel::ChannelName::parse(name, max)
        .is_ok_and(|c| !c.is_private() && !c.is_user_limited())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_tracks_workers_and_removes_empty_rooms() {
        let d = RoomDirectory::new(10);
        let a0 = d.join("a", 0).unwrap();
        let a1 = d.join("a", 1).unwrap();
        assert_eq!(a0.id, a1.id);
        assert_eq!(a0.worker_mask(), 0b11);
        assert_eq!(d.len(), 1);
        d.leave(&a0, 0);
        assert_eq!(a1.worker_mask(), 0b10);
        assert_eq!(d.len(), 1);
        d.leave(&a1, 1);
        assert_eq!(d.len(), 0);
        assert!(d.get("a").is_none());
        // A new room of the same name is a new room.
        let again = d.join("a", 0).unwrap();
        assert_ne!(again.id, a0.id);
    }

    #[test]
    fn max_rooms_is_enforced() {
        let d = RoomDirectory::new(2);
        d.join("a", 0).unwrap();
        d.join("b", 0).unwrap();
        assert_eq!(d.join("c", 0).unwrap_err(), JoinError::TooManyRooms);
        // Joining an existing room is still fine.
        assert!(d.join("a", 1).is_ok());
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("chat.general_1~-x", 128));
        assert!(valid_room_name(&"a".repeat(128), 128));
        assert!(!valid_room_name(&"a".repeat(129), 128));
        assert!(!valid_room_name("", 128));
        assert!(!valid_room_name("a/b", 128));
        assert!(valid_room_name("chat:room-1", 128));
        assert!(!valid_room_name(":x", 128));
        assert!(!valid_room_name("$secret", 128));
        assert!(!valid_room_name("dialog#a,b", 128));
        assert!(!valid_room_name("a%20b", 128));
        assert!(!valid_room_name("é", 128));
    }
}
