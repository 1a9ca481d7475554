//! Codec and client state machine, sans-IO. Commands are checked with the
//! relay's own parser and pushes built with its encoder, so the two codecs
//! check each other; replies are written out as Centrifugo sends them.

use super::client::{Phase, PsClient, PsConfig, PsTls, TokenMode};
use super::proto::{self, Line, PubData, Publication, Reply, SubReply};
use crate::conn::Tls;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use wsrelay::protocol::{FrameDecoder, OpCode, Role};
use wsrelay::pubsub::proto::{parse_command, CommandBody, Limits};

fn cmd(bytes: &[u8]) -> CommandBody<'_> {
    parse_command(bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
        .body
}

#[test]
fn commands_parse_with_the_relay_codec() {
    let mut o = Vec::new();
    proto::connect(&mut o, 1, Some("a.b\"c"));
    match cmd(&o) {
        CommandBody::Connect(c) => {
            assert_eq!(c.token, "a.b\"c");
            assert_eq!(c.name, "wsrelay-load");
        }
        other => panic!("{other:?}"),
    }
    o.clear();
    proto::connect(&mut o, 1, None);
    assert!(matches!(cmd(&o), CommandBody::Connect(c) if c.token.is_empty()));

    o.clear();
    proto::subscribe(&mut o, 7, "chat:c3", None);
    let c = parse_command(&o, &Limits::default()).unwrap();
    assert_eq!(c.id, 7);
    match c.body {
        CommandBody::Subscribe(s) => {
            assert_eq!(s.channel, "chat:c3");
            assert!(!s.recover);
        }
        other => panic!("{other:?}"),
    }
    o.clear();
    proto::subscribe(&mut o, 8, "chat:c3", Some((41, "xyz")));
    match cmd(&o) {
        CommandBody::Subscribe(s) => {
            assert!(s.recover);
            assert_eq!((s.offset, &*s.epoch), (41, "xyz"));
        }
        other => panic!("{other:?}"),
    }

    for pad in [0, 10, 61, 62, 63, 200] {
        o.clear();
        let d = PubData {
            p: 2,
            k: 5,
            s: 99,
            t: u64::MAX,
        };
        proto::publish(&mut o, 9, "c5", d, pad);
        match cmd(&o) {
            CommandBody::Publish(p) => {
                assert_eq!(p.channel, "c5");
                let raw = p.data.unwrap().get().as_bytes();
                assert!(raw.len() >= pad, "pad {pad}: {}", raw.len());
                assert_eq!(proto::pub_data(raw), Some(d));
            }
            other => panic!("{other:?}"),
        }
    }
    o.clear();
    proto::pong(&mut o);
    assert!(matches!(cmd(&o), CommandBody::Pong));
}

