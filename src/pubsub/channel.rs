//! Channel names of the Centrifugo protocol.
//!
//! Grammar (bytes; `ROOM` is today's room-name set `[A-Za-z0-9._~-]`, see
//! [`crate::server::directory::valid_room_name`]):
//!
//! ```text
//! channel   = [ "$" ] [ namespace ":" ] name [ "#" users ]
//! namespace = 1*ROOM                  ; before the first ':'
//! name      = *( ROOM / ":" )         ; may be empty only if "#" follows
//! users     = user *( "," user )      ; user = 1*ROOM
//! ```
//!
//! - `:` separates the namespace, which selects per-namespace options
//!   (history, presence, permissions). No `:` → the default namespace.
//! - `$` marks a private channel: subscribing needs a subscription token.
//!   Centrifugo made this prefix configurable and then optional; we parse it
//!   so the auth layer can decide, and it is not part of the namespace.
//! - `#` starts the user-limited part: only the listed users (comma
//!   separated) may subscribe, with no token (`dialog#42,43`, `#42`).
//!
//! The whole name, markers included, is bounded by a byte length so that it
//! always fits a room key.

use super::proto::ErrorCode;
use std::fmt;

/// Private channel prefix.
pub const PRIVATE_PREFIX: u8 = b'$';
/// Namespace separator.
pub const NAMESPACE_SEPARATOR: u8 = b':';
/// Start of the user-limited part.
pub const USER_BOUNDARY: u8 = b'#';
/// Separator between users of the user-limited part.
pub const USER_SEPARATOR: u8 = b',';

fn room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

/// Why a channel name is invalid. All are answered with reply error
/// [`ErrorCode::BadRequest`] (107); the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// Byte not allowed at this offset.
    BadByte {
        at: usize,
    },
    /// `:` with nothing before it.
    EmptyNamespace,
    /// No name and no user-limited part.
    EmptyName,
    /// `#` not followed by users, or an empty user between commas.
    EmptyUser,
}

impl ChannelError {
    /// The reply error for a command naming this channel.
    pub fn reply_error(self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => f.write_str("empty channel"),
            ChannelError::TooLong { len, max } => write!(f, "channel {len} bytes > {max}"),
            ChannelError::BadByte { at } => write!(f, "invalid byte at {at} in channel"),
            ChannelError::EmptyNamespace => f.write_str("empty namespace in channel"),
            ChannelError::EmptyName => f.write_str("empty channel name"),
            ChannelError::EmptyUser => f.write_str("empty user in channel"),
        }
    }
}

impl std::error::Error for ChannelError {}

/// A validated channel name, with its parts borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    full: &'a str,
    private: bool,
    namespace: &'a str,
    name: &'a str,
    users: Option<&'a str>,
}

impl<'a> ChannelName<'a> {
    /// Validates `channel` (at most `max_len` bytes) and splits it.
    pub fn parse(channel: &'a str, max_len: usize) -> Result<Self, ChannelError> {
        if channel.is_empty() {
            return Err(ChannelError::Empty);
        }
        if channel.len() > max_len {
            return Err(ChannelError::TooLong {
                len: channel.len(),
                max: max_len,
            });
        }
        let private = channel.as_bytes()[0] == PRIVATE_PREFIX;
        let skip = usize::from(private);
        let rest = &channel[skip..];
        let (head, users) = match rest.find(char::from(USER_BOUNDARY)) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (namespace, name, name_at) = match head.find(char::from(NAMESPACE_SEPARATOR)) {
            Some(0) => return Err(ChannelError::EmptyNamespace),
            Some(i) => (&head[..i], &head[i + 1..], skip + i + 1),
            None => ("", head, skip),
        };
        if let Some(at) = namespace.bytes().position(|b| !room_byte(b)) {
            return Err(ChannelError::BadByte { at: skip + at });
        }
        if let Some(at) = name
            .bytes()
            .position(|b| !room_byte(b) && b != NAMESPACE_SEPARATOR)
        {
            return Err(ChannelError::BadByte { at: name_at + at });
        }
        match users {
            None if name.is_empty() => return Err(ChannelError::EmptyName),
            None => {}
            Some(list) => {
                let users_at = skip + head.len() + 1;
                let mut at = users_at;
                for user in list.split(char::from(USER_SEPARATOR)) {
                    if user.is_empty() {
                        return Err(ChannelError::EmptyUser);
                    }
                    if let Some(i) = user.bytes().position(|b| !room_byte(b)) {
                        return Err(ChannelError::BadByte { at: at + i });
                    }
                    at += user.len() + 1;
                }
            }
        }
        Ok(ChannelName {
            full: channel,
            private,
            namespace,
            name,
            users,
        })
    }

    /// The channel as sent by the client.
    pub fn as_str(&self) -> &'a str {
        self.full
    }

    /// Namespace, `""` for the default namespace.
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }

    /// The part between namespace and user-limited part.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Starts with `$`: a subscription token is required.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Has a `#users` part.
    pub fn is_user_limited(&self) -> bool {
        self.users.is_some()
    }

    /// Users allowed by the `#` part (empty if not user-limited).
    pub fn allowed_users(&self) -> impl Iterator<Item = &'a str> {
        self.users
            .into_iter()
            .flat_map(|u| u.split(char::from(USER_SEPARATOR)))
    }

    /// Whether `user` may subscribe by the `#` rule alone (always true when
    /// the channel is not user-limited).
    pub fn allows_user(&self, user: &str) -> bool {
        self.users.is_none() || self.allowed_users().any(|u| u == user)
    }
}

