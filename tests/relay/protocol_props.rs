//! Property tests for the sans-IO protocol core (`src/protocol`).
//!
//! (a) round trip: arbitrary messages, fragmented arbitrarily, with
//!     ping/pong frames interleaved, encoded (masked in client mode) and fed
//!     to `FrameDecoder` + `MessageAssembler` in arbitrary chunkings come out
//!     identical, control frames in order;
//! (b) byte soup never panics and never makes the decoder or the assembler
//!     buffer more than their limits;
//! (c) `parse_request` decides the same whatever the chunking;
//! (d) incremental UTF-8 validation agrees with `std::str::from_utf8`.
//!
//! Case counts can be raised with `PROPTEST_CASES=N`.
//!
//! Saved failure seeds live next to this file, in
//! `protocol_props.proptest-regressions` (see [`config`]).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wsrelay::protocol::utf8::Utf8Validator;
use wsrelay::protocol::{
    encode_client_frame, encode_frame, parse_request, CloseCode, Event, FrameDecoder,
    HandshakeLimits, MessageAssembler, MessageKind, OpCode, ParsedRequest, ProtocolError, Role,
};

/// Case count: `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // Inputs are large; shrinking a failure still works, just bounded.
        max_shrink_iters: 2048,
        // Seeds are saved next to the source file. proptest's default
        // (`SourceParallel`) would look for
        // `tests/proptest-regressions/protocol_props.txt` now that this is a
        // module of a test binary whose directory holds a `main.rs`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Chunking: how the bytes arrive from the socket.

#[derive(Clone, Debug)]
enum Chunking {
    /// Everything in one read.
    Whole,
    /// One byte per read.
    Bytewise,
    /// Reads of these sizes, cycled.
    Sizes(Vec<usize>),
}

fn chunking(max_chunk: usize) -> impl Strategy<Value = Chunking> {
    prop_oneof![
        1 => Just(Chunking::Whole),
        1 => Just(Chunking::Bytewise),
        3 => prop::collection::vec(1usize..=16, 1..8).prop_map(Chunking::Sizes),
        2 => prop::collection::vec(1usize..=1024, 1..8).prop_map(Chunking::Sizes),
        2 => prop::collection::vec(1usize..=max_chunk, 1..8).prop_map(Chunking::Sizes),
    ]
}

