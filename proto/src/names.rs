//! Room names and user ids: a documented charset and length, so they can be
//! used in Redis keys (no `{`/`}` to break hash tags), URLs and logs as they are.
//!
//! [`RoomName`] and [`UserId`] are the validated forms: every edge (client
//! frames, HTTP paths, gRPC requests, settings) parses outside input into
//! them once, and everything behind the edge takes the newtype, so an
//! unchecked name cannot reach a key or a log line.

/// Longest accepted room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest accepted user id, in bytes.
pub const MAX_USER_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { max: usize },
    BadChar(char),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => f.write_str("must not be empty"),
            NameError::TooLong { max } => write!(f, "must be at most {max} bytes"),
            NameError::BadChar(c) => write!(
                f,
                "contains {c:?}; allowed are ASCII letters, digits and - _ . : @"
            ),
        }
    }
}

impl std::error::Error for NameError {}

fn check(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong { max });
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// A room name: 1 to 64 bytes of `[A-Za-z0-9-_.:@]`, or a personal room:
/// `#` and a user id (its user's own room).
pub fn check_room(s: &str) -> Result<(), NameError> {
    match s.strip_prefix(PERSONAL) {
        Some(user) => check_user(user),
        None => check(s, MAX_ROOM_LEN),
    }
}

/// What starts a personal room's name: `#alice` is alice's.
pub const PERSONAL: char = '#';

/// A user id: 1 to 64 bytes of `[A-Za-z0-9-_.:@]`.
pub fn check_user(s: &str) -> Result<(), NameError> {
    check(s, MAX_USER_LEN)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `s` against the charset and length rules.
            pub fn parse(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                $check(&s)?;
                Ok($name(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $name::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(s).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A validated room name (see [`check_room`]).
    RoomName,
    check_room
);

name_type!(
    /// A validated user id (see [`check_user`]); node ids follow the same rule.
    UserId,
    check_user
);

impl RoomName {
    /// The personal room of `user`: every connection of the user is in it.
    pub fn personal(user: &UserId) -> RoomName {
        RoomName(format!("{PERSONAL}{user}"))
    }

    /// Whose personal room this is, if it is one.
    pub fn personal_user(&self) -> Option<&str> {
        self.0.strip_prefix(PERSONAL)
    }
}

/// Whether `room` is a personal room (`#user`).
pub fn is_personal(room: &str) -> bool {
    room.starts_with(PERSONAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        assert!(check_room("chat-1.eu:general").is_ok());
        assert_eq!(check_room(""), Err(NameError::Empty));
        assert_eq!(check_room("a{b}"), Err(NameError::BadChar('{')));
        assert_eq!(
            check_room(&"x".repeat(65)),
            Err(NameError::TooLong { max: 64 })
        );
        assert_eq!(check_room("é"), Err(NameError::BadChar('é')));
        // A personal room: `#` and a user id, nothing else with a `#`.
        assert!(check_room("#alice").is_ok());
        assert!(check_room(&format!("#{}", "u".repeat(64))).is_ok());
        assert_eq!(check_room("#"), Err(NameError::Empty));
        assert_eq!(check_room("##a"), Err(NameError::BadChar('#')));
        assert_eq!(check_room("a#b"), Err(NameError::BadChar('#')));
        let alice = UserId::parse("alice").unwrap();
        let room = RoomName::personal(&alice);
        assert_eq!(
            (room.as_str(), room.personal_user()),
            ("#alice", Some("alice"))
        );
        assert_eq!(RoomName::parse("lobby").unwrap().personal_user(), None);
        assert!(is_personal("#alice") && !is_personal("alice"));
    }

    #[test]
    fn newtypes_parse_once() {
        let r = RoomName::parse("lobby").unwrap();
        assert_eq!(&*r, "lobby");
        assert_eq!(r, "lobby");
        assert!(RoomName::parse("a b").is_err());
        let u: UserId = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(u.as_str(), "alice");
        assert!(serde_json::from_str::<UserId>("\"{x}\"").is_err());
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"alice\"");
    }
}
