//! A protocol client (`wsrelay::server::client::Client`) executing
//! arbitrary command frames against a real hub (history, presence,
//! tokens) and a worker's rooms.
//!
//! Input: frames separated by the byte 0xFF (never valid UTF-8, so never
//! inside a JSON frame). Checks, besides "no panic": every reply line is a
//! JSON object; a frame the client accepts yields at most one reply per
//! command; after a disconnect nothing more is executed (as the engine
//! closes the connection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use wsrelay::config::{ChannelOptions, Config, Namespace};
use wsrelay::metrics::WorkerMetrics;
use wsrelay::pubsub::hub::Hub;
use wsrelay::server::client::{Client, Exec};
use wsrelay::server::directory::RoomDirectory;
use wsrelay::server::local_rooms::LocalRooms;

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let mut c = Config {
            token_hmac_secret_key: "fuzz".into(),
            allow_anonymous_connect_without_token: true,
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_anonymous: true,
            client_channel_limit: 16,
            history_max_bytes: 1 << 20,
            presence_max_clients: 10_000,
            max_message_bytes: 1 << 16,
            max_frame_bytes: 1 << 16,
            ..Config::default()
        };
        c.namespaces = vec![Namespace {
            name: "chat".into(),
            options: ChannelOptions {
                history_size: 8,
                history_ttl: Duration::from_secs(60),
                force_recovery: true,
                presence: true,
                join_leave: true,
                allow_subscribe_for_client: true,
                allow_subscribe_for_anonymous: true,
                allow_publish_for_client: true,
                allow_publish_for_anonymous: true,
                allow_history_for_client: true,
                allow_presence_for_client: true,
                allow_user_limited_channels: true,
                ..ChannelOptions::default()
            },
        }];
        Hub::new(&c).expect("hub")
    })
}

fuzz_target!(|data: &[u8]| {
    let hub = hub();
    let directory = RoomDirectory::new(64);
    let mut rooms = LocalRooms::new(0, 1 << 20, false);
    let metrics = WorkerMetrics::default();
    let mut client = Client::new();
    let mut out = Vec::new();
    for frame in data.split(|&b| b == 0xFF) {
        out.clear();
        let mut x = Exec {
            hub,
            rooms: &mut rooms,
            directory: &directory,
            key: 1,
            ping_secs: 25,
            now_secs: 1_700_000_000,
            metrics: &metrics,
        };
        let result = client.handle_frame(frame, &mut x, &mut out);
        let lines = frame.split(|&b| b == b'\n').count();
        let mut replies = 0;
        for line in out
            .split(|&b| b == b'\n')
            .filter(|l| !out.is_empty() || !l.is_empty())
        {
            let v: serde_json::Value = serde_json::from_slice(line).expect("reply is JSON");
            assert!(v.is_object(), "reply is an object");
            replies += 1;
        }
        if result.is_ok() && !out.is_empty() {
            assert!(replies <= lines, "{replies} replies for {lines} commands");
        }
        if result.is_err() {
            break;
        }
    }
    // Whatever happened, the client's subscriptions leave cleanly.
    let subs: Vec<u64> = client.subs.iter().map(|s| s.room_id).collect();
    for room_id in subs {
        if let Some(name) = rooms.name_of(room_id).map(str::to_owned) {
            let i = client
                .subs
                .iter()
                .position(|s| s.room_id == room_id)
                .unwrap();
            let sub = client.subs.swap_remove(i);
            client.leave_effects(&name, &sub, hub, &mut rooms, &metrics);
        }
    }
});
