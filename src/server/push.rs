//! Publication pushes for protocol subscribers, encoded once per room
//! batch and shared by every subscriber (nothing in a `pub`, `join` or
//! `leave` push depends on the receiving connection).
//!
//! A batch is one WebSocket text frame per item, back to back in one
//! shared buffer, so a subscriber that must not receive some of them (a
//! client that just recovered up to offset `n`) gets a copy of the others
//! instead of a re-encoding.
//!
//! A publication is kept (history) and carried as its *object without the
//! offset*, `{"data":D,"info":I}`: the offset is known only once the
//! channel's history lock assigns it, and a recovery re-emits the same
//! object with its offset appended (see [`with_offset`]).

use crate::protocol::{encode_header, OpCode, SharedFrame};
use crate::pubsub::history::EpochId;
use crate::pubsub::proto::write_str;
use base64::Engine as _;

/// One batch's pushes.
#[derive(Debug)]
pub struct PushBatch {
    pub frame: SharedFrame,
    pub items: Vec<PushItem>,
    /// The stream epoch (channels with history).
    pub epoch: Option<EpochId>,
    /// The permessage-deflate encoding of `frame`, made by the first
    /// worker that needs it and reused by the others.
    pub compressed: Compressed,
}

/// The compressed (permessage-deflate) encoding of a shared batch, made
/// once per process: the first worker with a compressing recipient makes
/// it (`Session::send_batch`) and leaves it here; every other worker that
/// holds the same batch (a clone of the same `Arc`) reuses it. Two workers
/// that deliver at the same moment may both make it (no worker ever waits
/// for another); the first one stored is kept.
#[derive(Debug, Default, Clone)]
pub struct Compressed(std::sync::Arc<std::sync::OnceLock<Option<SharedFrame>>>);

impl Compressed {
    /// The encoding, if a worker made it: the starting value of
    /// `Session::send_batch`'s `compressed` argument.
    pub fn get(&self) -> Option<Option<SharedFrame>> {
        self.0.get().cloned()
    }

    /// Keeps what a delivery loop made (`Some`), unless one is kept already.
    pub fn keep(&self, made: &Option<Option<SharedFrame>>) {
        if let Some(z) = made {
            if self.0.get().is_none() {
                let _ = self.0.set(z.clone());
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PushItem {
    /// End of the item's frame in `frame`.
    pub end: u32,
    /// Stream offset; 0 for items without one (join, leave, no history).
    pub offset: u64,
}

impl PushBatch {
    /// The frames of the items `keep` says yes to.
    pub fn parts<'a>(
        &'a self,
        keep: impl Fn(&PushItem) -> bool + Clone + 'a,
    ) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
        let bytes = self.frame.as_bytes();
        let starts = std::iter::once(0).chain(self.items.iter().map(|i| i.end as usize));
        self.items
            .iter()
            .zip(starts)
            .filter(move |(i, _)| keep(i))
            .map(move |(i, s)| &bytes[s..i.end as usize])
    }

    /// Offsets of the first and last item with one.
    pub fn offsets(&self) -> Option<(u64, u64)> {
        let mut it = self.items.iter().filter(|i| i.offset != 0);
        let first = it.next()?.offset;
        let last = it.next_back().map_or(first, |i| i.offset);
        Some((first, last))
    }
}

/// Writes the publication object without offset: `{"data":D}` or
/// `{"data":D,"info":I}`. `data` that is not JSON (a raw member's text or
/// binary message) is carried as a JSON string: text as is, binary as
/// base64, so every subscriber of the JSON codec can read it.
pub fn pub_object(data: &[u8], known_json: bool, info: Option<&[u8]>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"data\":");
    if known_json || serde_json::from_slice::<&serde_json::value::RawValue>(data).is_ok() {
        out.extend_from_slice(data);
    } else {
        match std::str::from_utf8(data) {
            Ok(text) => write_str(text, out),
            Err(_) => {
                out.push(b'"');
                let b64 = base64::engine::general_purpose::STANDARD.encode(data);
                out.extend_from_slice(b64.as_bytes());
                out.push(b'"');
            }
        }
    }
    if let Some(info) = info {
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info);
    }
    out.push(b'}');
}

/// The publication object of `obj` (from [`pub_object`]) with `offset`.
pub use crate::pubsub::proto::write_with_offset as with_offset;

