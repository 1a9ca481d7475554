//! A private redis-server per test (unix socket in a temp dir, no
//! persistence, daemonized, stopped on drop), and a worker stand-in: a
//! `BrokerPort` with its own mio `Poll` and `Waker`, waited on the way a
//! worker loop does (sleep handshake, then `poll`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token as MioToken, Waker};
use wsrelay::broker::{
    Broker, BrokerError, BrokerEvent, BrokerPort, BrokerSettings, Envelope, Kind, Reply, Token,
};

#[path = "../common/redis_server.rs"]
mod redis_server;
pub use redis_server::{have_redis, RedisServer};

/// A node: one broker with one worker port.
pub struct Node {
    pub broker: Broker,
    pub port: BrokerPort,
    poll: Poll,
    _waker: Arc<Waker>,
    pub events: Vec<BrokerEvent>,
    pub replies: Vec<(Token, Result<Reply, BrokerError>)>,
}

impl Node {
    pub fn start(settings: BrokerSettings) -> Node {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), MioToken(0)).unwrap());
        let (broker, mut ports) = Broker::start(settings, vec![waker.clone()]).unwrap();
        Node {
            broker,
            port: ports.remove(0),
            poll,
            _waker: waker,
            events: Vec::new(),
            replies: Vec::new(),
        }
    }

    pub fn settings(url: &str) -> BrokerSettings {
        let mut s = BrokerSettings::for_url(url).unwrap();
        s.linger = Duration::ZERO;
        s
    }

    /// Takes what arrived; sleeps in `poll` (woken by the bridge) until
    /// `done` holds or `timeout` passes. Returns whether `done` held.
    pub fn wait(&mut self, timeout: Duration, done: impl FnMut(&Node) -> bool) -> bool {
        self.wait_with(timeout, Duration::from_millis(20), done)
    }

    /// Like [`Node::wait`], but sleeps in `poll` as long as the bridge does
    /// not wake it: proves that the bridge wakes the worker.
    pub fn wait_woken(&mut self, timeout: Duration, done: impl FnMut(&Node) -> bool) -> bool {
        self.wait_with(timeout, timeout, done)
    }

    fn wait_with(
        &mut self,
        timeout: Duration,
        max_sleep: Duration,
        mut done: impl FnMut(&Node) -> bool,
    ) -> bool {
        let until = Instant::now() + timeout;
        let mut ev = Events::with_capacity(8);
        loop {
            self.port.flush_interest();
            self.port.recv_events(&mut self.events);
            self.port.recv_replies(&mut self.replies);
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if self.port.prepare_sleep() {
                // Slices: some conditions (connection state) wake nobody.
                let slice = (until - now).min(max_sleep);
                self.poll.poll(&mut ev, Some(slice)).unwrap();
                self.port.awake();
            }
        }
    }

    pub fn wait_up(&mut self, channel: &str) {
        let c = channel.to_string();
        assert!(
            self.wait(Duration::from_secs(10), |n| n.port.is_up(&c)
                && n.broker.is_up()),
            "broker did not connect"
        );
    }

    /// Registers interest and waits for the subscription's confirmation.
    pub fn subscribe(&mut self, channel: &str) -> bool {
        self.port.interest(channel, true);
        let mut resub = false;
        let c = channel.to_string();
        assert!(
            self.wait(Duration::from_secs(10), |n| n.events.iter().any(|e| {
                matches!(e, BrokerEvent::Subscribed { channel, .. } if *channel == c)
            })),
            "no subscription confirmation for {channel}"
        );
        self.events.retain(|e| match e {
            BrokerEvent::Subscribed {
                channel: ch,
                resubscribed,
            } if *ch == c => {
                resub |= *resubscribed;
                false
            }
            _ => true,
        });
        resub
    }

    /// The reply to `token`, waiting for it.
    pub fn reply(&mut self, token: Token, timeout: Duration) -> Result<Reply, BrokerError> {
        assert!(
            self.wait(timeout, |n| n.replies.iter().any(|(t, _)| *t == token)),
            "no reply to request {token} within {timeout:?}"
        );
        let i = self.replies.iter().position(|(t, _)| *t == token).unwrap();
        self.replies.remove(i).1
    }

    /// Messages received so far (taken out of `events`).
    pub fn take_messages(&mut self) -> Vec<Arc<Envelope>> {
        let mut out = Vec::new();
        self.events.retain(|e| match e {
            BrokerEvent::Message(m) => {
                out.push(m.clone());
                false
            }
            _ => true,
        });
        out
    }

    pub fn envelope(&self, channel: &str, kind: Kind, payload: &[u8]) -> Envelope {
        Envelope {
            kind,
            origin: self.port.node(),
            channel: channel.to_string(),
            position: None,
            info: None,
            payload: payload.to_vec(),
        }
    }
}

impl Node {
    /// Messages received so far (left in `events`).
    pub fn take_messages_peek(&self) -> Vec<Arc<Envelope>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                BrokerEvent::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}
