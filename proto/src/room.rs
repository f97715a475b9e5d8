//! Tenant ids, room names and permission patterns.
//!
//! Every name that reaches a map key, a broker subject or a log line passes through here first.
//! Room names can never contain wildcards, so a pattern is the only way to address many rooms,
//! and patterns only ever come from the server's side (token claims, config).

use std::fmt;

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Most dot-separated tokens in a room name or pattern.
pub const MAX_ROOM_DEPTH: usize = 16;
/// Longest tenant id, in bytes.
pub const MAX_TENANT_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("empty name")]
    Empty,
    #[error("name longer than {max} bytes")]
    TooLong { max: usize },
    #[error("more than {max} tokens")]
    TooDeep { max: usize },
    #[error("empty token (leading, trailing or double dot)")]
    EmptyToken,
    #[error("invalid character {0:?}: allowed are A-Z a-z 0-9 _ -")]
    InvalidChar(char),
    #[error("'>' may only be the last token of a pattern")]
    TailNotLast,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn check_len(s: &str, max: usize) -> Result<(), RoomError> {
    if s.is_empty() {
        return Err(RoomError::Empty);
    }
    if s.len() > max {
        return Err(RoomError::TooLong { max });
    }
    Ok(())
}

/// A tenant id: `[A-Za-z0-9_-]{1,64}`. Shared, not copied: every room key a session makes
/// (one per command that names a room) carries its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(std::sync::Arc<str>);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, RoomError> {
        check_len(s, MAX_TENANT_LEN)?;
        if let Some(c) = s.chars().find(|c| !is_name_char(*c)) {
            return Err(RoomError::InvalidChar(c));
        }
        Ok(Self(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by tenant are looked up by a tenant's name (the derived `Hash` and `Eq` are the
/// name's).
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room name: dot-separated tokens of `[A-Za-z0-9_-]`, at most [`MAX_ROOM_LEN`] bytes and
/// [`MAX_ROOM_DEPTH`] tokens, no empty tokens, no wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(s: &str) -> Result<Self, RoomError> {
        check_len(s, MAX_ROOM_LEN)?;
        // One pass over the bytes (every name character is ASCII), with the errors in the order
        // a token-by-token check gives them: this runs for every command that names a room.
        let bytes = s.as_bytes();
        let mut depth = 1;
        let mut token_start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' {
                if i == token_start {
                    return Err(RoomError::EmptyToken);
                }
                depth += 1;
                if depth > MAX_ROOM_DEPTH {
                    return Err(RoomError::TooDeep {
                        max: MAX_ROOM_DEPTH,
                    });
                }
                token_start = i + 1;
            } else if !is_name_char(char::from(b)) {
                // `i` starts a character: every byte before it was ASCII.
                let c = s[i..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(RoomError::InvalidChar(c));
            }
        }
        if token_start == bytes.len() {
            return Err(RoomError::EmptyToken);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The room namespace: its first token (`chat` for `chat.lobby`).
    pub fn namespace(&self) -> &str {
        self.tokens().next().unwrap_or_default()
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternToken {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more remaining tokens.
    Tail,
}

/// A NATS-style permission pattern: tokens, `*` for exactly one token, `>` (last only) for one or
/// more remaining tokens. `>` alone matches every room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<PatternToken>,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, RoomError> {
        check_len(s, MAX_ROOM_LEN)?;
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > MAX_ROOM_DEPTH {
            return Err(RoomError::TooDeep {
                max: MAX_ROOM_DEPTH,
            });
        }
        let last = parts.len() - 1;
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => return Err(RoomError::EmptyToken),
                "*" => PatternToken::One,
                ">" if i == last => PatternToken::Tail,
                ">" => return Err(RoomError::TailNotLast),
                lit => {
                    if let Some(c) = lit.chars().find(|c| !is_name_char(*c)) {
                        return Err(RoomError::InvalidChar(c));
                    }
                    PatternToken::Literal(lit.to_owned())
                }
            };
            tokens.push(token);
        }
        Ok(Self {
            source: s.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, room: &RoomName) -> bool {
        let mut names = room.tokens();
        for token in &self.tokens {
            match token {
                PatternToken::Tail => return names.next().is_some(),
                PatternToken::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(lit) => {
                    if names.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    /// The token-by-token check `RoomName::parse` replaced with one pass over the bytes.
    fn parse_by_tokens(s: &str) -> Result<(), RoomError> {
        check_len(s, MAX_ROOM_LEN)?;
        for (depth, token) in s.split('.').enumerate() {
            if depth + 1 > MAX_ROOM_DEPTH {
                return Err(RoomError::TooDeep {
                    max: MAX_ROOM_DEPTH,
                });
            }
            if token.is_empty() {
                return Err(RoomError::EmptyToken);
            }
            if let Some(c) = token.chars().find(|c| !is_name_char(*c)) {
                return Err(RoomError::InvalidChar(c));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn room_names_parse_as_token_by_token(s in "([a-c_.*é ]{0,3}){0,20}|[a.]{0,40}") {
            prop_assert_eq!(RoomName::parse(&s).map(|_| ()), parse_by_tokens(&s));
        }
    }

    #[test]
    fn room_names() {
        assert!(RoomName::parse("chat").is_ok());
        assert!(RoomName::parse("chat.lobby-1.A_b").is_ok());
        assert_eq!(RoomName::parse(""), Err(RoomError::Empty));
        assert_eq!(RoomName::parse("a..b"), Err(RoomError::EmptyToken));
        assert_eq!(RoomName::parse(".a"), Err(RoomError::EmptyToken));
        assert_eq!(RoomName::parse("a."), Err(RoomError::EmptyToken));
        assert_eq!(RoomName::parse("a.*"), Err(RoomError::InvalidChar('*')));
        assert_eq!(RoomName::parse("a.>"), Err(RoomError::InvalidChar('>')));
        assert_eq!(RoomName::parse("a b"), Err(RoomError::InvalidChar(' ')));
        assert_eq!(RoomName::parse("é"), Err(RoomError::InvalidChar('é')));
        assert!(RoomName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            RoomName::parse(&"a".repeat(129)),
            Err(RoomError::TooLong { max: 128 })
        );
        assert!(RoomName::parse(&["a"; 16].join(".")).is_ok());
        assert_eq!(
            RoomName::parse(&["a"; 17].join(".")),
            Err(RoomError::TooDeep { max: 16 })
        );
        assert_eq!(room("chat.lobby").namespace(), "chat");
    }

    #[test]
    fn tenants() {
        assert!(TenantId::parse("acme-1_X").is_ok());
        assert!(TenantId::parse("a.b").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse(&"t".repeat(65)).is_err());
        assert!(TenantId::parse(&"t".repeat(64)).is_ok());
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p(">").matches(&room("a")));
        assert!(p(">").matches(&room("a.b.c")));
        assert!(p("chat.*").matches(&room("chat.x")));
        assert!(!p("chat.*").matches(&room("chat")));
        assert!(!p("chat.*").matches(&room("chat.x.y")));
        assert!(p("chat.>").matches(&room("chat.x.y")));
        assert!(!p("chat.>").matches(&room("chat")));
        assert!(p("chat").matches(&room("chat")));
        assert!(!p("chat").matches(&room("chats")));
        assert!(!p("chat").matches(&room("chat.x")));
        assert!(p("*.b.>").matches(&room("a.b.c")));
        assert_eq!(Pattern::parse("a.>.b"), Err(RoomError::TailNotLast));
        assert_eq!(Pattern::parse("a..b"), Err(RoomError::EmptyToken));
        assert_eq!(Pattern::parse("a.b*"), Err(RoomError::InvalidChar('*')));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = RoomName::parse(&s);
            let _ = Pattern::parse(&s);
            let _ = TenantId::parse(&s);
        }

        #[test]
        fn a_room_matches_itself_as_pattern(s in "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,5}") {
            let r = RoomName::parse(&s).unwrap();
            prop_assert!(Pattern::parse(&s).unwrap().matches(&r));
            prop_assert!(Pattern::parse(">").unwrap().matches(&r));
        }
    }
}
