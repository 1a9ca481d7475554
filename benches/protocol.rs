//! Criterion benches for the sans-IO protocol core.
//!
//! Run (figures in docs/benchmarks.md):
//!   taskset -c 1 cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 3

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use wsrelay::protocol::handshake::{accept_key, accept_response};
use wsrelay::protocol::mask::{apply_mask, apply_mask_reference};
use wsrelay::protocol::utf8::Utf8Validator;
use wsrelay::protocol::{
    encode_client_frame, encode_header, parse_request, CloseCode, ControlFrame, Event,
    FrameDecoder, HandshakeLimits, MessageAssembler, OpCode, ParsedRequest, Role, SharedFrame,
};

/// What a current Chrome sends to open a WebSocket (cookies and all).
const BROWSER_REQUEST: &str = "GET /rooms/lobby?role=pub HTTP/1.1\r\n\
Host: relay.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
Cookie: session=6f1c0e2a9b8d4c7e; theme=dark; _ga=GA1.1.123456789.1700000000\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: wsrelay.v1, chat\r\n\
\r\n";

const SIZES: [(usize, &str); 3] = [(32, "32B"), (1024, "1KiB"), (65536, "64KiB")];

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let limits = HandshakeLimits::default();
    let req = BROWSER_REQUEST.as_bytes();
    let supported = vec!["wsrelay.v1".to_string()];
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(req), &limits))
    });
    g.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    g.bench_function("accept_response", |b| {
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        b.iter(|| accept_response(black_box(&accept), Some("wsrelay.v1")))
    });
    // Everything a server does for one upgrade: parse, validate, compute
    // the accept value, negotiate, build the 101 response.
    g.bench_function("parse+accept+response", |b| {
        b.iter(|| match parse_request(black_box(req), &limits) {
            Ok(ParsedRequest::Upgrade(u)) => {
                let p = u.negotiate_protocol(&supported);
                u.accept_response(p)
            }
            other => panic!("{other:?}"),
        })
    });
    g.finish();
}

/// ASCII text, like JSON chat messages.
fn ascii_text(len: usize) -> Vec<u8> {
    let pattern = br#"{"room":"lobby","from":"alice","text":"hello, world! 0123456789"} "#;
    pattern.iter().copied().cycle().take(len).collect()
}

/// Mostly non-ASCII text (Cyrillic, CJK, emoji), exactly `len` bytes.
fn mixed_text(len: usize) -> Vec<u8> {
    let pattern = "Привет мир, 你好世界 👋🌍 ".as_bytes();
    let mut v: Vec<u8> = Vec::with_capacity(len + 4);
    let s = std::str::from_utf8(pattern).expect("utf-8");
    while v.len() < len {
        for ch in s.chars() {
            let mut buf = [0u8; 4];
            let enc = ch.encode_utf8(&mut buf).as_bytes();
            if v.len() + enc.len() > len {
                break;
            }
            v.extend_from_slice(enc);
        }
        if v.len() + 4 > len {
            v.resize(len, b' ');
        }
    }
    v
}

fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(
        true,
        OpCode::Text,
        payload,
        [0x37, 0xfa, 0x21, 0x3d],
        &mut out,
    );
    out
}

/// Decode a masked client text frame (unmask in place) and hand it to the
/// assembler (UTF-8 validation): the server's whole per-frame receive work.
fn decode(c: &mut Criterion) {
    let dec = FrameDecoder::new(Role::Server, 1 << 20);
    let mut g = c.benchmark_group("decode_text_frame");
    for (kind, gen) in [
        ("ascii", ascii_text as fn(usize) -> Vec<u8>),
        ("mixed", mixed_text),
    ] {
        for (len, label) in SIZES {
            let frame = masked_frame(&gen(len));
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_with_input(
                BenchmarkId::new(kind, label),
                &frame,
                |b, frame: &Vec<u8>| {
                    let mut asm = MessageAssembler::new(1 << 20);
                    b.iter_batched_ref(
                        || frame.clone(),
                        |buf| {
                            let f = dec.decode(buf).expect("valid").expect("complete");
                            match asm.on_frame(&f.header, &buf[f.payload.clone()]) {
                                Ok(Event::Message { data, .. }) => data.len(),
                                other => panic!("{other:?}"),
                            }
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    g.finish();

    // The two halves of the 64 KiB case on their own.
    let mut g = c.benchmark_group("frame_parts_64KiB");
    g.throughput(Throughput::Bytes(65536));
    let text = ascii_text(65536);
    g.bench_function("utf8_validate_ascii", |b| {
        b.iter(|| Utf8Validator::validate_complete(black_box(&text)))
    });
    let text = mixed_text(65536);
    g.bench_function("utf8_validate_mixed", |b| {
        b.iter(|| Utf8Validator::validate_complete(black_box(&text)))
    });
    g.bench_function("std_from_utf8_mixed", |b| {
        b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
    });
    g.finish();
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_64KiB");
    g.throughput(Throughput::Bytes(65536));
    let mut buf = ascii_text(65536);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    g.bench_function("apply_mask", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), key, 0))
    });
    // Unaligned start and odd offset: a payload after a 6-byte header.
    let mut backing = ascii_text(65536 + 8);
    g.bench_function("apply_mask_unaligned", |b| {
        b.iter(|| apply_mask(black_box(&mut backing[3..65536 + 3]), key, 1))
    });
    g.bench_function("apply_mask_reference", |b| {
        b.iter(|| apply_mask_reference(black_box(&mut buf), key, 0))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.bench_function("encode_header", |b| {
        b.iter(|| encode_header(true, OpCode::Text, black_box(1024), None))
    });
    g.bench_function("encode_header_masked", |b| {
        b.iter(|| encode_header(true, OpCode::Text, black_box(70_000), Some([1, 2, 3, 4])))
    });
    g.bench_function("control_close", |b| {
        b.iter(|| ControlFrame::close(CloseCode::POLICY_VIOLATION, black_box("slow consumer")))
    });
    g.finish();
    let mut g = c.benchmark_group("shared_frame_encode");
    for (len, label) in SIZES {
        let payload = ascii_text(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &payload, |b, p| {
            b.iter(|| SharedFrame::encode(OpCode::Text, black_box(p)))
        });
    }
    g.finish();
}

criterion_group!(benches, handshake, decode, mask, encode);
criterion_main!(benches);
