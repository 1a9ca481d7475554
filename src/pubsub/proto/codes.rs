//! Reply error codes and disconnect codes of the Centrifugo client protocol.
//!
//! Each code is declared exactly once, in a table below, because SDKs branch on
//! the numbers (retry, reconnect, give up) and a typo here silently changes what
//! a client does. Sources, checked against the stored snapshots:
//!
//! - error codes: `centrifugal/centrifuge` `errors.go` (`ErrorInternal` ...
//!   `ErrorUnrecoverablePosition`), Centrifugo docs "Client protocol / error
//!   codes"; `temporary` is the flag the server sets in the reply.
//! - disconnect codes: `centrifugal/centrifuge` `disconnect.go`; the reconnect
//!   rule is the one centrifuge-js applies to a WebSocket close code
//!   (`src/centrifuge.ts`): codes 3500..=3999 and 4500..=4999 are terminal,
//!   everything else from 3000 up reconnects.

/// Declares a code enum once: variant, number, text, flag. The flag is
/// `temporary` for [`ErrorCode`] and `reconnect` for [`DisconnectCode`].
macro_rules! code_table {
    (
        $(#[$meta:meta])*
        pub enum $name:ident, $flag:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal, $fl:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every code in the table, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The number sent on the wire.
            pub const fn code(self) -> u32 {
                match self { $($name::$variant => $code,)+ }
            }

            /// The fixed text sent with the code.
            pub const fn text(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            #[doc = concat!("The `", stringify!($flag), "` flag of this code.")]
            pub const fn $flag(self) -> bool {
                match self { $($name::$variant => $fl,)+ }
            }

            /// Looks a code up by number.
            pub fn from_code(code: u32) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

code_table! {
    /// Errors sent in a command reply: `{"id":N,"error":{"code":C,"message":M}}`.
    ///
    /// A reply error keeps the connection open; the client decides per code.
    /// centrifuge-js retries a subscribe/connect step when `code < 100`,
    /// `temporary` is true, or the code is 109 (token expired → refresh).
    pub enum ErrorCode, temporary {
        /// Unexpected server failure; the client may retry.
        Internal = 100, "internal server error", true;
        /// Credentials missing or not accepted.
        Unauthorized = 101, "unauthorized", false;
        /// Channel (namespace) not configured on the server.
        UnknownChannel = 102, "unknown channel", false;
        /// The user may not perform this operation on this channel.
        PermissionDenied = 103, "permission denied", false;
        /// RPC method not registered (not: unknown command type, which is a
        /// `bad request` disconnect).
        MethodNotFound = 104, "method not found", false;
        /// Subscribe to a channel the connection is already subscribed to.
        AlreadySubscribed = 105, "already subscribed", false;
        /// A configured limit (channels, history size, ...) was hit.
        LimitExceeded = 106, "limit exceeded", false;
        /// Well-formed but semantically invalid request (e.g. bad channel name).
        BadRequest = 107, "bad request", false;
        /// Feature not enabled for this channel (history, presence, publish...).
        NotAvailable = 108, "not available", false;
        /// Token expired: the SDK fetches a new token and retries.
        TokenExpired = 109, "token expired", false;
        /// Connection or subscription expired (refresh was not done in time).
        Expired = 110, "expired", false;
        /// Rate limited; temporary, the client backs off and retries.
        TooManyRequests = 111, "too many requests", true;
        /// Recovery asked for a position the history no longer holds.
        UnrecoverablePosition = 112, "unrecoverable position", false;
    }
}

code_table! {
    /// Why the server closes a connection. Sent as the WebSocket close code and
    /// reason (the JSON transport of protocol v2 puts nothing else in the close
    /// frame), or as a `disconnect` push before closing.
    ///
    /// `reconnect` follows the range rule centrifuge-js applies: 3000..=3499
    /// and 4000..=4499 reconnect, 3500..=3999 and 4500..=4999 are terminal.
    pub enum DisconnectCode, reconnect {
        /// Closed without advice (what the server records for a client close).
        ConnectionClosed = 3000, "connection closed", true;
        /// Node shutting down; reconnect to another node.
        Shutdown = 3001, "shutdown", true;
        /// Internal error on the server.
        ServerError = 3004, "internal server error", true;
        /// Connection token expired and was not refreshed.
        Expired = 3005, "connection expired", true;
        /// Subscription token expired and was not refreshed.
        SubExpired = 3006, "subscription expired", true;
        /// The client did not read fast enough (outbound queue overflow).
        Slow = 3008, "slow", true;
        /// Writing to the connection failed.
        WriteError = 3009, "write error", true;
        /// The server lost the client's stream position; reconnecting recovers.
        InsufficientState = 3010, "insufficient state", true;
        /// Server asked the client to reconnect.
        ForceReconnect = 3011, "force reconnect", true;
        /// No pong to the server's ping in time.
        NoPong = 3012, "no pong", true;
        /// Too many commands (per frame or per time); reconnect after backoff.
        TooManyRequests = 3013, "too many requests", true;
        /// Cached state/token no longer valid: the SDK drops its token and
        /// subscription positions, then reconnects (centrifuge-js 5.x
        /// `disconnectedCodes.stateInvalidated`).
        StateInvalidated = 3014, "state invalidated", true;
        /// Token invalid (bad signature, wrong audience...); terminal.
        InvalidToken = 3500, "invalid token", false;
        /// Malformed frame or command, command before `connect`, missing id,
        /// unknown command type; terminal.
        BadRequest = 3501, "bad request", false;
        /// Did not send `connect` in time after dialing.
        Stale = 3502, "stale", false;
        /// Server disconnected the client and asks it not to come back.
        ForceNoReconnect = 3503, "force disconnect", false;
        /// Too many connections (per user or globally).
        ConnectionLimit = 3504, "connection limit", false;
        /// Too many channels for this connection.
        ChannelLimit = 3505, "channel limit", false;
        /// The connection's codec cannot carry the data (binary to JSON client).
        InappropriateProtocol = 3506, "inappropriate protocol", false;
        /// Not allowed to use the server.
        PermissionDenied = 3507, "permission denied", false;
        /// Feature not available (e.g. `send` without a handler).
        NotAvailable = 3508, "not available", false;
        /// The client produced too many reply errors.
        TooManyErrors = 3509, "too many errors", false;
        /// WebSocket 1009 "message too big": what Centrifugo's read limit
        /// closes with for an oversize frame. Not a Centrifugo 3xxx code, but
        /// centrifuge-js maps exactly 1009 to its terminal `messageSizeLimit`
        /// state, so this is the number to use for an oversize frame/command.
        MessageTooBig = 1009, "message size limit exceeded", false;
    }
}

code_table! {
    /// Why the server ends one subscription: the `unsubscribe` push. Source:
    /// `centrifugal/centrifuge` `unsubscribe.go`; centrifuge-js resubscribes
    /// when `code >= 2500` and stays unsubscribed below. Codes 0 (client
    /// unsubscribed) and 1 (client disconnected) are server-internal, never
    /// sent, so they are not listed.
    pub enum UnsubscribeCode, resubscribe {
        /// Server removed the subscription; terminal for the subscription.
        Server = 2000, "server unsubscribe", false;
        /// The server lost the subscription's stream position.
        InsufficientState = 2500, "insufficient state", true;
        /// Subscription token expired and was not refreshed.
        Expired = 2501, "subscription expired", true;
        /// Cached subscription state/token invalid; resubscribe from scratch.
        StateInvalidated = 2502, "state invalidated", true;
    }
}

impl DisconnectCode {
    /// The reconnect decision centrifuge-js makes for an arbitrary close code
    /// (custom application codes 4000..=4999 included). Codes below 3000 are
    /// transport-level: the JS client reconnects except for 1009.
    pub fn reconnect_for(code: u32) -> bool {
        !(code == 1009 || (3500..4000).contains(&code) || (4500..5000).contains(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_table() {
        let want: [(u32, &str, bool); 13] = [
            (100, "internal server error", true),
            (101, "unauthorized", false),
            (102, "unknown channel", false),
            (103, "permission denied", false),
            (104, "method not found", false),
            (105, "already subscribed", false),
            (106, "limit exceeded", false),
            (107, "bad request", false),
            (108, "not available", false),
            (109, "token expired", false),
            (110, "expired", false),
            (111, "too many requests", true),
            (112, "unrecoverable position", false),
        ];
        let got: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.code(), c.text(), c.temporary()))
            .collect();
        assert_eq!(got, want);
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(ErrorCode::from_code(99), None);
    }

    #[test]
    fn disconnect_code_table() {
        let want: [(u32, &str, bool); 23] = [
            (3000, "connection closed", true),
            (3001, "shutdown", true),
            (3004, "internal server error", true),
            (3005, "connection expired", true),
            (3006, "subscription expired", true),
            (3008, "slow", true),
            (3009, "write error", true),
            (3010, "insufficient state", true),
            (3011, "force reconnect", true),
            (3012, "no pong", true),
            (3013, "too many requests", true),
            (3014, "state invalidated", true),
            (3500, "invalid token", false),
            (3501, "bad request", false),
            (3502, "stale", false),
            (3503, "force disconnect", false),
            (3504, "connection limit", false),
            (3505, "channel limit", false),
            (3506, "inappropriate protocol", false),
            (3507, "permission denied", false),
            (3508, "not available", false),
            (3509, "too many errors", false),
            (1009, "message size limit exceeded", false),
        ];
        let got: Vec<_> = DisconnectCode::ALL
            .iter()
            .map(|c| (c.code(), c.text(), c.reconnect()))
            .collect();
        assert_eq!(got, want);
        for c in DisconnectCode::ALL {
            // The table agrees with the range rule the JS client applies.
            assert_eq!(
                c.reconnect(),
                DisconnectCode::reconnect_for(c.code()),
                "{c:?}"
            );
            assert_eq!(DisconnectCode::from_code(c.code()), Some(*c));
            // Reasons must fit a close frame (123 bytes).
            assert!(c.text().len() <= 123);
        }
        assert!(DisconnectCode::reconnect_for(4000) && DisconnectCode::reconnect_for(5000));
        assert!(!DisconnectCode::reconnect_for(4500) && !DisconnectCode::reconnect_for(4999));
    }

    #[test]
    fn unsubscribe_code_table() {
        let got: Vec<_> = UnsubscribeCode::ALL
            .iter()
            .map(|c| (c.code(), c.text(), c.resubscribe()))
            .collect();
        assert_eq!(
            got,
            [
                (2000, "server unsubscribe", false),
                (2500, "insufficient state", true),
                (2501, "subscription expired", true),
                (2502, "state invalidated", true),
            ]
        );
        for c in UnsubscribeCode::ALL {
            assert_eq!(
                c.resubscribe(),
                c.code() >= 2500,
                "JS resubscribes iff code >= 2500"
            );
        }
    }
}
