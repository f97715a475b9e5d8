//! JSON forms shared by the API's endpoints. Positions go out as `{"epoch": "…", "offset": "…"}`
//! with **decimal strings** (an epoch is a 64-bit number, above JavaScript's 2^53 safe
//! integers), as on SSE; they come in as strings or numbers. Payloads go out as base64.

use base64::Engine;
use bytes::Bytes;
use quiver_proto::Position;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;

pub fn position(position: Option<Position>) -> Value {
    position.map_or(
        Value::Null,
        |p| json!({"epoch": p.epoch.to_string(), "offset": p.offset.to_string()}),
    )
}

/// A u64 written as decimal digits only: `u64::from_str` would also take a leading `+`, which
/// neither the API's schema (`^[0-9]+$`) nor SSE event ids allow.
pub fn decimal_u64(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

pub fn base64(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(payload)
}

/// A u64 as a decimal string or a JSON number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a u64, as a JSON number or a decimal string")]
enum U64In {
    Number(u64),
    Text(String),
}

/// A position as requests carry it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionIn {
    epoch: U64In,
    offset: U64In,
}

impl PositionIn {
    pub fn parse(&self, field: &str) -> Result<Position, ApiError> {
        let number = |v: &U64In, part: &str| match v {
            U64In::Number(n) => Ok(*n),
            U64In::Text(s) => decimal_u64(s).ok_or_else(|| {
                ApiError::bad_request(format!("{field}.{part}: a decimal u64 is expected"))
            }),
        };
        Ok(Position {
            epoch: number(&self.epoch, "epoch")?,
            offset: number(&self.offset, "offset")?,
        })
    }
}

/// A payload in a JSON request: `payload` (text, sent as its UTF-8 bytes) or `payload_base64`
/// (any bytes), exactly one.
pub fn payload(text: Option<String>, base64: Option<&str>) -> Result<Bytes, ApiError> {
    match (text, base64) {
        (Some(text), None) => Ok(Bytes::from(text)),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload_base64: {e}"))),
        _ => Err(ApiError::bad_request(
            "exactly one of payload and payload_base64",
        )),
    }
}
