//! Writing `rpc.http_secret` out of a backend's words (server/src/rpc/scrub.rs, PROTOCOL.md
//! §11), as the HTTP route applies it to an error answer: `scrub_text`, then `backend_message`'s
//! cut at 512 bytes, then `Rpc::scrub` (`scrub_text` again, or withheld). Structured input: a
//! secret of 1-64 bytes, and a text made of arbitrary text, pieces of the secret, the secret
//! behind `\uXXXX` (surrogate pairs for what is outside the BMP), `\/`, `\"` and `\\` escapes
//! (once or twice over), lone escapes, surrogates and padding that moves pieces across the cut.
//! Asserts, when the text is not withheld (`Some(out)`):
//! - neither `out`, nor its cut, nor what the client gets, holds the secret, nor does any of
//!   them once read by `unescape` one to three times over;
//! - nor does a JSON reader find it: a string of it read as JSON (as a value or as a string's
//!   contents), and again inside what that gives, three levels deep;
//! - the cut is at most 512 bytes;
//! and a text without `\` and without the secret comes back unchanged.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use quiver_server::fuzzing::{backend_message, scrub_text, unescape};

/// What the secret is made of: letters, the characters escapes are made of, the
/// replacement's brackets, a character of two UTF-8 bytes, one outside the BMP, U+FFFD (what a
/// lone surrogate reads as).
const CHARSET: [char; 20] = [
    'S', 'e', 'c', 'r', 't', 'u', 'D', '8', '0', '/', '"', '\\', '[', ']', '_', ' ', 'é', '😀',
    '\u{fffd}', 'x',
];

#[derive(Debug)]
enum Piece {
    Text(String),
    /// The secret, each character written as it is or escaped (bit i of `escapes` for
    /// character i), and the whole escaped once more when `twice`.
    Secret {
        escapes: u64,
        twice: bool,
    },
    /// Characters `from..from+len` of the secret, as they are.
    Part {
        from: u8,
        len: u8,
    },
    /// `\uXXXX` of any code unit, surrogates included, in upper or lower case hex.
    Unicode {
        unit: u16,
        upper: bool,
    },
    Slash,
    Quote,
    Backslash,
    /// A bare `\`.
    Lone,
    /// `n` bytes of `x` (up to 600): moves what follows across the cut.
    Pad(u16),
}

impl Piece {
    fn read(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u.int_in_range(0..=9u8)? {
            0 => Piece::Text(u.arbitrary()?),
            1 => Piece::Secret {
                escapes: u.arbitrary()?,
                twice: u.arbitrary()?,
            },
            2 => Piece::Part {
                from: u.arbitrary()?,
                len: u.arbitrary()?,
            },
            3 => Piece::Unicode {
                unit: u.arbitrary()?,
                upper: u.arbitrary()?,
            },
            4 => Piece::Slash,
            5 => Piece::Quote,
            6 => Piece::Backslash,
            7 => Piece::Lone,
            8 => Piece::Pad(u.arbitrary()?),
            _ => Piece::Secret {
                escapes: 0,
                twice: false,
            },
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // The secret's length (1-64 characters of `CHARSET`, at most 64 bytes), its characters,
    // then pieces while there are bytes.
    let Ok(len) = u.int_in_range(1..=64usize) else {
        return;
    };
    let Ok(secret_bytes) = u.bytes(len.min(u.len())) else {
        return;
    };
    let mut pieces = Vec::new();
    while !u.is_empty() && pieces.len() < 64 {
        match Piece::read(&mut u) {
            Ok(p) => pieces.push(p),
            Err(_) => break,
        }
    }
    let mut secret = String::new();
    for &b in secret_bytes {
        let c = CHARSET[usize::from(b) % CHARSET.len()];
        if secret.len() + c.len_utf8() > 64 {
            break;
        }
        secret.push(c);
    }
    if secret.is_empty() {
        return;
    }
    let chars: Vec<char> = secret.chars().collect();
    let mut text = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Secret { escapes, twice } => {
                let mut s = String::new();
                for (i, &c) in chars.iter().enumerate() {
                    escape(&mut s, c, escapes >> (i % 64) & 1 == 1);
                }
                if *twice {
                    let once = s;
                    s = String::new();
                    for c in once.chars() {
                        escape(&mut s, c, false);
                    }
                }
                text.push_str(&s);
            }
            Piece::Part { from, len } => {
                let from = usize::from(*from) % chars.len();
                let to = (from + usize::from(*len)).min(chars.len());
                text.extend(&chars[from..to]);
            }
            Piece::Unicode { unit, upper } => {
                if *upper {
                    text.push_str(&format!("\\u{unit:04X}"));
                } else {
                    text.push_str(&format!("\\u{unit:04x}"));
                }
            }
            Piece::Slash => text.push_str("\\/"),
            Piece::Quote => text.push_str("\\\""),
            Piece::Backslash => text.push_str("\\\\"),
            Piece::Lone => text.push('\\'),
            Piece::Pad(n) => text.extend(std::iter::repeat_n('x', usize::from(*n) % 601)),
        }
    }