/// Namespace of a channel without validating it: the part before the first
/// `:` (after an optional `$`), or `""` (default namespace) if there is none.
/// `chat:room1` → `chat`, `room1` → `""`, `$chat:x` → `chat`.
pub fn channel_namespace(channel: &str) -> &str {
    let rest = channel
        .strip_prefix(char::from(PRIVATE_PREFIX))
        .unwrap_or(channel);
    let head = rest.split(char::from(USER_BOUNDARY)).next().unwrap_or("");
    match head.find(char::from(NAMESPACE_SEPARATOR)) {
        Some(i) => &head[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ChannelName<'_> {
        ChannelName::parse(s, 64).unwrap()
    }

    #[test]
    fn plain_names_follow_the_room_rule() {
        let c = ok("chat.general_1~-x");
        assert_eq!(
            (c.namespace(), c.name(), c.is_private()),
            ("", "chat.general_1~-x", false)
        );
        assert!(!c.is_user_limited());
        assert!(c.allows_user("anyone"));
        assert_eq!(ChannelName::parse("", 64), Err(ChannelError::Empty));
        assert_eq!(
            ChannelName::parse("a/b", 64),
            Err(ChannelError::BadByte { at: 1 })
        );
        assert_eq!(
            ChannelName::parse("é", 64),
            Err(ChannelError::BadByte { at: 0 })
        );
        assert_eq!(
            ChannelName::parse("a b", 64),
            Err(ChannelError::BadByte { at: 1 })
        );
    }

    #[test]
    fn length_counts_every_byte_including_markers() {
        assert!(ChannelName::parse(&"a".repeat(64), 64).is_ok());
        let long = format!("${}", "a".repeat(64));
        assert_eq!(
            ChannelName::parse(&long, 64),
            Err(ChannelError::TooLong { len: 65, max: 64 })
        );
    }

    #[test]
    fn namespaces() {
        let c = ok("chat:room1");
        assert_eq!((c.namespace(), c.name()), ("chat", "room1"));
        let c = ok("chat:room:1");
        assert_eq!((c.namespace(), c.name()), ("chat", "room:1"));
        assert_eq!(
            ChannelName::parse(":room", 64),
            Err(ChannelError::EmptyNamespace)
        );
        assert_eq!(
            ChannelName::parse("chat:", 64),
            Err(ChannelError::EmptyName)
        );
        assert_eq!(
            ChannelName::parse("c!t:x", 64),
            Err(ChannelError::BadByte { at: 1 })
        );
        assert_eq!(
            ChannelName::parse("ct:x!", 64),
            Err(ChannelError::BadByte { at: 4 })
        );
        assert_eq!(channel_namespace("chat:room1"), "chat");
        assert_eq!(channel_namespace("room1"), "");
        assert_eq!(channel_namespace("$chat:x"), "chat");
        assert_eq!(channel_namespace("dialog#a:b"), "");
        assert_eq!(channel_namespace(""), "");
    }

    #[test]
    fn private_prefix() {
        let c = ok("$secret");
        assert!(c.is_private());
        assert_eq!(
            (c.namespace(), c.name(), c.as_str()),
            ("", "secret", "$secret")
        );
        let c = ok("$ns:secret");
        assert_eq!((c.namespace(), c.name()), ("ns", "secret"));
        assert_eq!(ChannelName::parse("$", 64), Err(ChannelError::EmptyName));
        assert_eq!(
            ChannelName::parse("a$", 64),
            Err(ChannelError::BadByte { at: 1 })
        );
    }

    #[test]
    fn user_limited_channels() {
        let c = ok("dialog#42,43");
        assert!(c.is_user_limited());
        assert_eq!(c.name(), "dialog");
        assert_eq!(c.allowed_users().collect::<Vec<_>>(), ["42", "43"]);
        assert!(c.allows_user("43"));
        assert!(!c.allows_user("4"));
        let c = ok("#42");
        assert_eq!((c.namespace(), c.name()), ("", ""));
        assert!(c.allows_user("42"));
        let c = ok("$chat:#u1");
        assert_eq!((c.namespace(), c.is_private()), ("chat", true));
        assert_eq!(ChannelName::parse("d#", 64), Err(ChannelError::EmptyUser));
        assert_eq!(
            ChannelName::parse("d#1,,2", 64),
            Err(ChannelError::EmptyUser)
        );
        assert_eq!(
            ChannelName::parse("d#1,2#3", 64),
            Err(ChannelError::BadByte { at: 5 })
        );
        assert_eq!(
            ChannelName::parse("d#1,x:y", 64),
            Err(ChannelError::BadByte { at: 5 })
        );
        assert_eq!(ChannelError::EmptyUser.reply_error(), ErrorCode::BadRequest);
    }
}
