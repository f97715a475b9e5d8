//! Text from a server (a goodbye's reason, an error's message, a member's user id, a
//! publication's payload) printed to a terminal: its control characters escaped, so a hostile
//! server (or a backend whose answer becomes a call's error message, or a publisher) cannot
//! repaint the screen, ring the bell or forge a line that looks like this tool's own output
//! (outside audit: `\x1b[2J` and a fake "OK" line).

use std::borrow::Cow;
use std::io::Write;

/// `println!` for what the tools print on stdout: a reader that went away
/// (`quiver config init | head -3`) ends the command quietly, where `println!` panics (outside
/// audit 24).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::terminal::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Writes to stdout; a closed stdout ends the process: with success when its reader stopped
/// reading (a broken pipe, as `head` does to any tool), else with an error.
pub fn out(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("quiver: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `text` with every control character (C0, DEL, C1, the line and paragraph separators, and
/// the bidirectional overrides and isolates, which reorder what follows them on screen: outside
/// audit 122, F5) written as an escape (`\u{1b}`), the rest as it is.
pub fn safe(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Whether `c` is kept off the terminal by [`safe`] (and escaped in `sub`'s JSON lines).
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || c == '\u{2028}'
        || c == '\u{2029}'
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// [`safe`], and with `backslash` a `\` written `\\` too, so the escapes can be read back.
fn escape(text: &str, backslash: bool) -> Cow<'_, str> {
    let escaped = |c: char| unsafe_char(c) || (backslash && c == '\\');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text with every [`unsafe_char`] written as a `\uXXXX` escape: the same JSON to a
/// parser (those characters only occur inside strings), none of them raw on a terminal.
/// serde_json escapes only U+0000-U+001F (outside audit 122, F5: U+009B, an 8-bit CSI, DEL and
/// U+202E reached the terminal from `sub --format json`).
pub fn json_safe(json: String) -> String {
    use std::fmt::Write as _;
    if !json.chars().any(unsafe_char) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        // serde_json wrote C0 controls as escapes already; the rest are all in the Basic
        // Multilingual Plane: one `\uXXXX` each.
        if unsafe_char(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A payload as one line of text: UTF-8 with [`safe`]'s escapes, and each byte that is not
/// UTF-8 as `\xNN`. A publication is anyone's text (anyone the token allows to publish in the
/// room): raw, a newline in it printed a line of its own, forging a publication in another room
/// in `sub`'s `room<TAB>payload` lines, and its escapes reached the terminal (outside audit
/// 111, F2). A backslash is written `\\`, so the line reads back as exactly one payload: the
/// text `a\nb` and `a`, newline, `b` printed the same (outside audit 122, F8).
pub fn safe_bytes(bytes: &[u8]) -> Cow<'_, str> {
    use std::fmt::Write as _;
    if let Ok(text) = std::str::from_utf8(bytes) {
        return escape(text, true);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid(), true));
        for byte in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(safe("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            safe("\u{1b}[31mred\u{7}\r\nFAKE"),
            "\\u{1b}[31mred\\u{7}\\r\\nFAKE"
        );
        assert_eq!(safe("a\u{85}b\u{2028}c"), "a\\u{85}b\\u{2028}c");
    }

    #[test]
    fn payload_bytes_become_one_line_of_text() {
        assert_eq!(safe_bytes(b"plain"), "plain");
        assert_eq!(
            safe_bytes(b"hello\nchat.b\tFORGED \x1b[31mred"),
            "hello\\nchat.b\\tFORGED \\u{1b}[31mred"
        );
        // Bytes that are not UTF-8 are written as hex, the text around them as text.
        assert_eq!(safe_bytes(b"\xff\x00A\xc3\xa9\xc3"), "\\xff\\u{0}Aé\\xc3");
        // A backslash is escaped, so text that reads like an escape is told from the escape
        // (outside audit 122, F8).
        assert_eq!(safe_bytes(b"a\\nb"), "a\\\\nb");
        assert_eq!(safe_bytes(b"a\nb"), "a\\nb");
        assert_eq!(safe_bytes(b"c\\xffd"), "c\\\\xffd");
        assert_eq!(safe_bytes(b"c\xffd\\"), "c\\xffd\\\\");
        // Bidirectional overrides and isolates reorder the screen: escaped (F5).
        assert_eq!(safe("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
    }

    #[test]
    fn json_keeps_no_raw_control_and_parses_back_the_same() {
        let payload = "\u{9b}31mRED\u{7f}\u{202e}x\u{2069}\u{1b}é";
        let json = json_safe(serde_json::json!({ "payload": payload }).to_string());
        assert!(json.is_ascii() || !json.chars().any(unsafe_char), "{json}");
        assert_eq!(
            json,
            r#"{"payload":"\u009b31mRED\u007f\u202ex\u2069\u001bé"}"#
        );
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["payload"], payload);
    }
}
