//! Bounds on text a peer controls that the server says back (an error message quoting what it
//! refused) or writes to a log: cut at a character boundary, so an answer never grows with the
//! request.

/// The longest message an HTTP refusal or an API error carries (parsers' texts quote what they
/// refused: a room name, a query key, a `Last-Event-ID`).
pub const MAX_MESSAGE: usize = 512;

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `message` cut to at most `max` bytes, the `…` that marks a cut included (outside audit 97,
/// F4: the mark came on top, 515 bytes).
pub fn bounded(mut message: String, max: usize) -> String {
    if message.len() > max {
        let end = prefix(&message, max.saturating_sub('…'.len_utf8())).len();
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes: a cut at 3 would split the second one.
        assert_eq!(prefix("éé", 3), "é");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("", 0), "");
        assert_eq!(bounded("abcdefgh".into(), 7), "abcd…");
        assert_eq!(bounded("abcd".into(), 4), "abcd");
        // 3 bytes for the mark leave 2: one "é".
        assert_eq!(bounded("ééé".into(), 5), "é…");
        let long = bounded("x".repeat(2000), MAX_MESSAGE);
        assert_eq!(long.len(), MAX_MESSAGE);
    }
}