fn split<'a>(data: &'a [u8], plan: &Chunking) -> Vec<&'a [u8]> {
    match plan {
        Chunking::Whole => vec![data],
        Chunking::Bytewise => data.chunks(1).collect(),
        Chunking::Sizes(sizes) => {
            let mut out = Vec::new();
            let mut rest = data;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].clamp(1, rest.len());
                out.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------
// A server-like receive path: an accumulation buffer, decode as many frames
// as possible from its front, hand them to the assembler, drain.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

struct Receiver {
    decoder: FrameDecoder,
    assembler: MessageAssembler,
    max_message_bytes: usize,
    acc: Vec<u8>,
    out: Vec<Out>,
    frames: usize,
}

impl Receiver {
    fn new(role: Role, max_frame_bytes: usize, max_message_bytes: usize) -> Self {
        Receiver {
            decoder: FrameDecoder::new(role, max_frame_bytes),
            assembler: MessageAssembler::new(max_message_bytes),
            max_message_bytes,
            acc: Vec::new(),
            out: Vec::new(),
            frames: 0,
        }
    }

    /// One read: append, decode everything complete, drain what was used.
    /// Checks the invariants every frame and event must satisfy.
    fn push(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        self.acc.extend_from_slice(chunk);
        let mut pos = 0;
        let result = loop {
            let frame = match self.decoder.decode(&mut self.acc[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            self.frames += 1;
            let h = frame.header;
            assert_eq!(frame.consumed, h.header_len + h.payload_len as usize);
            assert_eq!(frame.payload.len() as u64, h.payload_len);
            assert!(h.payload_len <= self.decoder.max_frame_bytes());
            assert!((2..=14).contains(&h.header_len));
            if h.opcode.is_control() {
                assert!(h.fin && h.payload_len <= 125, "{h:?}");
            }
            let payload = &self.acc[pos + frame.payload.start..pos + frame.payload.end];
            pos += frame.consumed;
            let event = match self.assembler.on_frame(&h, payload) {
                Ok(ev) => ev,
                Err(e) => break Err(e),
            };
            match event {
                Event::Message { kind, data } => {
                    assert!(data.len() <= self.max_message_bytes);
                    if kind == MessageKind::Text {
                        assert!(std::str::from_utf8(data).is_ok());
                    }
                    self.out.push(Out::Message(kind, data.to_vec()));
                }
                Event::Fragment => {}
                Event::Ping(p) => self.out.push(Out::Ping(p.to_vec())),
                Event::Pong(p) => self.out.push(Out::Pong(p.to_vec())),
                Event::Close { code, reason } => {
                    if let Some(c) = code {
                        assert!(c.is_valid_on_wire());
                    }
                    self.out
                        .push(Out::Close(code.map(|c| c.0), reason.to_string()))
                }
            }
            assert!(self.assembler.buffered_bytes() <= self.max_message_bytes);
        };
        self.acc.drain(..pos);
        result
    }
}

// ---------------------------------------------------------------------------
// (a) Round trip.

#[derive(Clone, Debug)]
enum Content {
    /// Small literal content, shrinkable.
    Literal(Vec<u8>),
    /// Large content generated from a seed (text: random characters of every
    /// UTF-8 length, exactly `len` bytes).
    Seeded { len: usize, seed: u64 },
}

#[derive(Clone, Debug)]
struct MsgSpec {
    kind: MessageKind,
    content: Content,
    /// Fragment boundaries (may repeat: empty fragments are legal).
    cuts: Vec<Index>,
    /// Control frames: (slot, is_ping, payload). Slot i < fragments goes
    /// before fragment i; the last slot goes after the final fragment.
    controls: Vec<(Index, bool, Vec<u8>)>,
}

fn seeded_text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = String::with_capacity(len + 4);
    while s.len() < len {
        let room = len - s.len();
        let c = loop {
            let c: char = match rng.gen_range(0..5) {
                0 | 1 => rng.gen_range(' '..='~'),
                2 => rng.gen_range('\u{80}'..='\u{7ff}'),
                3 => rng.gen_range('\u{800}'..='\u{ffff}'),
                _ => rng.gen::<char>(),
            };
            if c.len_utf8() <= room {
                break c;
            }
        };
        s.push(c);
    }
    s.into_bytes()
}

fn seeded_binary(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

impl MsgSpec {
    fn bytes(&self) -> Vec<u8> {
        match (&self.content, self.kind) {
            (Content::Literal(v), _) => v.clone(),
            (Content::Seeded { len, seed }, MessageKind::Text) => seeded_text(*len, *seed),
            (Content::Seeded { len, seed }, MessageKind::Binary) => seeded_binary(*len, *seed),
        }
    }
}

/// Payload lengths around every length-encoding boundary, plus anything.
fn big_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => prop::sample::select(vec![
            0usize, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537, 69_999,
        ]),
        1 => 0usize..70_000,
        1 => 120usize..130,
        1 => 65530usize..65540,
    ]
}

fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    let content = prop_oneof![
        // Arbitrary unicode text, shrinkable.
        2 => any::<String>().prop_map(|s| (MessageKind::Text, Content::Literal(s.into_bytes()))),
        2 => prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|v| (MessageKind::Binary, Content::Literal(v))),
        3 => (any::<bool>(), big_len(), any::<u64>()).prop_map(|(text, len, seed)| {
            let kind = if text { MessageKind::Text } else { MessageKind::Binary };
            (kind, Content::Seeded { len, seed })
        }),
    ];
    let fragments = prop_oneof![3 => Just(1usize), 3 => 2usize..5, 1 => 5usize..40];
    let control = (
        any::<Index>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..=125),
    );
    (content, fragments, prop::collection::vec(control, 0..4)).prop_flat_map(
        |((kind, content), fragments, controls)| {
            prop::collection::vec(any::<Index>(), fragments - 1).prop_map(move |cuts| MsgSpec {
                kind,
                content: content.clone(),
                cuts,
                controls: controls.clone(),
            })
        },
    )
}

