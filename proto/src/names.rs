//! Room names and user ids: a documented charset and length, so they can be
//! used in Redis keys (no `{`/`}` to break hash tags), URLs and logs as they are.

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

/// A room name: 1 to 64 bytes of `[A-Za-z0-9-_.:@]`.
pub fn check_room(s: &str) -> Result<(), NameError> {
    check(s, MAX_ROOM_LEN)
}

/// A user id: 1 to 64 bytes of `[A-Za-z0-9-_.:@]`.
pub fn check_user(s: &str) -> Result<(), NameError> {
    check(s, MAX_USER_LEN)
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
    }
}