/// Appends one text frame `{"push":{"channel":C,"<kind>":BODY}}` where the
/// body is written by `body` (the frame header is written once its length
/// is known).
pub fn push_frame(channel: &str, kind: &str, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let mut json = Vec::with_capacity(64);
    json.extend_from_slice(b"{\"push\":{\"channel\":");
    write_str(channel, &mut json);
    json.extend_from_slice(b",\"");
    json.extend_from_slice(kind.as_bytes());
    json.extend_from_slice(b"\":");
    body(&mut json);
    json.extend_from_slice(b"}}");
    let header = encode_header(true, OpCode::Text, json.len(), None);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&json);
}

/// The `{"info":I}` body of a join or leave push.
pub fn join_leave_body(info: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"info\":");
    out.extend_from_slice(info);
    out.push(b'}');
}

/// A `ClientInfo` object: `{"user":U,"client":C[,"conn_info":..][,"chan_info":..]}`.
pub fn client_info(
    user: &str,
    client: &str,
    conn_info: Option<&[u8]>,
    chan_info: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"{\"user\":");
    write_str(user, &mut out);
    out.extend_from_slice(b",\"client\":");
    write_str(client, &mut out);
    if let Some(c) = conn_info {
        out.extend_from_slice(b",\"conn_info\":");
        out.extend_from_slice(c);
    }
    if let Some(c) = chan_info {
        out.extend_from_slice(b",\"chan_info\":");
        out.extend_from_slice(c);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn compressed_is_kept_once_and_shared_by_clones() {
        let c = Compressed::default();
        let other_worker = c.clone();
        assert!(c.get().is_none(), "nothing made yet");
        c.keep(&None); // a worker without compressing receivers
        assert!(other_worker.get().is_none());
        let made = SharedFrame::encode(OpCode::Text, b"first");
        c.keep(&Some(Some(made.clone())));
        let got = other_worker.get().flatten().expect("shared");
        assert_eq!(got.as_bytes(), made.as_bytes());
        // A racing worker's later encoding does not replace it.
        other_worker.keep(&Some(Some(SharedFrame::encode(OpCode::Text, b"second"))));
        assert_eq!(c.get().flatten().unwrap().as_bytes(), made.as_bytes());
        // "Could not be made" is kept too (plain is sent).
        let d = Compressed::default();
        d.keep(&Some(None));
        assert!(matches!(d.clone().get(), Some(None)));
    }

    use super::*;

    #[test]
    fn raw_payloads_become_json_data() {
        let mut o = Vec::new();
        pub_object(br#"{"a":1}"#, false, None, &mut o);
        assert_eq!(o, br#"{"data":{"a":1}}"#);
        o.clear();
        pub_object(b"hello \"x\"", false, None, &mut o);
        assert_eq!(o, br#"{"data":"hello \"x\""}"#);
        o.clear();
        pub_object(
            &[0xff, 0x00],
            false,
            Some(br#"{"user":"u","client":"c"}"#),
            &mut o,
        );
        assert_eq!(o, br#"{"data":"/wA=","info":{"user":"u","client":"c"}}"#);
    }

    #[test]
    fn offsets_are_appended_to_the_object() {
        let mut o = Vec::new();
        with_offset(br#"{"data":1}"#, 7, &mut o);
        assert_eq!(o, br#"{"data":1,"offset":7}"#);
        o.clear();
        with_offset(br#"{"data":1}"#, 0, &mut o);
        assert_eq!(o, br#"{"data":1}"#);
    }

    #[test]
    fn push_frames_are_text_frames_and_filterable() {
        let mut bytes = Vec::new();
        let mut items = Vec::new();
        for off in [3u64, 4] {
            push_frame("chat:a", "pub", &mut bytes, |b| {
                with_offset(b"{\"data\":1}", off, b)
            });
            items.push(PushItem {
                end: bytes.len() as u32,
                offset: off,
            });
        }
        let batch = PushBatch {
            frame: SharedFrame::from_vec(bytes),
            items,
            epoch: None,
            compressed: Compressed::default(),
        };
        assert_eq!(batch.offsets(), Some((3, 4)));
        let parts: Vec<&[u8]> = batch.parts(|i| i.offset > 3).collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0][0], 0x81);
        assert_eq!(
            &parts[0][2..],
            br#"{"push":{"channel":"chat:a","pub":{"data":1,"offset":4}}}"#
        );
    }
}
