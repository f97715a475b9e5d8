//! Benchmark payloads: the publisher's send time as 20 ASCII digits, then padding.
//!
//! ASCII so the very same bytes travel as a Socket.IO string, a NATS message and a Quiver
//! payload. Each publisher encodes its frame once and only rewrites the 20 digits per message.

/// Digits of the timestamp at the start of every payload.
pub const STAMP_LEN: usize = 20;

/// Smallest payload that holds a timestamp.
pub const MIN_PAYLOAD: usize = STAMP_LEN;

/// A payload of `size` bytes (at least [`MIN_PAYLOAD`]) with a zero timestamp.
pub fn template(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(MIN_PAYLOAD)];
    p[..STAMP_LEN].fill(b'0');
    p
}

/// Writes `ns` as 20 zero-padded digits at the start of `out`.
pub fn stamp(out: &mut [u8], mut ns: u64) {
    for slot in out[..STAMP_LEN].iter_mut().rev() {
        *slot = b'0' + (ns % 10) as u8;
        ns /= 10;
    }
}

/// Reads the timestamp at the start of a received payload; `None` if it is not one of ours.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(..STAMP_LEN)?;
    let mut ns: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        ns = ns.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(ns)
}

/// A frame encoded once, with the offset of the payload's timestamp inside it.
#[derive(Clone)]
pub struct Stamped {
    pub bytes: Vec<u8>,
    pub stamp_at: usize,
}

impl Stamped {
    /// Finds the template payload inside `bytes` (it must be there exactly once, at its end or
    /// followed by a short trailer) and remembers where its timestamp goes.
    pub fn new(bytes: Vec<u8>, payload: &[u8]) -> anyhow::Result<Self> {
        let stamp_at = bytes
            .windows(payload.len())
            .rposition(|w| w == payload)
            .ok_or_else(|| anyhow::anyhow!("payload not found in encoded frame"))?;
        Ok(Self { bytes, stamp_at })
    }

    /// The frame stamped with `ns`.
    pub fn at(&mut self, ns: u64) -> &[u8] {
        stamp(&mut self.bytes[self.stamp_at..], ns);
        &self.bytes
    }
}

/// Room `room`'s frame from a publisher's pre-encoded frames, stamped now.
pub fn stamped_now(frames: &mut [Stamped], room: usize) -> anyhow::Result<&[u8]> {
    let frame = frames
        .get_mut(room)
        .ok_or_else(|| anyhow::anyhow!("no room {room}"))?;
    Ok(frame.at(crate::clock::now_ns()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let mut p = template(64);
        stamp(&mut p, 1_234_567_890_123);
        assert_eq!(read_stamp(&p), Some(1_234_567_890_123));
        assert_eq!(p.len(), 64);
        assert_eq!(read_stamp(b"12"), None);
        assert_eq!(read_stamp(b"1234567890123456789x"), None);
    }

    #[test]
    fn stamped_rewrites_in_place() {
        let p = template(32);
        let mut frame = b"head".to_vec();
        frame.extend_from_slice(&p);
        frame.push(0);
        let mut s = Stamped::new(frame, &p).unwrap();
        let out = s.at(42).to_vec();
        assert_eq!(read_stamp(&out[4..]), Some(42));
        assert_eq!(out.len(), 4 + 32 + 1);
    }
}
