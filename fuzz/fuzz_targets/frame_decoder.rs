//! The wire decoder as the server meets it: bytes arrive in arbitrary chunks, the frame decoder
//! splits them, and every frame is decoded as a command (what the server reads) and as an event
//! (what clients read). Asserts: no panic; no frame over the limit; decoding what was decoded and
//! re-encoded gives the same message; and the memory one input makes the code hold at once
//! stays within a few frames' worth, whatever length prefixes and counts the bytes announce.
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
    // The decoder buffer (doubling as it grows), one frame, its decoded message and its
    // re-encoding: a handful of frames. Never what a length prefix or an element count claims.
    let peak = peak_since(base);
    assert!(
        peak <= 8 * (LENGTH_PREFIX + MAX_FRAME) + 2 * data.len(),
        "{peak} bytes live at once for a {}-byte input",
        data.len()
    );
});

fn check_body(body: &[u8]) {
    if let Ok(command) = decode_command(body) {
        let again = encode_command(&command);
        let decoded = decode_command(&again[LENGTH_PREFIX..]).expect("re-encoded command decodes");
        assert_eq!(decoded, command);
    }
    if let Ok(event) = decode_event(body) {
        let again = encode_event(&event);
        let decoded = decode_event(&again[LENGTH_PREFIX..]).expect("re-encoded event decodes");
        assert_eq!(decoded, event);
    }
}
