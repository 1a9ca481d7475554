//! The Centrifugo command-frame parser (`wsrelay::pubsub::proto`) over
//! arbitrary bytes.
//!
//! Input: byte 0 picks the limits, the rest is the frame. Checks, besides
//! "no panic":
//! - the frame-level limits hold for every accepted frame, and every error
//!   maps to a disconnect code from the table;
//! - an accepted command has an id unless it is a pong or a `send`;
//! - the strings and raw `data` of accepted commands re-encode (as pushes)
//!   into valid JSON of bounded size, `data` byte for byte;
//! - channel names never panic the validator, and a valid one agrees with
//!   `channel_namespace`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::pubsub::channel::{channel_namespace, ChannelName};
use wsrelay::pubsub::proto::{
    encode_pub_push, encode_rpc_reply, parse_frame, ClientInfo, CommandBody, DisconnectCode,
    Limits, Publication,
};

const SIZES: [usize; 4] = [16, 256, 4096, 1 << 16];

fn check_channel(channel: &str, out: &mut Vec<u8>) {
    if let Ok(c) = ChannelName::parse(channel, 255) {
        assert_eq!(c.namespace(), channel_namespace(channel));
        assert_eq!(c.as_str(), channel);
    }
    // Escaping expands a byte to at most 6 (`\u00XX`).
    out.clear();
    let info = ClientInfo {
        user: channel,
        client: channel,
        ..Default::default()
    };
    let data = serde_json::value::RawValue::from_string("0".into()).unwrap();
    let p = Publication {
        data: &data,
        info: Some(info),
        offset: u64::MAX,
        tags: &[(channel, channel)],
    };
    encode_pub_push(channel, &p, out);
    assert!(out.len() <= 5 * 6 * channel.len() + 128);
    let v: serde_json::Value = serde_json::from_slice(out).expect("valid JSON");
    // Empty strings are omitted, like Centrifugo's encoder; user never is.
    match v["push"].get("channel") {
        Some(c) => assert_eq!(c, channel),
        None => assert!(channel.is_empty()),
    }
    assert_eq!(v["push"]["pub"]["info"]["user"], channel);
}

fn check_data(data: Option<&serde_json::value::RawValue>, out: &mut Vec<u8>) {
    out.clear();
    encode_rpc_reply(1, data, out);
    let v: serde_json::Value = serde_json::from_slice(out).expect("valid JSON");
    if let Some(d) = data {
        assert_eq!(
            out.len(),
            d.get().len() + r#"{"id":1,"rpc":{"data":}}"#.len()
        );
        let want: serde_json::Value = serde_json::from_str(d.get()).unwrap();
        assert_eq!(v["rpc"]["data"], want);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, frame)) = input.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame_bytes: SIZES[usize::from(sel & 3)],
        max_command_bytes: SIZES[usize::from((sel >> 2) & 3)],
        max_commands_per_frame: usize::from(sel >> 4) + 1,
    };
    let mut out = Vec::new();
    let commands = match parse_frame(frame, &limits) {
        Ok(c) => c,
        Err(e) => {
            assert!(DisconnectCode::ALL.contains(&e.disconnect()));
            return;
        }
    };
    assert!(frame.len() <= limits.max_frame_bytes);
    let mut n = 0;
    for cmd in commands {
        n += 1;
        assert!(n <= limits.max_commands_per_frame);
        let cmd = match cmd {
            Ok(c) => c,
            Err(e) => {
                assert!(DisconnectCode::ALL.contains(&e.disconnect()));
                break;
            }
        };
        if cmd.id == 0 {
            assert!(matches!(cmd.body, CommandBody::Pong | CommandBody::Send(_)));
        }
        match &cmd.body {
            CommandBody::Connect(r) => {
                check_data(r.data, &mut out);
                for (ch, sub) in &r.subs {
                    check_channel(ch, &mut out);
                    check_data(sub.data, &mut out);
                }
            }
            CommandBody::Subscribe(r) => {
                check_channel(&r.channel, &mut out);
                check_data(r.data, &mut out);
            }
            CommandBody::Unsubscribe(r)
            | CommandBody::Presence(r)
            | CommandBody::PresenceStats(r) => check_channel(&r.channel, &mut out),
            CommandBody::Publish(r) => {
                check_channel(&r.channel, &mut out);
                check_data(r.data, &mut out);
            }
            CommandBody::History(r) => check_channel(&r.channel, &mut out),
            CommandBody::SubRefresh(r) => check_channel(&r.channel, &mut out),
            CommandBody::Rpc(r) => {
                check_channel(&r.method, &mut out);
                check_data(r.data, &mut out);
            }
            CommandBody::Send(r) => check_data(r.data, &mut out),
            CommandBody::Refresh(_) | CommandBody::Ping | CommandBody::Pong => {}
        }
    }
});
