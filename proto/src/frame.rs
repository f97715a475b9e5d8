//! Length-prefixed frames: a 4-byte big-endian body length, then the body.
//!
//! The decoder is incremental (feed it whatever the stream returned) and checks the announced
//! length against its maximum *before* buffering the body, so a hostile peer cannot make us
//! allocate more than `max_frame` bytes per stream.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Default maximum body size of one frame (64 KiB).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// The largest `max_frame` a server may announce (16 MiB): servers refuse a larger setting, and
/// clients never accept a larger frame whatever a server announces, so a hostile server cannot
/// make one frame cost a client gigabytes.
pub const MAX_MAX_FRAME: u32 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Writes one frame (prefix + body) into `out`.
pub fn write_frame(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(LENGTH_PREFIX + body.len());
    // Bodies are bounded by the encoder's callers; u32 covers any sane maximum.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Incremental frame decoder for one stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Changes the largest frame body accepted from now on: a stream whose limit becomes known
    /// only after its first frames (a session's `max_frame` after `Welcome`) or that starts
    /// with a small header under a tighter one. Bytes already buffered are checked against the
    /// new limit by the next [`FrameDecoder::next_frame`].
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The largest frame body accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete frame body, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the stream is out of sync: the caller must stop reading it.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            // Reserve only what the (already bounded) frame still needs.
            self.buf.reserve(LENGTH_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call when the stream ended: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_frames_fed_byte_by_byte() {
        let mut wire = Vec::new();
        write_frame(b"hello", &mut wire);
        write_frame(b"w", &mut wire);
        let mut dec = FrameDecoder::new(16);
        let mut out = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(
            out,
            vec![Bytes::from_static(b"hello"), Bytes::from_static(b"w")]
        );
        dec.finish().unwrap();
    }

    #[test]
    fn refuses_oversized_before_buffering() {
        let mut dec = FrameDecoder::new(10);
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 10
            })
        );
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn empty_and_truncated() {
        let mut dec = FrameDecoder::new(10);
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(FrameError::Empty));
        let mut dec = FrameDecoder::new(10);
        dec.push(&[0, 0, 0, 5, 1]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated { buffered: 5 }));
    }

    #[test]
    fn the_limit_can_change_between_frames() {
        let mut wire = Vec::new();
        write_frame(b"hdr", &mut wire);
        write_frame(&[1; 100], &mut wire);
        let mut dec = FrameDecoder::new(8);
        dec.push(&wire);
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from_static(b"hdr"))));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 100, max: 8 })
        );
        dec.set_max_frame(100);
        assert_eq!(dec.max_frame(), 100);
        assert_eq!(dec.next_frame().unwrap().map(|f| f.len()), Some(100));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(data in proptest::collection::vec(any::<u8>(), 0..512), max in 1usize..64) {
            let mut dec = FrameDecoder::new(max);
            dec.push(&data);
            while let Ok(Some(f)) = dec.next_frame() {
                prop_assert!(f.len() <= max);
            }
            prop_assert!(dec.buf.capacity() <= data.len().max(LENGTH_PREFIX + max) * 2 + 64);
        }

        #[test]
        fn frames_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 0..20)) {
            let mut wire = Vec::new();
            for b in &bodies { write_frame(b, &mut wire); }
            let mut dec = FrameDecoder::new(100);
            dec.push(&wire);
            let mut got = Vec::new();
            while let Some(f) = dec.next_frame().unwrap() { got.push(f.to_vec()); }
            prop_assert_eq!(got, bodies);
        }
    }
}