fn close_spec() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = prop_oneof![
        prop::sample::select(vec![
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1014
        ]),
        3000u16..5000,
    ];
    prop::option::of((code, "\\PC{0,25}"))
}

/// Encodes the messages; returns the wire bytes and the expected events.
fn encode_conversation(
    msgs: &[MsgSpec],
    close: &Option<(u16, String)>,
    role: Role,
    mask_seed: u64,
) -> (Vec<u8>, Vec<Out>) {
    let mut rng = StdRng::seed_from_u64(mask_seed);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut frame = |wire: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8]| match role {
        // What a client sends: masked, fresh random key per frame.
        Role::Server => encode_client_frame(fin, op, payload, rng.gen(), wire),
        // What a server sends: unmasked.
        Role::Client => encode_frame(fin, op, payload, wire),
    };
    for m in msgs {
        let data = m.bytes();
        let mut cuts: Vec<usize> = m.cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(data.len());
        let fragments = bounds.len() - 1;
        let mut slots: Vec<Vec<(bool, &[u8])>> = vec![Vec::new(); fragments + 1];
        for (slot, ping, payload) in &m.controls {
            slots[slot.index(fragments + 1)].push((*ping, payload));
        }
        for i in 0..=fragments {
            for (ping, payload) in &slots[i] {
                let op = if *ping { OpCode::Ping } else { OpCode::Pong };
                frame(&mut wire, true, op, payload);
                expected.push(if *ping {
                    Out::Ping(payload.to_vec())
                } else {
                    Out::Pong(payload.to_vec())
                });
            }
            if i == fragments {
                break;
            }
            let op = if i == 0 {
                m.kind.opcode()
            } else {
                OpCode::Continuation
            };
            let fin = i + 1 == fragments;
            frame(&mut wire, fin, op, &data[bounds[i]..bounds[i + 1]]);
            if fin {
                expected.push(Out::Message(m.kind, data.clone()));
            }
        }
    }
    if let Some((code, reason)) = close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        frame(&mut wire, true, OpCode::Close, &payload);
        expected.push(Out::Close(Some(*code), reason.clone()));
    }
    (wire, expected)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn messages_round_trip_through_any_chunking(
        msgs in prop::collection::vec(msg_spec(), 1..4),
        close in close_spec(),
        server in prop::bool::weighted(0.8),
        mask_seed in any::<u64>(),
        plan in chunking(80_000),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let (wire, expected) = encode_conversation(&msgs, &close, role, mask_seed);
        let mut rx = Receiver::new(role, 1 << 20, 1 << 20);
        for chunk in split(&wire, &plan) {
            prop_assert_eq!(rx.push(chunk), Ok(()));
            // Nothing complete is ever left behind in the buffer.
            prop_assert!(rx.acc.len() < 14 + (1 << 20));
        }
        prop_assert!(rx.acc.is_empty(), "{} bytes left over", rx.acc.len());
        prop_assert!(!rx.assembler.in_message());
        prop_assert_eq!(rx.out.len(), expected.len());
        for (i, (got, want)) in rx.out.iter().zip(&expected).enumerate() {
            // Compare without dumping 70 KB payloads on failure.
            prop_assert!(got == want, "event {} differs: got {:?} want {:?}",
                i, summary(got), summary(want));
        }
    }
}

