//! Close codes (RFC 6455 §7.4) and the close handshake state machine (§7.1).

use std::fmt;

/// A WebSocket close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// Never sent on the wire: "no status code was present".
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Never sent on the wire: "connection closed abnormally".
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may send this code in a close frame.
    ///
    /// Valid: 1000-1003, 1007-1014 (registered), 3000-4999 (libraries and
    /// applications). Invalid: < 1000, 1004-1006 (reserved / never on the
    /// wire), 1015 (TLS failure, never on the wire), 1016-2999, >= 5000.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a connection is in the close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Data may flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's; the caller enforces a
    /// deadline. Incoming data is ignored, nothing more is sent.
    Closing,
    /// The close handshake is over (or the connection failed): flush what is
    /// queued, then close TCP. The server closes TCP first (§7.1.1).
    Closed,
}

/// What the caller must do after a close-related event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Send a close frame with this code, then (once flushed) close TCP.
    SendCloseAndShutdown(CloseCode),
    /// Send a close frame with this code and wait for the peer's answer.
    SendCloseAndWait(CloseCode),
    /// Send an empty close frame (the peer sent no status), then close TCP.
    SendEmptyCloseAndShutdown,
    /// Nothing to send; close TCP once the queue is flushed.
    Shutdown,
    /// Nothing to do (already closing or closed).
    None,
}

/// The close handshake as a pure state machine: no timers, no IO.
#[derive(Clone, Copy, Debug)]
pub struct CloseHandshake {
    state: CloseState,
}

impl Default for CloseHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl CloseHandshake {
    pub fn new() -> Self {
        CloseHandshake {
            state: CloseState::Open,
        }
    }

    pub fn state(&self) -> CloseState {
        self.state
    }

    /// Data frames may be sent only while open.
    pub fn can_send_data(&self) -> bool {
        self.state == CloseState::Open
    }

    /// The peer sent a close frame (already validated) with `code`, or with
    /// no status when `None`.
    pub fn on_peer_close(&mut self, code: Option<CloseCode>) -> CloseAction {
        match self.state {
            CloseState::Open => {
                self.state = CloseState::Closed;
                match code {
                    Some(code) => CloseAction::SendCloseAndShutdown(code),
                    None => CloseAction::SendEmptyCloseAndShutdown,
                }
            }
            CloseState::Closing => {
                self.state = CloseState::Closed;
                CloseAction::Shutdown
            }
            CloseState::Closed => CloseAction::None,
        }
    }

    /// We start the close (shutdown, slow consumer, timeouts, ...).
    pub fn initiate(&mut self, code: CloseCode) -> CloseAction {
        match self.state {
            CloseState::Open => {
                self.state = CloseState::Closing;
                CloseAction::SendCloseAndWait(code)
            }
            _ => CloseAction::None,
        }
    }

    /// The peer broke the protocol: send `code` and close TCP without
    /// waiting for an answer (§7.1.7 "fail the WebSocket connection").
    pub fn fail(&mut self, code: CloseCode) -> CloseAction {
        match self.state {
            CloseState::Open => {
                self.state = CloseState::Closed;
                CloseAction::SendCloseAndShutdown(code)
            }
            CloseState::Closing => {
                self.state = CloseState::Closed;
                CloseAction::Shutdown
            }
            CloseState::Closed => CloseAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c} should be valid");
        }
        for c in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c} should be invalid");
        }
    }

    #[test]
    fn peer_close_is_echoed_then_closed() {
        let mut h = CloseHandshake::new();
        assert!(h.can_send_data());
        assert_eq!(
            h.on_peer_close(Some(CloseCode(4001))),
            CloseAction::SendCloseAndShutdown(CloseCode(4001))
        );
        assert_eq!(h.state(), CloseState::Closed);
        assert!(!h.can_send_data());
        assert_eq!(h.on_peer_close(None), CloseAction::None);
        assert_eq!(h.initiate(CloseCode::NORMAL), CloseAction::None);
    }

    #[test]
    fn empty_peer_close_gets_empty_close() {
        let mut h = CloseHandshake::new();
        assert_eq!(
            h.on_peer_close(None),
            CloseAction::SendEmptyCloseAndShutdown
        );
    }

    #[test]
    fn we_initiate_then_peer_answers() {
        let mut h = CloseHandshake::new();
        assert_eq!(
            h.initiate(CloseCode::GOING_AWAY),
            CloseAction::SendCloseAndWait(CloseCode::GOING_AWAY)
        );
        assert_eq!(h.state(), CloseState::Closing);
        assert!(!h.can_send_data());
        assert_eq!(h.initiate(CloseCode::NORMAL), CloseAction::None);
        assert_eq!(
            h.on_peer_close(Some(CloseCode::NORMAL)),
            CloseAction::Shutdown
        );
        assert_eq!(h.state(), CloseState::Closed);
    }

    #[test]
    fn failure_closes_immediately() {
        let mut h = CloseHandshake::new();
        assert_eq!(
            h.fail(CloseCode::PROTOCOL_ERROR),
            CloseAction::SendCloseAndShutdown(CloseCode::PROTOCOL_ERROR)
        );
        assert_eq!(h.fail(CloseCode::PROTOCOL_ERROR), CloseAction::None);
        let mut h = CloseHandshake::new();
        h.initiate(CloseCode::GOING_AWAY);
        assert_eq!(h.fail(CloseCode::PROTOCOL_ERROR), CloseAction::Shutdown);
    }
}
