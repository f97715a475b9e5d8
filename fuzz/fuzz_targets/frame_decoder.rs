//! The wire decoder as the server meets it: bytes arrive in arbitrary chunks, the frame decoder
//! splits them, and every frame is decoded as a command (what the server reads) and as an event
//! (what clients read). Asserts: no panic; no frame over the limit; decoding what was decoded and
//! re-encoded gives the same message; and memory stays proportional to the bytes actually
//! received, whatever length prefixes and element counts claim:
//! - decoding a command (the server's side) holds at most 8 × the frame's size at once,
//!   re-encoding and decoding again included;
//! - decoding an event (a client's side) at most 64 × (a `Presence` member is 48 bytes in memory
//!   and can be 2 on the wire, and postcard lets serde reserve the announced count up front,
//!   bounded by the bytes left in the frame);
//! - the whole stream, decoder buffer included, a bounded number of frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_fuzz::{peak_since, reset_peak, Counting};
use quiver_proto::{
    decode_command, decode_event, encode_command, encode_event, FrameDecoder, LENGTH_PREFIX,
};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Small, so the fuzzer reaches frames at and over the limit with inputs of a few KB.
const MAX_FRAME: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunking, wire)) = data.split_first() else {
        return;
    };
    // The first byte picks the chunk size, like the reads a stream happens to return.
    let chunk = usize::from(chunking % 64) + 1;
    let base = reset_peak();
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    'stream: for piece in wire.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= MAX_FRAME);
                    check_body(&body);
                }
                Ok(None) => break,
                // The stream is out of sync after an error: the server closes it.
                Err(_) => break 'stream,
            }
        }
        assert!(decoder.buffered() <= LENGTH_PREFIX + MAX_FRAME + chunk);
    }
    let _ = decoder.finish();
    drop(decoder);
    // Never what a length prefix claims (up to 4 GiB) nor serde's 1 MiB reservation cap.
    let peak = peak_since(base);
    assert!(
        peak <= EVENT_FACTOR * (LENGTH_PREFIX + MAX_FRAME) + 2 * data.len() + SLACK,
        "{peak} bytes live at once for a {}-byte input",
        data.len()
    );
});

/// Memory a decoded command may hold per byte of its frame (see the module comment).
const COMMAND_FACTOR: usize = 8;
/// The same for an event.
const EVENT_FACTOR: usize = 64;
/// Fixed overhead: the message structs themselves, small vectors' first allocation.
const SLACK: usize = 1024;

fn check_body(body: &[u8]) {
    roundtrip(body, COMMAND_FACTOR, decode_command, encode_command);
    roundtrip(body, EVENT_FACTOR, decode_event, |e| {
        encode_event(e).to_vec()
    });
}

/// Decodes `body`; if it is a message, re-encodes and decodes it again (same message). Asserts
/// the memory held at once stays within `factor` × the body.
fn roundtrip<M, E, D, W>(body: &[u8], factor: usize, decode: D, encode: W)
where
    M: PartialEq + std::fmt::Debug,
    D: Fn(&[u8]) -> Result<M, E>,
    W: Fn(&M) -> Vec<u8>,
{
    let base = reset_peak();
    if let Ok(message) = decode(body) {
        let again = encode(&message);
        let decoded = decode(&again[LENGTH_PREFIX..]);
        assert!(
            decoded.as_ref().ok() == Some(&message),
            "{message:?} did not round-trip"
        );
    }
    let peak = peak_since(base);
    assert!(
        peak <= factor * body.len() + SLACK,
        "decoding a {}-byte frame held {peak} bytes",
        body.len()
    );
}