fn summary(o: &Out) -> String {
    match o {
        Out::Message(k, d) => format!("{k:?} {} bytes {:x?}..", d.len(), &d[..d.len().min(16)]),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// (b) Byte soup.

/// Pieces that make a soup reach deeper than uniform random bytes would:
/// raw garbage, and frame-shaped pieces whose header fields are random and
/// whose announced length need not match the payload.
#[derive(Clone, Debug)]
enum Piece {
    Garbage(Vec<u8>),
    FrameLike {
        b0: u8,
        masked: bool,
        len: LenField,
        key: [u8; 4],
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
enum LenField {
    /// The payload's own length, shortest encoding.
    Exact,
    Short(u8),
    Ext16(u16),
    Ext64(u64),
}

fn piece() -> impl Strategy<Value = Piece> {
    let b0 = prop_oneof![
        // Mostly plausible: FIN or not, opcodes 0-2 and 8-A.
        4 => (any::<bool>(), prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]))
            .prop_map(|(fin, op)| if fin { 0x80 | op } else { op }),
        1 => any::<u8>(),
    ];
    let len = prop_oneof![
        6 => Just(LenField::Exact),
        1 => (0u8..128).prop_map(LenField::Short),
        1 => any::<u16>().prop_map(LenField::Ext16),
        1 => prop_oneof![any::<u64>(), 0u64..1000].prop_map(LenField::Ext64),
    ];
    let payload = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..200),
        1 => "\\PC{0,40}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Garbage),
        4 => (b0, prop::bool::weighted(0.8), len, any::<[u8; 4]>(), payload).prop_map(
            |(b0, masked, len, key, payload)| Piece::FrameLike { b0, masked, len, key, payload }
        ),
    ]
}

