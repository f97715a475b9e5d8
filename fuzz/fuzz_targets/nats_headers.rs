//! A NATS message's header block, which nats-server passes through unread from any publisher:
//! the connection's parser (`HMSG`: live messages, JetStream direct gets), its salvage of a
//! block it refused, and JetStream's parser (`STREAM.MSG.GET`'s stored headers), all three in
//! Quiver's patched async-nats (vendor/async-nats/PATCHES.md). Asserts:
//! - no panic (a panic there is the connection task's, which also reconnects: outside audit
//!   132, F1);
//! - every value of a map a parser accepted or salvaged is a valid `HeaderValue` (no CR, no
//!   LF), and every name a valid `HeaderName`;
//! - where both parsers accept a block, they agree: the same status, description and names,
//!   and for each name JetStream's value is the connection's last one, up to how each unfolds
//!   a continuation line (the connection keeps the line's leading whitespace, JetStream
//!   writes one space) and that JetStream keeps only the last value of a repeated name
//!   (`insert`, where the connection `append`s).
#![no_main]

use std::str::FromStr;

use async_nats::connection::{fuzz_parse_header_block, fuzz_salvage_headers};
use async_nats::jetstream::stream::fuzz_parse_headers;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|block: &[u8]| {
    let connection = fuzz_parse_header_block(block);
    if let Ok((headers, _, _)) = &connection {
        valid(headers, "parse_header_block");
    }
    // The connection salvages a block it refused; JetStream's read does the same.
    let salvaged = fuzz_salvage_headers(block);
    valid(&salvaged, "salvage_headers");
    let jetstream = fuzz_parse_headers(block);
    if let Ok((headers, _, _)) = &jetstream {
        valid(headers, "jetstream parse_headers");
    }
    if let (Ok((c_headers, c_status, c_description)), Ok((j_headers, j_status, j_description))) =
        (&connection, &jetstream)
    {
        assert_eq!(c_status, j_status, "status");
        assert_eq!(c_description, j_description, "description");
        let mut c_names: Vec<&str> = c_headers.iter().map(|(n, _)| n.as_ref()).collect();
        let mut j_names: Vec<&str> = j_headers.iter().map(|(n, _)| n.as_ref()).collect();
        c_names.sort_unstable();
        j_names.sort_unstable();
        assert_eq!(c_names, j_names, "names");
        for (name, j_values) in j_headers.iter() {
            assert_eq!(j_values.len(), 1, "JetStream inserts: one value a name");
            let c_last = c_headers
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.last())
                .expect("the same names");
            assert_eq!(
                folded(c_last.as_str()),
                folded(j_values[0].as_str()),
                "{name}: {:?} (connection) vs {:?} (JetStream)",
                c_last.as_str(),
                j_values[0].as_str()
            );
        }
    }
});

/// Every name and value of `headers` passes the checks their `FromStr` makes.
fn valid(headers: &HeaderMap, parser: &str) {
    for (name, values) in headers.iter() {
        assert!(
            HeaderName::from_str(name.as_ref()).is_ok(),
            "{parser}: invalid name {name:?}"
        );
        for value in values {
            let v = value.as_str();
            assert!(
                !v.contains(['\r', '\n']) && HeaderValue::from_str(v).is_ok(),
                "{parser}: invalid value {v:?} of {name}"
            );
        }
    }
}

/// `value` with each run of whitespace one space, and none at either end.
fn folded(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}
