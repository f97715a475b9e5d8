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

/// `text` with every control character (C0, DEL, C1, and the line and paragraph separators)
/// written as an escape (`\u{1b}`), the rest as it is.
pub fn safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A payload as one line of text: UTF-8 with [`safe`]'s escapes, and each byte that is not
/// UTF-8 as `\xNN`. A publication is anyone's text (anyone the token allows to publish in the
/// room): raw, a newline in it printed a line of its own, forging a publication in another room
/// in `sub`'s `room<TAB>payload` lines, and its escapes reached the terminal (outside audit
/// 111, F2).
pub fn safe_bytes(bytes: &[u8]) -> Cow<'_, str> {
    use std::fmt::Write as _;
    if let Ok(text) = std::str::from_utf8(bytes) {
        return safe(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&safe(chunk.valid()));
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
    }
}
