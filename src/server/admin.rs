//! The private admin listener: which routes each listener serves, and
//! what `/readyz` answers.
//!
//! With `admin_listen` set, worker 0 owns a second listener (no
//! `SO_REUSEPORT`, one socket) whose connections are plain HTTP sessions
//! like any other, on the same event loop, but are not counted by
//! [`Admission`](super::admission::Admission): probes and scrapes are
//! answered while the public side is at `max_connections`. They have a
//! bound of their own, [`ADMIN_MAX_CONNECTIONS`]. The admin listener
//! serves `/healthz`, `/readyz`, `/metrics`, `POST /publish/{room}` and
//! the server API (`/api/*`), never a WebSocket; the public listener then
//! serves the WebSocket routes (and `/demo`) plus the HTTP route groups
//! listed in `public_routes`, and answers 404 to the others. Without
//! `admin_listen` the one listener serves everything.

use crate::config::Config;
use mio::Token;

/// Token of the admin listener in worker 0's poll.
pub const ADMIN_LISTENER: Token = Token(usize::MAX - 3);

/// Admin connections held at once (probes, scrapes, API clients); beyond,
/// a new one is answered 503 and closed. They are not counted against
/// `max_connections`, so they need a bound of their own.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// The plain-HTTP route groups that can move between the listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteGroup {
    /// `/healthz`, `/readyz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `POST /publish/{room}`.
    Publish,
    /// `/api`, `/api/<method>`.
    Api,
}

impl RouteGroup {
    const ALL: [RouteGroup; 4] = [
        RouteGroup::Health,
        RouteGroup::Metrics,
        RouteGroup::Publish,
        RouteGroup::Api,
    ];

    /// The name used in `public_routes`.
    pub fn name(self) -> &'static str {
        match self {
            RouteGroup::Health => "health",
            RouteGroup::Metrics => "metrics",
            RouteGroup::Publish => "publish",
            RouteGroup::Api => "api",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Which listener serves what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSplit {
    /// An admin listener exists.
    admin: bool,
    /// Groups the public listener keeps (all of them without an admin
    /// listener).
    public: u8,
}

impl RouteSplit {
    pub fn from_config(c: &Config) -> RouteSplit {
        if c.admin_listen.is_none() {
            return RouteSplit {
                admin: false,
                public: u8::MAX,
            };
        }
        let public = RouteGroup::ALL
            .iter()
            .filter(|g| c.public_routes.iter().any(|r| r == g.name()))
            .fold(0, |bits, g| bits | g.bit());
        RouteSplit {
            admin: true,
            public,
        }
    }

    /// Whether `listener` serves the routes of `group`: the admin listener
    /// serves every HTTP group; the public one those it keeps.
    pub fn serves(self, listener: Listener, group: RouteGroup) -> bool {
        match listener {
            Listener::Admin => true,
            Listener::Public => self.public & group.bit() != 0,
        }
    }

    /// WebSocket routes (and the demo page, which opens one) are served
    /// on the public listener only.
    pub fn websockets(self, listener: Listener) -> bool {
        listener == Listener::Public
    }

    /// Whether an admin listener exists.
    pub fn has_admin(self) -> bool {
        self.admin
    }
}

/// What `/readyz` answers: ready while the relay accepts connections.
/// Not ready while shutting down, or while the public side is at
/// `max_connections` (a load balancer should send new clients elsewhere;
/// the connections held are served as before). Not the broker's state:
/// every node loses Redis at once and each still serves its own clients,
/// so that would empty the cluster (`/healthz` says degraded instead;
/// docs/cluster.md).
pub fn readiness(shutting_down: bool, open: usize, max_connections: usize) -> (u16, &'static str) {
    if shutting_down {
        (503, "not ready: shutting down\n")
    } else if open >= max_connections {
        (503, "not ready: at max_connections\n")
    } else {
        (200, "ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(admin: Option<&str>, public: &[&str]) -> RouteSplit {
        RouteSplit::from_config(&Config {
            admin_listen: admin.map(|a| a.parse().unwrap()),
            public_routes: public.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        })
    }

    #[test]
    fn one_listener_serves_everything() {
        let s = split(None, &[]);
        assert!(!s.has_admin());
        for g in RouteGroup::ALL {
            assert!(s.serves(Listener::Public, g), "{g:?}");
        }
        assert!(s.websockets(Listener::Public));
    }

    #[test]
    fn with_an_admin_listener_the_public_one_keeps_websockets_and_the_listed_groups() {
        let s = split(Some("127.0.0.1:9002"), &[]);
        assert!(s.has_admin());
        for g in RouteGroup::ALL {
            assert!(!s.serves(Listener::Public, g), "{g:?}");
            assert!(s.serves(Listener::Admin, g), "{g:?}");
        }
        assert!(s.websockets(Listener::Public));
        assert!(!s.websockets(Listener::Admin));

        let s = split(Some("127.0.0.1:9002"), &["health", "publish"]);
        assert!(s.serves(Listener::Public, RouteGroup::Health));
        assert!(s.serves(Listener::Public, RouteGroup::Publish));
        assert!(!s.serves(Listener::Public, RouteGroup::Metrics));
        assert!(!s.serves(Listener::Public, RouteGroup::Api));
        // The admin listener still serves what the public one keeps.
        assert!(s.serves(Listener::Admin, RouteGroup::Health));
        assert!(s.serves(Listener::Admin, RouteGroup::Publish));
    }

    #[test]
    fn group_names_are_the_configured_ones() {
        let names: Vec<&str> = RouteGroup::ALL.iter().map(|g| g.name()).collect();
        assert_eq!(names, crate::config::PUBLIC_ROUTE_GROUPS);
    }

    #[test]
    fn readiness_follows_accepting() {
        assert_eq!(readiness(false, 0, 10).0, 200);
        assert_eq!(readiness(false, 9, 10).0, 200);
        assert_eq!(
            readiness(false, 10, 10),
            (503, "not ready: at max_connections\n")
        );
        assert_eq!(readiness(true, 0, 10), (503, "not ready: shutting down\n"));
    }
}