#[test]
fn server_lines_decode() {
    use wsrelay::pubsub::proto::{encode_error_reply, encode_ping, ErrorCode};
    let mut o = Vec::new();
    encode_ping(&mut o);
    assert_eq!(proto::decode(&o), Line::Ping);
    o.clear();
    encode_error_reply(4, ErrorCode::PermissionDenied, &mut o);
    assert_eq!(
        proto::decode(&o),
        Line::Reply {
            id: 4,
            reply: Reply::Error {
                code: 103,
                message: "permission denied".into()
            }
        }
    );
    let push = br#"{"push":{"channel":"chat:c1","pub":{"data":{"p":0,"k":1,"s":7,"t":12,"x":"aa"},"info":{"user":"u","client":"c"},"offset":42}}}"#;
    match proto::decode(push) {
        Line::Pub {
            channel,
            publication,
        } => {
            assert_eq!(channel, b"chat:c1");
            assert_eq!(publication.offset, 42);
            assert_eq!(
                publication.data,
                Some(PubData {
                    p: 0,
                    k: 1,
                    s: 7,
                    t: 12
                })
            );
        }
        other => panic!("{other:?}"),
    }
    // Not generator data: still a publication, data None.
    assert!(matches!(
        proto::decode(br#"{"push":{"channel":"a","pub":{"data":"text"}}}"#),
        Line::Pub {
            publication: Publication {
                offset: 0,
                data: None
            },
            ..
        }
    ));
    // Generator-looking keys with other types, or out of range: valid
    // JSON, not generator data (foreign), never an unreadable line.
    for data in [
        r#"{"p":"x","k":0,"s":1,"t":2}"#,
        r#"{"p":4294967296,"k":0,"s":1,"t":2}"#,
        r#"{"p":0,"k":0,"s":1}"#,
        r#"[1,2]"#,
        r#"{"p":0,"k":0,"s":1.5,"t":2}"#,
    ] {
        let line = format!(r#"{{"push":{{"channel":"a","pub":{{"data":{data},"offset":3}}}}}}"#);
        assert_eq!(
            proto::decode(line.as_bytes()),
            Line::Pub {
                channel: b"a",
                publication: Publication {
                    offset: 3,
                    data: None
                }
            },
            "{data}"
        );
    }
    // Extra keys and nesting around ours are fine.
    assert_eq!(
        proto::pub_data(br#"{"z":{"p":[9]},"p":1,"k":2,"s":3,"t":4,"x":"aa"}"#),
        Some(PubData {
            p: 1,
            k: 2,
            s: 3,
            t: 4
        })
    );
    assert_eq!(proto::pub_data(br#"{"p":1,"k":2,"s":3,"t":4} x"#), None);
    assert_eq!(
        proto::decode(br#"{"push":{"channel":"a","join":{"info":{"user":"","client":"x"}}}}"#),
        Line::Push("join".into())
    );
    assert_eq!(
        proto::decode(
            br#"{"id":3,"connect":{"client":"abc","version":"1","ping":25,"pong":true}}"#
        ),
        Line::Reply {
            id: 3,
            reply: Reply::Connect {
                ping: 25,
                pong: true
            }
        }
    );
    assert_eq!(
        proto::decode(br#"{"id":5,"publish":{}}"#),
        Line::Reply {
            id: 5,
            reply: Reply::Publish
        }
    );
    let sub = br#"{"id":6,"subscribe":{"recoverable":true,"epoch":"ep","publications":[{"data":{"p":0,"k":0,"s":1,"t":1},"offset":10},{"data":{"p":0,"k":0,"s":2,"t":1},"offset":11}],"recovered":true,"offset":11,"was_recovering":true}}"#;
    match proto::decode(sub) {
        Line::Reply {
            id: 6,
            reply: Reply::Subscribe(r),
        } => {
            assert!(r.recoverable && r.recovered && r.was_recovering && !r.positioned);
            assert_eq!((r.epoch.as_str(), r.offset), ("ep", 11));
            assert_eq!(r.publications.len(), 2);
            assert_eq!(r.publications[1].offset, 11);
            assert_eq!(r.publications[1].data.unwrap().s, 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        proto::decode(br#"{"id":6,"subscribe":{}}"#),
        Line::Reply {
            id: 6,
            reply: Reply::Subscribe(SubReply::default())
        }
    );
    let frame = b"{}\n{\"id\":5,\"publish\":{}}\n";
    assert_eq!(proto::lines(frame).count(), 2);
}

#[test]
fn pushes_from_the_relay_encoder_decode() {
    use serde_json::value::RawValue;
    use wsrelay::pubsub::proto::{encode_pub_push, Publication as RelayPub};
    let data = RawValue::from_string(r#"{"p":3,"k":0,"s":5,"t":77}"#.into()).unwrap();
    let mut o = Vec::new();
    encode_pub_push(
        "ns:c0",
        &RelayPub {
            data: &data,
            info: None,
            offset: 9,
            tags: &[],
        },
        &mut o,
    );
    assert_eq!(
        proto::decode(&o),
        Line::Pub {
            channel: b"ns:c0",
            publication: Publication {
                offset: 9,
                data: Some(PubData {
                    p: 3,
                    k: 0,
                    s: 5,
                    t: 77
                })
            }
        }
    );
}

#[test]
fn bad_lines_never_panic() {
    let good: &[&[u8]] = &[
        br#"{"push":{"channel":"chat:c1","pub":{"data":{"p":0,"k":1,"s":7,"t":12},"offset":42}}}"#,
        br#"{"id":6,"subscribe":{"recoverable":true,"epoch":"e\"p","publications":[{"data":{},"offset":1}],"offset":11}}"#,
        br#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#,
    ];
    for g in good {
        assert_ne!(proto::decode(g), Line::Bad);
        for cut in 0..g.len() {
            assert_eq!(
                proto::decode(&g[..cut]),
                Line::Bad,
                "{}",
                String::from_utf8_lossy(&g[..cut])
            );
        }
    }
    for bad in [
        &b"[]"[..],
        b"null",
        b"{\"id\":0,\"publish\":{}}",
        b"{\"id\":1}",
        b"{\"id\":4294967296,\"publish\":{}}",
        b"{\"id\":1,\"error\":{\"message\":\"no code\"}}",
        b"{\"id\":1,\"push\":{\"channel\":\"a\",\"pub\":{}}}",
        b"{} {}",
    ] {
        assert_eq!(
            proto::decode(bad),
            Line::Bad,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

// ---- client state machine ----

fn tls(channels: usize, publishers: u32) -> (Tls, Arc<Vec<AtomicU64>>) {
    let cfg = Arc::new(PsConfig {
        channels: (0..channels).map(|k| format!("ns:c{k}")).collect(),
        publishers,
        pad_to: 0,
        token: TokenMode::None,
    });
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let mut t = Tls::new(32, 1, vec![0], 1);
    t.ps = Some(PsTls::new(cfg, counts.clone()));
    t.may_send = true;
    (t, counts)
}

/// The text of every (masked) frame the client queued; clears `out`.
fn sent(out: &mut Vec<u8>) -> Vec<String> {
    let dec = FrameDecoder::new(Role::Server, 1 << 20);
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        let f = dec.decode(&mut out[pos..]).unwrap().unwrap();
        assert_eq!(f.header.opcode, OpCode::Text);
        let (a, b) = (pos + f.payload.start, pos + f.payload.end);
        v.push(String::from_utf8(out[a..b].to_vec()).unwrap());
        pos += f.consumed;
    }
    out.clear();
    v
}

fn id_of(line: &str) -> u32 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["id"].as_u64().unwrap() as u32
}

fn pub_push(k: u32, p: u32, s: u64, t: u64, offset: u64) -> Vec<u8> {
    format!(
        r#"{{"push":{{"channel":"ns:c{k}","pub":{{"data":{{"p":{p},"k":{k},"s":{s},"t":{t}}},"offset":{offset}}}}}}}"#
    )
    .into_bytes()
}

#[test]
fn subscriber_lifecycle_with_recovery() {
    let (mut t, counts) = tls(2, 1);
    let cfg = t.ps.as_ref().unwrap().cfg.clone();
    let mut c = PsClient::new(&cfg, &[0, 1], None, Some("tok".into()));
    c.setup_pending = true;
    t.ps.as_mut().unwrap().setting_up = 1;
    let mut out = Vec::new();
    c.start(&mut t, &mut out);
    let s = sent(&mut out);
    assert_eq!(s.len(), 1);
    assert!(matches!(cmd(s[0].as_bytes()), CommandBody::Connect(c) if c.token == "tok"));
    let cid = id_of(&s[0]);

    // Connect reply, with a ping in the same frame: both subscribes go out
    // in one frame, and the ping is answered.
    let reply = format!(
        "{{\"id\":{cid},\"connect\":{{\"client\":\"x\",\"ping\":25,\"pong\":true}}}}\n{{}}"
    );
    c.on_message(reply.as_bytes(), 10, &mut t, &mut out);
    let s = sent(&mut out);
    assert_eq!(s.len(), 2);
    let subs: Vec<&str> = s[0].split('\n').collect();
    assert_eq!(subs.len(), 2);
    assert!(
        matches!(cmd(subs[1].as_bytes()), CommandBody::Subscribe(r) if r.channel == "ns:c1" && !r.recover)
    );
    assert_eq!(s[1], "{}");
    assert_eq!(t.stats.pings, 1);
    assert_eq!(c.phase, Phase::Subscribing);

    // Subscribe replies (history on, stream at 4 in epoch "e").
    for l in &subs {
        let r = format!(
            "{{\"id\":{},\"subscribe\":{{\"recoverable\":true,\"epoch\":\"e\",\"offset\":4}}}}",
            id_of(l)
        );
        c.on_message(r.as_bytes(), 20, &mut t, &mut out);
    }
    assert!(c.ready());
    assert_eq!(t.ps.as_ref().unwrap().setting_up, 0);
    assert_eq!(counts[0].load(Relaxed) + counts[1].load(Relaxed), 2);

    // Live publications: latency from the intended time in the data.
    c.on_message(&pub_push(0, 0, 0, 100, 5), 150, &mut t, &mut out);
    c.on_message(&pub_push(0, 0, 1, 200, 6), 260, &mut t, &mut out);
    c.on_message(&pub_push(0, 0, 1, 200, 6), 270, &mut t, &mut out); // duplicate
    assert_eq!((t.stats.recv, t.stats.delivered), (3, 2));
    assert_eq!(t.hist.len(), 2);
    assert_eq!(t.hist.max(), 60);
    assert_eq!(c.subs[0].pubs[0].dup, 1);
    assert_eq!(c.subs[0].acc.offset_repeats, 1);

    // Drop: the connection goes, the subscriptions stay.
    c.reset(&mut t);
    assert_eq!(c.phase, Phase::Idle);
    c.reconnect_ns = 1000;
    c.start(&mut t, &mut out);
    let cid = id_of(&sent(&mut out)[0]);
    let reply = format!("{{\"id\":{cid},\"connect\":{{}}}}");
    c.on_message(reply.as_bytes(), 1100, &mut t, &mut out);
    let s = sent(&mut out);
    let subs: Vec<String> = s[0].split('\n').map(String::from).collect();
    match cmd(subs[0].as_bytes()) {
        CommandBody::Subscribe(r) => {
            assert!(r.recover);
            assert_eq!(
                (r.channel.as_ref(), r.offset, r.epoch.as_ref()),
                ("ns:c0", 6, "e")
            );
        }
        other => panic!("{other:?}"),
    }
    // ns:c0 missed offsets 7 and 8 (seqs 2, 3): recovered in the reply.
    let r0 = format!(
        r#"{{"id":{},"subscribe":{{"recoverable":true,"epoch":"e","offset":8,"recovered":true,"was_recovering":true,"publications":[{{"data":{{"p":0,"k":0,"s":2,"t":300}},"offset":7}},{{"data":{{"p":0,"k":0,"s":3,"t":400}},"offset":8}}]}}}}"#,
        id_of(&subs[0])
    );
    let r1 = format!(
        r#"{{"id":{},"subscribe":{{"recoverable":true,"epoch":"e","offset":4,"recovered":true,"was_recovering":true}}}}"#,
        id_of(&subs[1])
    );
    c.on_message(format!("{r0}\n{r1}").as_bytes(), 1500, &mut t, &mut out);
    assert!(c.ready());
    let ps = t.ps.as_ref().unwrap();
    assert_eq!(ps.st.resubscribe_ok, 1);
    assert_eq!(ps.resub.max(), 500);
    assert_eq!(t.stats.resubscribed, 1);
    assert_eq!(c.subs[0].acc.recovered_pubs, 2);
    assert_eq!(c.subs[0].acc.recovered_true, 1);
    assert_eq!(c.subs[0].acc.offset_gaps, 0);
    assert_eq!(c.subs[0].pubs[0].unique, 4);
    // Recovered publications are deliveries but not latency samples.
    assert_eq!(t.stats.delivered, 4);
    assert_eq!(t.hist.len(), 2);
    // A resubscribe does not count as a connect-phase subscription.
    assert_eq!(counts[0].load(Relaxed), 1);
}

#[test]
fn publisher_acks_errors_and_unacked() {
    let (mut t, counts) = tls(2, 2);
    counts[0].store(10, Relaxed);
    counts[1].store(20, Relaxed);
    let cfg = t.ps.as_ref().unwrap().cfg.clone();
    let mut c = PsClient::new(&cfg, &[], Some(1), None);
    let mut out = Vec::new();
    // Not connected yet: nothing is published.
    assert!(!c.publish(0, 5, &mut t, &mut out));
    c.start(&mut t, &mut out);
    let cid = id_of(&sent(&mut out)[0]);
    c.on_message(
        format!("{{\"id\":{cid},\"connect\":{{}}}}").as_bytes(),
        1,
        &mut t,
        &mut out,
    );
    assert!(c.ready());
    assert!(sent(&mut out).is_empty());
    for seq in 0..4 {
        assert!(c.publish(seq, 100 + seq, &mut t, &mut out));
    }
    let s = sent(&mut out);
    assert_eq!(s.len(), 4);
    // Publisher 1 starts at channel 1 and goes round: 1, 0, 1, 0; the
    // per-channel sequence is seq / channels.
    let mut seen = Vec::new();
    for l in &s {
        match cmd(l.as_bytes()) {
            CommandBody::Publish(p) => {
                let d = proto::pub_data(p.data.unwrap().get().as_bytes()).unwrap();
                assert_eq!(p.channel, format!("ns:c{}", d.k));
                seen.push((d.p, d.k, d.s));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec![(1, 1, 0), (1, 0, 0), (1, 1, 1), (1, 0, 1)]);
    assert_eq!(t.stats.sent, 4);
    let ids: Vec<u32> = s.iter().map(|l| id_of(l)).collect();
    let acks = format!(
        "{{\"id\":{},\"publish\":{{}}}}\n{{\"id\":{},\"error\":{{\"code\":103,\"message\":\"permission denied\"}}}}\n{{\"id\":{},\"publish\":{{}}}}",
        ids[0], ids[1], ids[2]
    );
    c.on_message(acks.as_bytes(), 1000, &mut t, &mut out);
    let ps = t.ps.as_ref().unwrap();
    assert_eq!((ps.st.publish_ok, ps.st.publish_err), (2, 1));
    assert_eq!(ps.st.errors.get("publish 103 permission denied"), Some(&1));
    assert_eq!(ps.ack.len(), 3);
    assert_eq!(ps.ack.max(), 900);
    assert_eq!(c.acked_k, vec![0, 2]);
    assert_eq!(c.sent_k, vec![2, 2]);
    // Two acknowledged publications on channel 1 (20 subscriptions each).
    assert_eq!(t.stats.expected, 40);
    // An id nobody waits for.
    c.on_message(
        format!("{{\"id\":{},\"publish\":{{}}}}", ids[0]).as_bytes(),
        1001,
        &mut t,
        &mut out,
    );
    assert_eq!(t.ps.as_ref().unwrap().st.unexpected_replies, 1);
    // The connection goes with one publish in flight.
    c.reset(&mut t);
    assert_eq!(t.ps.as_ref().unwrap().st.publish_unacked, 1);
    // A budget stops publishing.
    c.budget = 0;
    c.phase = Phase::Ready;
    assert!(!c.publish(9, 1, &mut t, &mut out));
}

#[test]
fn refused_connect_ends_setup() {
    let (mut t, _) = tls(1, 1);
    let cfg = t.ps.as_ref().unwrap().cfg.clone();
    let mut c = PsClient::new(&cfg, &[0], None, None);
    c.setup_pending = true;
    t.ps.as_mut().unwrap().setting_up = 1;
    let mut out = Vec::new();
    c.start(&mut t, &mut out);
    let cid = id_of(&sent(&mut out)[0]);
    let r = format!("{{\"id\":{cid},\"error\":{{\"code\":101,\"message\":\"unauthorized\"}}}}");
    c.on_message(r.as_bytes(), 1, &mut t, &mut out);
    assert_eq!(c.phase, Phase::Failed);
    assert!(out.is_empty());
    let ps = t.ps.as_ref().unwrap();
    assert_eq!(ps.setting_up, 0);
    assert_eq!(ps.st.errors.get("connect 101 unauthorized"), Some(&1));
}

#[test]
fn hs256_tokens_verify() {
    let tok = super::client::mint_hs256("sekret", "load-7").unwrap();
    let key = jsonwebtoken::DecodingKey::from_secret(b"sekret").unwrap();
    let v = jsonwebtoken::decode::<serde_json::Value>(
        &tok,
        &key,
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(v.claims["sub"], "load-7");
}
