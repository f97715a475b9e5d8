//! The payloads of QUIC datagrams in the `latest` lane (PROTOCOL.md §10). Datagrams carry no
//! length prefix and no postcard envelope: each one is a header of varints, then the payload to
//! the datagram's end.
//!
//! - Server → client ([`Latest`]): subscription id (assigned in `Subscribed`), the
//!   subscription's sequence number, then the payload. No room name: the id says it in a few
//!   bytes.
//! - Client → server ([`PublishDatagram`]): the room name (varint length, UTF-8), then the
//!   payload. Publishing needs no subscription, so the room is named.
//!
//! Varints are postcard's (LEB128, at most 10 bytes for a u64).

/// Most bytes a [`Latest`] header can take: two u64 varints.
pub const MAX_LATEST_HEADER: usize = 20;

/// A datagram the server sends: the newest value of one `latest` subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest<'a> {
    pub subscription: u64,
    pub sequence: u64,
    pub payload: &'a [u8],
}

/// A datagram a client sends: an unacknowledged publication to a `latest` room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishDatagram<'a> {
    pub room: &'a str,
    pub payload: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    /// The header is cut short or not valid (bad varint, room name not UTF-8).
    #[error("malformed datagram header")]
    Malformed,
}

impl<'a> Latest<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LATEST_HEADER + self.payload.len());
        put_varint(&mut out, self.subscription);
        put_varint(&mut out, self.sequence);
        out.extend_from_slice(self.payload);
        out
    }

    pub fn decode(datagram: &'a [u8]) -> Result<Self, DatagramError> {
        let (subscription, rest) = take_varint(datagram)?;
        let (sequence, payload) = take_varint(rest)?;
        Ok(Self {
            subscription,
            sequence,
            payload,
        })
    }
}

impl<'a> PublishDatagram<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.room.len() + self.payload.len());
        put_varint(&mut out, self.room.len() as u64);
        out.extend_from_slice(self.room.as_bytes());
        out.extend_from_slice(self.payload);
        out
    }

    pub fn decode(datagram: &'a [u8]) -> Result<Self, DatagramError> {
        let (len, rest) = take_varint(datagram)?;
        let len = usize::try_from(len).map_err(|_| DatagramError::Malformed)?;
        if len > rest.len() {
            return Err(DatagramError::Malformed);
        }
        let (room, payload) = rest.split_at(len);
        let room = std::str::from_utf8(room).map_err(|_| DatagramError::Malformed)?;
        Ok(Self { room, payload })
    }
}

fn put_varint(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; 10];
    // A u64 always fits 10 bytes: this cannot fail.
    if let Ok(used) = postcard::to_slice(&value, &mut buf) {
        out.extend_from_slice(used);
    }
}

fn take_varint(bytes: &[u8]) -> Result<(u64, &[u8]), DatagramError> {
    postcard::take_from_bytes::<u64>(bytes).map_err(|_| DatagramError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn latest_header_is_two_varints() {
        let d = Latest {
            subscription: 300,
            sequence: 1,
            payload: b"xy",
        };
        assert_eq!(d.encode(), vec![0xac, 0x02, 1, b'x', b'y']);
        assert_eq!(Latest::decode(&d.encode()).unwrap(), d);
        assert_eq!(Latest::decode(&[0x80]), Err(DatagramError::Malformed));
        assert_eq!(Latest::decode(&[5]), Err(DatagramError::Malformed));
        // An empty payload is a value too.
        assert_eq!(Latest::decode(&[5, 6]).unwrap().payload, b"");
    }

    #[test]
    fn publish_names_the_room() {
        let d = PublishDatagram {
            room: "game.a",
            payload: b"p",
        };
        assert_eq!(d.encode(), b"\x06game.ap".to_vec());
        assert_eq!(PublishDatagram::decode(&d.encode()).unwrap(), d);
        // Length past the end, and a name that is not UTF-8.
        assert!(PublishDatagram::decode(b"\x09game.a").is_err());
        assert!(PublishDatagram::decode(b"\x01\xff").is_err());
        assert!(PublishDatagram::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(sub in any::<u64>(), seq in any::<u64>(), p in proptest::collection::vec(any::<u8>(), 0..64), room in ".{0,20}") {
            let d = Latest { subscription: sub, sequence: seq, payload: &p };
            let wire = d.encode();
            prop_assert!(wire.len() <= MAX_LATEST_HEADER + p.len());
            prop_assert_eq!(Latest::decode(&wire).unwrap(), d);
            let d = PublishDatagram { room: &room, payload: &p };
            let wire = d.encode();
            prop_assert_eq!(PublishDatagram::decode(&wire).unwrap(), d);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Latest::decode(&data);
            let _ = PublishDatagram::decode(&data);
        }
    }
}
