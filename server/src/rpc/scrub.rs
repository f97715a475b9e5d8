//! Writing `rpc.http_secret` out of what a backend says before a client reads it. Apart from
//! `mod.rs` (the routes and decisions): the escape reading it needs is a parser of its own.

use super::{Rpc, RpcError};

impl Rpc {
    /// [`Rpc::scrub`] of an error's words.
    pub(super) fn scrub_error(&self, e: RpcError) -> RpcError {
        match e {
            RpcError::Unavailable(m) => RpcError::Unavailable(self.scrub(m)),
            RpcError::OverQuota(m) => RpcError::OverQuota(self.scrub(m)),
            RpcError::Backend(code, m) => RpcError::Backend(code, self.scrub(m)),
            RpcError::BadAnswer(m) => RpcError::BadAnswer(self.scrub(m)),
            RpcError::AnswerCut(m) => RpcError::AnswerCut(self.scrub(m)),
            // The server's own words.
            e @ (RpcError::Deadline(_)
            | RpcError::RepliesDropped(..)
            | RpcError::NotAsked(..)
            | RpcError::AnswerLate(_)) => e,
        }
    }

    /// `text` with the HTTP route's `rpc.http_secret` written `[http_secret]`: what a backend
    /// says reaches clients, and a backend that echoes the request's headers (an error page, a
    /// deny reason, an escaped string serde quotes back) must not hand it out (outside audits
    /// 29 F3, 31, 32 F1: matching the raw bytes missed `\u0053…` and `\/`).
    pub(super) fn scrub(&self, text: String) -> String {
        match self.config.http_secret.as_ref() {
            Some(secret) => scrub_text(text, secret.expose())
                .unwrap_or_else(|| "(the backend's words held rpc.http_secret: withheld)".into()),
            None => text,
        }
    }
}

/// `text` with `secret` written `[http_secret]`, or `None` when it still holds the secret once
/// its JSON-style escapes are read (`\u0053…`, `\/`, valid JSON or not, escaped twice): no
/// rewriting of its text finds every escape, so such a text is withheld whole (outside audits
/// 33 N1a, 34 F1, F2). An empty secret is no secret.
pub(crate) fn scrub_text(text: String, secret: &str) -> Option<String> {
    if secret.is_empty() {
        return Some(text);
    }
    let text = text.replace(secret, "[http_secret]");
    (!escaped_holds(&text, secret)).then_some(text)
}

/// Whether `text` holds `secret` once its JSON-style escapes (`\uXXXX`, `\/`, `\"`, `\\`, ...)
/// are read, once or up to three times over, whether or not the text is valid JSON: a client
/// may decode what a server could not parse (a lone surrogate, `1e999`, deep nesting).
fn escaped_holds(text: &str, secret: &str) -> bool {
    // The text as written too: a secret holding `[` or `]` can be completed by the
    // replacement's own brackets and the text beside them (`\\` then the secret `\\[`
    // became `\\[http_secret]`), which reading its escapes takes apart (fuzz target `scrub`).
    if text.contains(secret) {
        return true;
    }
    let mut text = text.to_owned();
    for _ in 0..3 {
        let read = unescape(&text);
        if read.contains(secret) {
            return true;
        }
        if read == text {
            return false;
        }
        text = read;
    }
    false
}

/// `text` with JSON-style escapes read, leniently: what is not an escape stays as it is; an
/// unpaired surrogate becomes U+FFFD.
pub(crate) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let hex4 = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<u32> {
        let digits: String = chars.clone().take(4).collect();
        let value = u32::from_str_radix(&digits, 16)
            .ok()
            .filter(|_| digits.len() == 4)?;
        for _ in 0..4 {
            chars.next();
        }
        Some(value)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('u') => {
                chars.next();
                match hex4(&mut chars) {
                    Some(high @ 0xD800..=0xDBFF) => {
                        let mut ahead = chars.clone();
                        let low = (ahead.next() == Some('\\') && ahead.next() == Some('u'))
                            .then(|| hex4(&mut ahead))
                            .flatten()
                            .filter(|low| (0xDC00..=0xDFFF).contains(low));
                        match low {
                            Some(low) => {
                                chars = ahead;
                                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            }
                            None => out.push('\u{fffd}'),
                        }
                    }
                    Some(code) => out.push(char::from_u32(code).unwrap_or('\u{fffd}')),
                    None => out.push_str("\\u"),
                }
            }
            Some(e @ ('/' | '"' | '\\')) => {
                chars.next();
                out.push(e);
            }
            Some(e @ ('b' | 'f' | 'n' | 'r' | 't')) => {
                chars.next();
                out.push(match e {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    _ => '\t',
                });
            }
            _ => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_behind_json_escapes_is_found() {
        let secret = "Sup/er\"Secret";
        for text in [
            r#"{"e":"\u0053up\/er\"Secret"}"#,
            // Not JSON a server reads (a lone surrogate, 1e999), but a client may.
            r#"{"x":"\ud800","y":1e999,"e":"Sup\/er\"\u0053ecret"}"#,
            // Escaped twice: a reason that is itself JSON.
            r#"{"e":"{\"f\":\"\\u0053up\\/er\\\"Secret\"}"}"#,
        ] {
            assert!(escaped_holds(text, secret), "{text}");
        }
        assert!(!escaped_holds(r#"{"e":"\u0053upper"}"#, secret));
        assert_eq!(
            unescape(r#"a\u00e9\ud83d\ude00\ud800x\q"#),
            "aé😀\u{fffd}x\\q"
        );
    }

    /// Found by the fuzz target `scrub`: the replacement's own `[` completed the secret with
    /// text an unescape then took apart, so only the text as written held it.
    #[test]
    fn a_secret_the_replacement_completes_is_withheld() {
        for (secret, text) in [(r"\\[", r"\\\\["), ("a[", "aa[")] {
            assert_eq!(scrub_text(text.into(), secret), None, "{secret} in {text}");
        }
        assert_eq!(
            scrub_text("x0[[[[y".into(), "0[[[[").as_deref(),
            Some("x[http_secret]y")
        );
    }
}
