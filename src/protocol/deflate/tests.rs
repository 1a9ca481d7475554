use super::*;

fn neg(offers: &str) -> Option<String> {
    negotiate(offers, &DeflateSettings::default()).map(|n| n.response_value())
}

fn neg_with(offers: &str, bits: u8, force_cnct: bool) -> Option<String> {
    let s = DeflateSettings {
        server_window_bits: bits,
        client_no_context_takeover: force_cnct,
        ..DeflateSettings::default()
    };
    negotiate(offers, &s).map(|n| n.response_value())
}

const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn no_offer_no_compression() {
    assert_eq!(neg(""), None);
    assert_eq!(neg("x-webkit-deflate-frame"), None);
    assert_eq!(neg("foo; bar=1, baz"), None);
}

#[test]
fn plain_offer_gets_both_no_context_takeovers() {
    assert_eq!(neg("permessage-deflate").as_deref(), Some(BASE));
    assert_eq!(neg("PerMessage-Deflate").as_deref(), Some(BASE));
    let n = negotiate("permessage-deflate", &DeflateSettings::default()).unwrap();
    assert!(n.client_no_context_takeover);
    assert_eq!(n.server_window_bits, 15);
}

#[test]
fn browser_offer_accepted_without_client_window_answer() {
    // Chrome / Firefox.
    assert_eq!(
        neg("permessage-deflate; client_max_window_bits").as_deref(),
        Some(BASE)
    );
    // A client limiting our window below 15 bits.
    assert_eq!(
        neg("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12").as_deref(),
        None,
        "12 < our 15-bit window: declined"
    );
    assert_eq!(
        neg("permessage-deflate; client_max_window_bits=10").as_deref(),
        Some(BASE)
    );
}

#[test]
fn client_no_context_takeover_only_when_offered_if_not_forced() {
    assert_eq!(
        neg_with("permessage-deflate", 15, false).as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    assert_eq!(
        neg_with("permessage-deflate; client_no_context_takeover", 15, false).as_deref(),
        Some(BASE)
    );
    let n = negotiate(
        "permessage-deflate",
        &DeflateSettings {
            server_window_bits: 15,
            client_no_context_takeover: false,
            ..DeflateSettings::default()
        },
    )
    .unwrap();
    assert!(!n.client_no_context_takeover);
}

#[test]
fn server_no_context_takeover_offer_accepted() {
    assert_eq!(
        neg("permessage-deflate; server_no_context_takeover").as_deref(),
        Some(BASE)
    );
    assert_eq!(
        neg("permessage-deflate;server_no_context_takeover;client_no_context_takeover").as_deref(),
        Some(BASE)
    );
}

#[test]
fn server_max_window_bits_honoured_only_at_or_above_our_window() {
    let w15 = format!("{BASE}; server_max_window_bits=15");
    assert_eq!(
        neg("permessage-deflate; server_max_window_bits=15").as_deref(),
        Some(w15.as_str())
    );
    for n in 8..15 {
        let offer = format!("permessage-deflate; server_max_window_bits={n}");
        assert_eq!(neg(&offer), None, "{offer}");
    }
    // A smaller deflater window accepts larger limits, answering its own.
    let w10 = format!("{BASE}; server_max_window_bits=10");
    for n in 10..=15 {
        let offer = format!("permessage-deflate; server_max_window_bits={n}");
        assert_eq!(neg_with(&offer, 10, true).as_deref(), Some(w10.as_str()));
    }
    assert_eq!(
        neg_with("permessage-deflate; server_max_window_bits=9", 10, true),
        None
    );
    // Our window below 15 is always announced.
    assert_eq!(
        neg_with("permessage-deflate", 10, true).as_deref(),
        Some(w10.as_str())
    );
    // 8 is never honoured: zlib writes 9-bit windows at least.
    let w9 = format!("{BASE}; server_max_window_bits=9");
    assert_eq!(
        neg_with("permessage-deflate", 8, true).as_deref(),
        Some(w9.as_str())
    );
    assert_eq!(
        neg_with("permessage-deflate; server_max_window_bits=8", 8, true),
        None
    );
}

#[test]
fn quoted_values_are_unquoted() {
    let w15 = format!("{BASE}; server_max_window_bits=15");
    assert_eq!(
        neg("permessage-deflate; server_max_window_bits=\"15\"").as_deref(),
        Some(w15.as_str())
    );
    assert_eq!(
        neg("permessage-deflate; client_max_window_bits=\"1\\0\"").as_deref(),
        Some(BASE)
    );
}

#[test]
fn bad_parameters_decline_the_offer() {
    for offer in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=015",
        "permessage-deflate; server_max_window_bits=1a",
        "permessage-deflate; server_max_window_bits=\"\"",
        "permessage-deflate; server_max_window_bits=+15",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=\"abc\"",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=15; server_max_window_bits=15",
        "permessage-deflate; unknown_param",
        "permessage-deflate; Server_No_Context_Takeover",
    ] {
        assert_eq!(neg(offer), None, "{offer}");
    }
}

