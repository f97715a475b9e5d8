//! Room names, permission patterns and tenant ids: every name that reaches a map key, a broker
//! subject or a log line passes through these parsers. Asserts: no panic, the documented limits
//! hold for whatever parses, and patterns agree with the names they were built from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_proto::room::{MAX_ROOM_DEPTH, MAX_ROOM_LEN, MAX_TENANT_LEN};
use quiver_proto::{Pattern, RoomName, TenantId};

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tenant) = TenantId::parse(s) {
        assert!(!s.is_empty() && s.len() <= MAX_TENANT_LEN);
        assert!(s.chars().all(name_char));
        assert_eq!(tenant.as_str(), s);
    }
    let room = RoomName::parse(s);
    if let Ok(room) = &room {
        assert!(s.len() <= MAX_ROOM_LEN);
        assert!(room.tokens().count() <= MAX_ROOM_DEPTH);
        assert!(room
            .tokens()
            .all(|t| !t.is_empty() && t.chars().all(name_char)));
        assert_eq!(room.as_str(), s);
        assert!(s.starts_with(room.namespace()));
        // A room name is a pattern that matches exactly itself, and `>` matches every room.
        let literal = Pattern::parse(s).expect("a room name is a valid pattern");
        assert!(literal.matches(room));
        assert!(Pattern::parse(">").expect("valid").matches(room));
    }
    if let Ok(pattern) = Pattern::parse(s) {
        assert!(s.len() <= MAX_ROOM_LEN);
        // Wildcards only come from patterns: a pattern with one is never a room name.
        if s.split('.').any(|t| t == "*" || t == ">") {
            assert!(room.is_err());
        }
        // The pattern matches the room made by replacing each wildcard with one token.
        let concrete: Vec<&str> = s
            .split('.')
            .map(|t| if t == "*" || t == ">" { "x" } else { t })
            .collect();
        if let Ok(example) = RoomName::parse(&concrete.join(".")) {
            assert!(pattern.matches(&example), "{s} vs {example:?}");
        }
    }
});