    let plain = !text.contains('\\') && !text.contains(&secret);
    let Some(out) = scrub_text(text.clone(), &secret) else {
        assert!(!plain, "a plain text withheld: {text:?}");
        return;
    };
    if plain {
        assert_eq!(out, text, "a plain text changed");
    }
    clean(&out, &secret, "out");
    // The HTTP route: the body cleared, then cut (`backend_message`), then cleared again
    // (`Rpc::scrub`, which withholds what it cannot clear).
    if out.trim().is_empty() {
        // `backend_message` then says the server's own words ("backend answered 500").
        return;
    }
    let cut = backend_message(out.as_bytes(), 500);
    assert!(cut.len() <= 512, "a cut of {} bytes", cut.len());
    // A cut through a surrogate pair (`\ud83d|\ude00`) reads as U+FFFD: only a secret holding
    // U+FFFD can appear so, and the second scrub withholds that.
    if !secret.contains('\u{fffd}') {
        clean(&cut, &secret, "the cut");
    }
    if let Some(sent) = scrub_text(cut, &secret) {
        clean(&sent, &secret, "what the client gets");
    }
});

/// Writes `c` into `s` as a JSON string would hold it: escaped as `\uXXXX` when `unicode`
/// (a surrogate pair outside the BMP), else `/`, `"` and `\` behind a `\`, the rest as is.
fn escape(s: &mut String, c: char, unicode: bool) {
    if unicode {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            s.push_str(&format!("\\u{unit:04x}"));
        }
    } else if matches!(c, '/' | '"' | '\\') {
        s.push('\\');
        s.push(c);
    } else {
        s.push(c);
    }
}

/// Asserts that `text` holds `secret` neither as it is, nor read by `unescape` one to three
/// times over, nor as a JSON reader finds it.
fn clean(text: &str, secret: &str, what: &str) {
    assert!(!text.contains(secret), "{what} holds {secret:?}: {text:?}");
    let mut read = text.to_owned();
    for pass in 1..=3 {
        read = unescape(&read);
        assert!(
            !read.contains(secret),
            "{what} holds {secret:?} after {pass} unescape(s): {text:?}"
        );
    }
    json_clean(text, secret, what, 3);
}

/// The strings a JSON reader finds in `text` (`text` as a JSON value, or as a string's
/// contents), and `depth - 1` levels into those, do not hold `secret`.
fn json_clean(text: &str, secret: &str, what: &str, depth: u32) {
    if depth == 0 {
        return;
    }
    let mut strings = Vec::new();
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        collect(&value, &mut strings);
    }
    if let Ok(s) = serde_json::from_str::<String>(&format!("\"{text}\"")) {
        strings.push(s);
    }
    for s in strings {
        assert!(
            !s.contains(secret),
            "{what}: a JSON reader finds {secret:?} in {text:?}"
        );
        if s != text {
            json_clean(&s, secret, what, depth - 1);
        }
    }
}

fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                collect(v, out);
            }
        }
        _ => {}
    }
}
