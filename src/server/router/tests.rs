//! The router against a real worker's state, with no sockets: requests in,
//! answers out. Cross-worker backpressure is forced deterministically by
//! filling a destination's one-message queue, which socket tests cannot do
//! without racing the destination's drain.

use super::*;
use crate::config::Config;
use crate::protocol::{parse_request, HandshakeLimits, ParsedRequest};
use crate::server::admission::Admission;
use crate::server::directory::RoomDirectory;
use crate::server::mesh::{Control, Mesh, WorkerMsg};
use crate::server::{admin, Shared};
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Two workers with one-message queues; this test plays worker 0.
struct World {
    shared: Shared,
    rooms: LocalRooms,
    port: MeshPort,
    /// Worker 1's inbox (never drained unless a test says so).
    inbox_1: crossbeam_channel::Receiver<WorkerMsg>,
    metrics: WorkerMetrics,
    awaiting: crate::server::awaiting::Awaiting,
    _polls: Vec<mio::Poll>,
}

impl World {
    fn new() -> World {
        let config = Config {
            publish_token: "t".into(),
            fanout_queue_len: 1,
            ..Config::default()
        };
        let polls: Vec<mio::Poll> = (0..2).map(|_| mio::Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Arc::new(mio::Waker::new(p.registry(), mio::Token(0)).unwrap()))
            .collect();
        let (mesh, mut receivers) = Mesh::new(wakers, config.fanout_queue_len);
        let inbox_1 = receivers.pop().unwrap();
        let inbox_0 = receivers.pop().unwrap();
        let shared = Shared {
            directory: RoomDirectory::new(config.max_rooms),
            mesh,
            metrics: Vec::new(),
            shutdown: AtomicBool::new(false),
            ws_connections: AtomicUsize::new(0),
            admission: Admission::new(16, 16, 64),
            hub: Hub::new(&config).unwrap(),
            routes: admin::RouteSplit::from_config(&config),
            broker: None,
            config,
        };
        World {
            rooms: LocalRooms::new(0, 1 << 20, false),
            port: MeshPort::new(inbox_0, 2),
            inbox_1,
            metrics: WorkerMetrics::default(),
            shared,
            awaiting: Default::default(),
            _polls: polls,
        }
    }

    fn router<'a>(&'a mut self, replies: &'a mut Vec<u8>) -> Router<'a> {
        Router {
            awaiting: &mut self.awaiting,
            shared: &self.shared,
            rooms: &mut self.rooms,
            port: &mut self.port,
            metrics: &self.metrics,
            key: 1,
            generation: 0,
            attachment: None,
            peer: IpKey::new("127.0.0.1".parse().unwrap(), 128),
            upgraded: false,
            shutting_down: false,
            replies,
            listener: Listener::Public,
        }
    }

    /// Sends worker 1 messages until its queue is full and one more waits
    /// in worker 0's overflow: worker 1 now counts as blocked.
    fn block_worker_1(&mut self) {
        let msg = WorkerMsg::Control(Arc::new(Control::Unsubscribe {
            user: "u".into(),
            channel: "c".into(),
            client: None,
        }));
        for _ in 0..2 {
            self.port
                .send(&self.shared.mesh, 1 << 1, &msg, 1, &self.metrics);
        }
        assert!(
            self.port.is_blocked(1 << 1),
            "precondition: worker 1 blocked"
        );
    }

    /// Worker 1 reads its inbox; worker 0 moves its overflow there.
    fn unblock_worker_1(&mut self) {
        while self.inbox_1.try_recv().is_ok() {
            let mut resumed = Vec::new();
            self.port.drain_overflow(&self.shared.mesh, &mut resumed);
        }
        assert!(!self.port.is_blocked(1 << 1), "worker 1 drained");
    }
}

fn publish_request(room: &str, body: &[u8]) -> (HttpRequest, Vec<u8>) {
    let head = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    match parse_request(head.as_bytes(), &HandshakeLimits::default()) {
        Ok(ParsedRequest::Http(req)) => (req, body.to_vec()),
        _ => panic!("not an HTTP request"),
    }
}

fn status_and_retry_after(bytes: &[u8]) -> (u16, Option<String>) {
    let text = String::from_utf8_lossy(bytes);
    let status = text[9..12].parse().unwrap();
    let retry = text
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(str::to_string);
    (status, retry)
}