#[test]
fn several_offers_first_acceptable_wins() {
    // Autobahn 13.7: the 8-bit offer is declined, the next one taken.
    assert_eq!(
        neg(
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=8, \
             permessage-deflate; client_no_context_takeover, permessage-deflate"
        )
        .as_deref(),
        Some(BASE)
    );
    // A bad offer then a good one.
    assert_eq!(
        neg("permessage-deflate; bogus, permessage-deflate; client_max_window_bits").as_deref(),
        Some(BASE)
    );
    // Other extensions around it.
    assert_eq!(
        neg("x-foo; a=\"b, c\", permessage-deflate, x-bar").as_deref(),
        Some(BASE)
    );
    // The first acceptable one decides the answer.
    let w15 = format!("{BASE}; server_max_window_bits=15");
    assert_eq!(
        neg("permessage-deflate; server_max_window_bits=15, permessage-deflate").as_deref(),
        Some(w15.as_str())
    );
    // Several header lines, joined by the caller.
    assert_eq!(
        neg("permessage-deflate; server_max_window_bits=9,permessage-deflate").as_deref(),
        Some(BASE)
    );
}

#[test]
fn malformed_header_declines_compression() {
    for v in [
        "permessage-deflate;",
        "permessage-deflate; ;",
        "permessage-deflate; =15",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=\"15",
        "permessage-deflate client_no_context_takeover",
        "permessage-deflate; a b",
        "\"permessage-deflate\"",
        "permessage-deflate; server_max_window_bits=\"15\"x",
    ] {
        assert_eq!(neg(v), None, "{v:?}");
    }
}

#[test]
fn whitespace_and_empty_elements_are_tolerated() {
    assert_eq!(
        neg(" ,\tpermessage-deflate \t;\tclient_max_window_bits = 10 , ,").as_deref(),
        Some(BASE)
    );
}

#[test]
fn window_bits_values() {
    for n in 8..=15u8 {
        assert_eq!(window_bits(&n.to_string()), Some(n));
    }
    for v in ["", "0", "7", "16", "08", "100", "-9", " 9", "9 ", "٩"] {
        assert_eq!(window_bits(v), None, "{v:?}");
    }
}

// ----- sending ---------------------------------------------------------------

use crate::protocol::frame::{encode_frame, FrameDecoder, OpCode, Role};

/// What a client does with a received compressed payload.
fn client_inflate(z: &[u8]) -> Vec<u8> {
    let mut inf = Inflater::new();
    let mut out = Vec::new();
    inf.inflate(z, &mut out, 1 << 30).unwrap();
    inf.finish(&mut out, 1 << 30).unwrap();
    out
}

#[test]
fn deflater_compresses_each_message_alone() {
    let mut d = Deflater::new(1, 15);
    let msg = b"{\"channel\":\"news\",\"data\":{\"text\":\"hello hello hello hello\"}}".repeat(20);
    let mut a = Vec::new();
    assert!(d.compress(&msg, &mut a));
    assert!(a.len() < msg.len() / 4, "{}", a.len());
    // No context taken over: the same message compresses the same way,
    // and each inflates with a fresh inflater.
    let mut b = Vec::new();
    assert!(d.compress(&msg, &mut b));
    assert_eq!(a, b);
    assert_eq!(client_inflate(&a), msg);
    // Large, and every level and window.
    let big: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 1000).to_le_bytes())
        .collect();
    for (level, bits) in [(1, 15), (6, 12), (9, 9)] {
        let mut d = Deflater::new(level, bits);
        let mut z = Vec::new();
        assert!(d.compress(&big, &mut z));
        assert_eq!(client_inflate(&z), big);
    }
}

#[test]
fn deflater_declines_what_does_not_shrink() {
    let mut d = Deflater::new(1, 15);
    // xorshift64: incompressible.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..10_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let mut out = b"keep".to_vec();
    assert!(!d.compress(&noise, &mut out));
    assert_eq!(out, b"keep");
    assert!(!d.compress(b"", &mut out));
    assert!(!d.compress(b"a", &mut out));
    assert_eq!(out, b"keep");
}

