//! Entry points for Quiver's fuzz targets (`fuzz/`, a workspace of its own that links this
//! crate from outside): private functions a peer's bytes reach, made reachable. Not API:
//! hidden from the docs, and free to change with the functions they call.

/// `rpc::scrub::scrub_text`: `text` with `secret` written `[http_secret]`, or `None` when it
/// still holds it once its JSON-style escapes are read.
pub fn scrub_text(text: String, secret: &str) -> Option<String> {
    crate::rpc::scrub::scrub_text(text, secret)
}

/// `rpc::scrub::unescape`: `text` with its JSON-style escapes read once, leniently.
pub fn unescape(text: &str) -> String {
    crate::rpc::scrub::unescape(text)
}

/// `rpc::backend_message`: a backend's error text as an `Error` frame carries it (valid
/// UTF-8, trimmed, cut at `MAX_BACKEND_MESSAGE` bytes).
pub fn backend_message(body: &[u8], status: u16) -> String {
    crate::rpc::backend_message(body, status)
}