fn soup_bytes(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Garbage(g) => out.extend_from_slice(g),
            Piece::FrameLike {
                b0,
                masked,
                len,
                key,
                payload,
            } => {
                let m = if *masked { 0x80 } else { 0 };
                out.push(*b0);
                match len {
                    LenField::Exact => {
                        let n = payload.len();
                        if n < 126 {
                            out.push(m | n as u8);
                        } else {
                            out.push(m | 126);
                            out.extend_from_slice(&(n as u16).to_be_bytes());
                        }
                    }
                    LenField::Short(n) => out.push(m | (n & 0x7f)),
                    LenField::Ext16(n) => {
                        out.push(m | 126);
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                    LenField::Ext64(n) => {
                        out.push(m | 127);
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                }
                if *masked {
                    out.extend_from_slice(key);
                    let start = out.len();
                    out.extend_from_slice(payload);
                    wsrelay::protocol::mask::apply_mask(&mut out[start..], *key, 0);
                } else {
                    out.extend_from_slice(payload);
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn byte_soup_never_panics_or_overbuffers(
        pieces in prop::collection::vec(piece(), 0..24),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        server in any::<bool>(),
        max_frame in prop_oneof![0usize..300, Just(1 << 16)],
        max_message in prop_oneof![0usize..600, Just(1 << 16)],
        plan in chunking(300),
    ) {
        let mut soup = soup_bytes(&pieces);
        soup.extend_from_slice(&tail);
        let role = if server { Role::Server } else { Role::Client };
        let mut rx = Receiver::new(role, max_frame, max_message);
        for chunk in split(&soup, &plan) {
            let r = rx.push(chunk);
            if r.is_err() {
                // The connection is failed here; nothing more is read.
                break;
            }
            // What stays buffered is an incomplete frame, which the header
            // check bounds by the frame limit.
            prop_assert!(rx.acc.len() < max_frame + 14,
                "{} bytes buffered, limit {}", rx.acc.len(), max_frame);
            if let Some(n) = rx.decoder.bytes_needed(&rx.acc) {
                prop_assert!(n > rx.acc.len() && n <= max_frame + 14);
            }
        }
    }

    /// Any frame the decoder accepts, re-fed with its length field
    /// corrupted to exceed the limit, is refused from the header alone.
    #[test]
    fn oversize_announcements_are_refused_before_the_payload(
        len in any::<u64>(),
        max_frame in 0usize..100_000,
        op in prop::sample::select(vec![0u8, 1, 2]),
    ) {
        let len = len & (u64::MAX >> 1);
        prop_assume!(len > max_frame as u64);
        let mut hdr = vec![0x80 | op, 0x80 | 127];
        hdr.extend_from_slice(&len.to_be_bytes());
        hdr.extend_from_slice(&[1, 2, 3, 4]);
        let dec = FrameDecoder::new(Role::Server, max_frame);
        prop_assert_eq!(dec.decode(&mut hdr.clone()), Err(ProtocolError::FrameTooLarge));
        // Even before the mask key has arrived.
        prop_assert_eq!(dec.decode(&mut hdr[..10].to_vec()), Err(ProtocolError::FrameTooLarge));
    }
}

// ---------------------------------------------------------------------------
// (c) Handshake parsing under arbitrary chunking.

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let request_line = prop_oneof![
        4 => Just("GET /chat HTTP/1.1".to_string()),
        1 => Just("GET /rooms/a?role=sub HTTP/1.1".to_string()),
        1 => Just("POST /publish HTTP/1.1".to_string()),
        1 => Just("GET / HTTP/1.0".to_string()),
        1 => "[A-Z]{0,7} /[ -~]{0,20} HTTP/1\\.[0-9]".prop_map(|s| s),
        1 => "\\PC{0,30}".prop_map(|s| s),
    ];
    let header = prop_oneof![
        3 => prop::sample::select(vec![
            "Host: server.example.com",
            "Host:",
            "Upgrade: websocket",
            "Upgrade: h2c, WebSocket",
            "Upgrade: h2c",
            "Connection: Upgrade",
            "Connection: keep-alive, upgrade",
            "Connection: close",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Key: c2hvcnQ=",
            "Sec-WebSocket-Key: !!!!",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Protocol: chat, superchat",
            "Sec-WebSocket-Protocol: ,,",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "Origin: http://example.com",
            "Content-Length: 5",
            "Content-Length: x",
            "Transfer-Encoding: chunked",
        ])
        .prop_map(str::to_string),
        1 => "[!-9;-~]{1,12}: [ -~]{0,20}".prop_map(|s| s),
        1 => "\\PC{0,20}".prop_map(|s| s),
    ];
    let eol = prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")];
    let lines = prop::collection::vec((header, eol.clone()), 0..12);
    let structured = (
        request_line,
        eol,
        lines,
        prop::bool::weighted(0.85),
        prop::collection::vec(any::<u8>(), 0..16),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(rl, eol, lines, terminate, trailing, flips)| {
            let mut v = rl.into_bytes();
            v.extend_from_slice(eol.as_bytes());
            for (h, e) in lines {
                v.extend_from_slice(h.as_bytes());
                v.extend_from_slice(e.as_bytes());
            }
            if terminate {
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(&trailing);
            for (at, b) in flips {
                if !v.is_empty() {
                    let i = at.index(v.len());
                    v[i] = b;
                }
            }
            v
        });
    prop_oneof![
        4 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn limits() -> impl Strategy<Value = HandshakeLimits> {
    prop_oneof![
        2 => Just(HandshakeLimits::default()),
        1 => (0usize..400, 0usize..12).prop_map(|(max_head_bytes, max_headers)| {
            HandshakeLimits { max_head_bytes, max_headers }
        }),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn handshake_outcome_does_not_depend_on_chunking(
        input in request_bytes(),
        limits in limits(),
        plan in chunking(64),
    ) {
        let whole = parse_request(&input, &limits);
        if let Ok(ParsedRequest::Upgrade(u)) = &whole {
            prop_assert!(u.head_len <= input.len() && u.head_len <= limits.max_head_bytes);
            prop_assert_eq!(u.accept.len(), 28);
        }
        if let Ok(ParsedRequest::Http(r)) = &whole {
            prop_assert!(r.head_len <= input.len() && r.head_len <= limits.max_head_bytes);
        }
        if let Err(reason) = &whole {
            // Every refusal is a client error with a body.
            prop_assert!((400..500).contains(&reason.status()));
            prop_assert!(!reason.body().is_empty());
        }
        // A server re-parses everything received so far after every read and
        // acts on the first answer that is not "need more".
        let mut acc = Vec::new();
        let mut decided = None;
        for chunk in split(&input, &plan) {
            acc.extend_from_slice(chunk);
            match parse_request(&acc, &limits) {
                Ok(ParsedRequest::Partial) => {}
                other => {
                    decided = Some(other);
                    break;
                }
            }
        }
        match decided {
            Some(outcome) => prop_assert_eq!(outcome, whole),
            None => prop_assert_eq!(whole, Ok(ParsedRequest::Partial)),
        }
    }
}

// ---------------------------------------------------------------------------
// (d) Incremental UTF-8 validation.

fn utf8_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        &b"a"[..],
        "\u{7f}".as_bytes(),
        "\u{80}".as_bytes(),
        "é".as_bytes(),
        "\u{7ff}".as_bytes(),
        "\u{800}".as_bytes(),
        "€".as_bytes(),
        "\u{d7ff}".as_bytes(),
        "\u{e000}".as_bytes(),
        "\u{ffff}".as_bytes(),
        "\u{10000}".as_bytes(),
        "𝄞".as_bytes(),
        "\u{10ffff}".as_bytes(),
        // Invalid or truncated sequences.
        b"\x80",
        b"\xbf",
        b"\xc0\xaf",
        b"\xc1\xbf",
        b"\xc2",
        b"\xe0\x80\xaf",
        b"\xe0\x9f\xbf",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf0\x80\x80\x80",
        b"\xf0\x8f\xbf\xbf",
        b"\xf0\x9d",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\xfe",
        b"\xff",
    ]);
    let mutated = (
        any::<String>(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(|(s, flips, cut, truncate)| {
            let mut v = s.into_bytes();
            for (at, b) in flips {
                if !v.is_empty() {
                    let i = at.index(v.len());
                    v[i] = b;
                }
            }
            if truncate {
                v.truncate(cut.index(v.len() + 1));
            }
            v
        });
    prop_oneof![
        3 => prop::collection::vec(piece, 0..24).prop_map(|ps| ps.concat()),
        3 => mutated,
        2 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn fragment_wise_utf8_equals_std(
        input in utf8_input(),
        splits in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let std_result = std::str::from_utf8(&input);
        prop_assert_eq!(Utf8Validator::validate_complete(&input), std_result.is_ok());

        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(input.len());

        let mut v = Utf8Validator::new();
        let mut failed_at = None;
        for (k, w) in bounds.windows(2).enumerate() {
            if v.feed(&input[w[0]..w[1]]).is_err() {
                failed_at = Some(k);
                break;
            }
        }
        let result = match failed_at {
            Some(_) => Err(()),
            None => v.finish(),
        };
        prop_assert_eq!(result.is_ok(), std_result.is_ok(), "cuts {:?}", bounds);

        if let Err(e) = std_result {
            let valid = e.valid_up_to();
            // Never an error while everything fed so far is a valid prefix.
            if let Some(k) = failed_at {
                prop_assert!(bounds[k + 1] > valid, "early error at fragment {}", k);
            }
            // Fail fast: an invalid sequence is reported by the fragment
            // that holds the byte proving it invalid, not at the end.
            if let Some(n) = e.error_len() {
                let proof = (valid + n).min(input.len() - 1);
                let k = bounds.windows(2).position(|w| w[0] <= proof && proof < w[1]);
                if let (Some(k), Some(got)) = (k, failed_at) {
                    prop_assert!(got <= k, "error at fragment {} but byte {} is in {}",
                        got, proof, k);
                }
                prop_assert!(failed_at.is_some(), "invalid sequence only caught by finish()");
            } else {
                // Merely truncated: every fragment is fine, finish() fails.
                prop_assert_eq!(failed_at, None);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Plain regression checks that go with the properties above.

#[test]
fn boundary_lengths_round_trip_bytewise_in_both_roles() {
    for role in [Role::Server, Role::Client] {
        for len in [0usize, 125, 126, 65535, 65536] {
            let msgs = vec![MsgSpec {
                kind: MessageKind::Text,
                content: Content::Seeded { len, seed: 7 },
                cuts: Vec::new(),
                controls: Vec::new(),
            }];
            let (wire, expected) = encode_conversation(&msgs, &None, role, 1);
            let mut rx = Receiver::new(role, 1 << 20, 1 << 20);
            for b in wire.chunks(1) {
                rx.push(b).unwrap();
            }
            assert_eq!(rx.out, expected, "len {len}");
            assert!(rx.acc.is_empty());
        }
    }
}

#[test]
fn close_frame_from_the_encoder_is_accepted() {
    let mut wire = Vec::new();
    let c = wsrelay::protocol::ControlFrame::close(CloseCode(4001), "bye");
    wire.extend_from_slice(c.as_bytes());
    let mut rx = Receiver::new(Role::Client, 1024, 1024);
    rx.push(&wire).unwrap();
    assert_eq!(rx.out, vec![Out::Close(Some(4001), "bye".into())]);
}

// ---------------------------------------------------------------------------
// Client mode: the server's handshake response under arbitrary chunking.

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn client_response_outcome_does_not_depend_on_chunking(
        status in prop::sample::select(vec!["101 Switching Protocols", "200 OK", "404 Not Found"]),
        upgrade in any::<bool>(),
        connection in any::<bool>(),
        right_accept in prop::bool::weighted(0.8),
        protocol in prop::option::of(prop::sample::select(vec!["chat", "other"])),
        pad in prop_oneof![0usize..100, 8000usize..8300, 9000usize..10_000],
        trailing in prop::collection::vec(any::<u8>(), 0..16),
        // Not byte by byte: each read re-parses the whole head (10 KB).
        plan in prop::collection::vec(64usize..=4096, 1..6).prop_map(Chunking::Sizes),
    ) {
        use wsrelay::protocol::handshake::accept_key;
        use wsrelay::protocol::{ClientHandshake, MaskRng};
        let hs = ClientHandshake::new(&mut MaskRng::new()).with_protocols(&["chat"]);
        let accept = if right_accept {
            accept_key(hs.key().as_bytes())
        } else {
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string()
        };
        let mut resp = format!("HTTP/1.1 {status}\r\n");
        if upgrade {
            resp.push_str("Upgrade: websocket\r\n");
        }
        if connection {
            resp.push_str("Connection: Upgrade\r\n");
        }
        resp.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
        resp.push_str(&format!("Sec-WebSocket-Accept: {accept}\r\n"));
        if let Some(p) = protocol {
            resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        resp.push_str("\r\n");
        let mut input = resp.into_bytes();
        input.extend_from_slice(&trailing);

        let whole = hs.parse_response(&input);
        if let Ok(Some(r)) = &whole {
            prop_assert!(r.head_len <= 8192 && r.head_len <= input.len());
        }
        let mut acc = Vec::new();
        let mut decided = None;
        for chunk in split(&input, &plan) {
            acc.extend_from_slice(chunk);
            match hs.parse_response(&acc) {
                Ok(None) => {}
                other => {
                    decided = Some(other);
                    break;
                }
            }
        }
        match decided {
            Some(outcome) => prop_assert_eq!(outcome, whole),
            None => prop_assert_eq!(whole, Ok(None)),
        }
    }
}