#[test]
fn compress_frames_reencodes_a_batch() {
    let json = b"{\"a\":\"hello hello hello hello hello\"}".repeat(10);
    let mut batch = Vec::new();
    encode_frame(true, OpCode::Text, &json, &mut batch);
    encode_frame(true, OpCode::Binary, b"tiny", &mut batch);
    encode_frame(true, OpCode::Binary, &json, &mut batch);
    encode_frame(false, OpCode::Text, &json, &mut batch);
    encode_frame(true, OpCode::Continuation, b"x", &mut batch);
    let mut d = Deflater::new(1, 15);
    let mut stats = CompressStats::default();
    let z = compress_frames(&batch, &mut d, 64, &mut stats).unwrap();
    assert!(z.len() < batch.len() / 2);
    // Two messages compressed (the fragment and the short one are not).
    assert_eq!(stats.messages, 2);
    assert_eq!(stats.before, 2 * json.len() as u64);
    assert!(
        stats.after > 0 && stats.after < stats.before / 4,
        "{stats:?}"
    );
    assert_eq!(stats.incompressible, 0);
    // Decode it as a client that negotiated deflate.
    let dec = FrameDecoder::new(Role::Client, 1 << 20).with_allowed_rsv(0x4);
    let mut bytes = z.clone();
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < bytes.len() {
        let f = dec.decode(&mut bytes[pos..]).unwrap().unwrap();
        let p = bytes[pos + f.payload.start..pos + f.payload.end].to_vec();
        let rsv1 = f.header.rsv & 0x4 != 0;
        let data = if rsv1 { client_inflate(&p) } else { p };
        seen.push((f.header.opcode, f.header.fin, rsv1, data));
        pos += f.consumed;
    }
    assert_eq!(
        seen,
        vec![
            (OpCode::Text, true, true, json.clone()),
            (OpCode::Binary, true, false, b"tiny".to_vec()),
            (OpCode::Binary, true, true, json.clone()),
            (OpCode::Text, false, false, json.clone()),
            (OpCode::Continuation, true, false, b"x".to_vec()),
        ]
    );
    // Not whole frames: None.
    let st = &mut CompressStats::default();
    assert_eq!(
        compress_frames(&batch[..batch.len() - 1], &mut d, 64, st),
        None
    );
    assert_eq!(compress_frames(&[0x81], &mut d, 64, st), None);
    assert_eq!(compress_frames(&[], &mut d, 64, st), Some(Vec::new()));
}

#[test]
fn compress_message_frames_one_message_or_declines() {
    let dec = FrameDecoder::new(Role::Client, 1 << 20).with_allowed_rsv(0x4);
    let mut d = Deflater::new(1, 15);
    let mut st = CompressStats::default();
    // Every header length: 7-bit, 16-bit and 64-bit payload lengths.
    for n in [14usize, 40, 2_000, 200_000] {
        let msg: Vec<u8> = b"0123456789abcdef"
            .iter()
            .cycle()
            .take(n * 5)
            .copied()
            .collect();
        let mut f = compress_message(OpCode::Binary, &msg, &mut d, 64, &mut st).unwrap();
        let frame = dec.decode(&mut f).unwrap().unwrap();
        assert_eq!(frame.consumed, f.len());
        assert!(frame.header.fin);
        assert_eq!(frame.header.rsv, 0x4);
        assert_eq!(frame.header.opcode, OpCode::Binary);
        assert_eq!(client_inflate(&f[frame.payload]), msg);
    }
    assert_eq!(st.messages, 4);
    assert_eq!(st.before, 5 * (14 + 40 + 2_000 + 200_000));
    // Shorter than min_bytes: not compressed, not counted as incompressible.
    assert_eq!(
        compress_message(OpCode::Text, b"short", &mut d, 64, &mut st),
        None
    );
    assert_eq!(st.incompressible, 0);
    // Does not shrink: declined and counted.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    assert_eq!(
        compress_message(OpCode::Binary, &noise, &mut d, 64, &mut st),
        None
    );
    assert_eq!(st.incompressible, 1);
    assert_eq!(st.messages, 4);
}

#[test]
fn deflater_output_at_any_buffer_boundary() {
    // Whatever capacity the output starts with (the flush may end exactly
    // at it), the result is the same and complete.
    let msg = b"abcabcabc hello world hello world 0123456789".repeat(40);
    let mut d = Deflater::new(1, 15);
    let mut reference = Vec::new();
    assert!(d.compress(&msg, &mut reference));
    for cap in 0..reference.len() + 8 {
        let mut out = Vec::with_capacity(cap);
        assert!(d.compress(&msg, &mut out), "{cap}");
        assert_eq!(out, reference, "{cap}");
    }
}