#[test]
fn http_publish_into_a_blocked_destination_gets_503_with_retry_after() {
    let mut w = World::new();
    // Room "a" has members on worker 1 only.
    let _a = w.shared.directory.join("a", 1).unwrap();
    let (req, body) = publish_request("a", b"hello");
    let mut replies = Vec::new();

    // Not blocked: the head asks for the body, the publish is accepted.
    assert!(matches!(
        w.router(&mut replies).on_request_head(&req),
        HeadVerdict::ReadBody(5)
    ));
    let r = w.router(&mut replies).on_request(&req, &body);
    assert_eq!(status_and_retry_after(&r.bytes).0, 202);

    // Blocked: refused at the head (the body is not read) ...
    w.block_worker_1();
    let HeadVerdict::Answer(r) = w.router(&mut replies).on_request_head(&req) else {
        panic!("a publish into a blocked room must be answered at the head");
    };
    assert_eq!(
        status_and_retry_after(&r.bytes),
        (503, Some("1".to_string()))
    );
    assert!(!r.keep_alive, "the unread body ends the connection");
    // ... and refused too if the block began while the body was read.
    let r = w.router(&mut replies).on_request(&req, &body);
    assert_eq!(
        status_and_retry_after(&r.bytes),
        (503, Some("1".to_string()))
    );

    // A room whose members are all on unblocked workers is not affected.
    let (other, body_b) = publish_request("b", b"hi");
    let r = w.router(&mut replies).on_request(&other, &body_b);
    assert_eq!(status_and_retry_after(&r.bytes).0, 202);

    // Once worker 1 drains, publishing into "a" is accepted again.
    w.unblock_worker_1();
    let r = w.router(&mut replies).on_request(&req, &body);
    assert_eq!(status_and_retry_after(&r.bytes).0, 202);
}

fn get_request(path: &str) -> HttpRequest {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    match parse_request(head.as_bytes(), &HandshakeLimits::default()) {
        Ok(ParsedRequest::Http(req)) => req,
        _ => panic!("not an HTTP request"),
    }
}

#[test]
fn with_the_broker_down_publishes_get_503_health_says_degraded_and_no_room_stays() {
    use crate::broker::{Broker, BrokerMetrics, BrokerSettings};
    let mut w = World::new();
    let mut replies = Vec::new();
    let health = |w: &mut World, replies: &mut Vec<u8>| {
        let HeadVerdict::Answer(r) = w.router(replies).on_request_head(&get_request("/healthz"))
        else {
            panic!("/healthz is answered at the head");
        };
        String::from_utf8_lossy(&r.bytes).into_owned()
    };
    // Memory broker: as ever.
    assert!(health(&mut w, &mut replies).ends_with("\r\n\r\nok\n"));

    // A Redis that is not there: the bridge keeps trying in the
    // background; requests fail at once.
    let settings = BrokerSettings::for_url("unix:///nonexistent-wsrelay-test/redis.sock").unwrap();
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let (broker, mut ports) = Broker::start(settings, vec![waker]).unwrap();
    w.rooms.set_broker(ports.remove(0));
    w.shared.broker = Some(crate::server::BrokerStatus {
        metrics: broker.metrics().clone(),
        shards: 1,
    });
    let (req, body) = publish_request("a", b"hello");
    let r = w.router(&mut replies).on_request(&req, &body);
    assert_eq!(
        status_and_retry_after(&r.bytes),
        (503, Some("1".to_string()))
    );
    let text = String::from_utf8_lossy(&r.bytes);
    assert!(text.contains("broker unavailable: not published"), "{text}");
    // The room made for the publication did not stay behind.
    assert_eq!(w.rooms.id_of("a"), None);
    assert_eq!(w.shared.directory.len(), 0);
    assert_eq!(BrokerMetrics::get(&broker.metrics().publish_errors), 1);
    // Degraded, still 200 (docs/cluster.md: a 503 would take every node
    // out of the load balancer at once).
    let h = health(&mut w, &mut replies);
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(h.contains("degraded: broker down"), "{h}");
    // The API's publish: error 100, nothing delivered, no room either.
    {
        use crate::pubsub::api::{ApiEngine, PublishOptions};
        let mut api = crate::server::api_backend::ApiBackend {
            shared: &w.shared,
            rooms: &mut w.rooms,
            port: &mut w.port,
            metrics: &w.metrics,
        };
        let r = api.publish("b", b"\"x\"", &PublishOptions::default());
        assert_eq!(r, Err(crate::pubsub::proto::ErrorCode::Internal));
    }
    assert_eq!(w.rooms.id_of("b"), None);
    assert_eq!(w.shared.directory.len(), 0);
    assert_eq!(BrokerMetrics::get(&broker.metrics().publish_errors), 2);
    // A raw member's message still reaches this node (the raw protocol
    // has no answer for the error, which is counted and returned).
    let mut m = w
        .rooms
        .join(
            &w.shared.directory,
            "c",
            None,
            7,
            crate::server::http::MemberRole::Both,
            0,
        )
        .unwrap();
    let r = w
        .rooms
        .publish(m.room_id, MessageKind::Text, b"raw", Some((7, &mut m)));
    assert_eq!(r, Err(crate::broker::BrokerError::Unavailable));
    assert_ne!(m.published_epoch, 0, "appended to this iteration's batch");
    assert_eq!(BrokerMetrics::get(&broker.metrics().publish_errors), 3);
    broker.shutdown();
}
