//! Publications that arrive as QUIC datagrams (PROTOCOL.md §10): unacknowledged, to `latest`
//! rooms only, checked like any `Publish` (command rate, room name, permission, size, quota).
//! There is no one to answer, so every refusal is a drop, counted in
//! `quiver_datagrams_dropped_total` by reason; only the abuse rule (a flood far over the rate)
//! ends the session, as it would for commands.

use std::time::Instant;

use bytes::Bytes;
use quiver_proto::datagram::PublishDatagram;
use quiver_proto::{CloseCode, ErrorCode};

use super::meter::Verdict;
use super::publishing::{Reply, Taken};
use super::{Exit, Session};
use crate::metrics as m;
use crate::rpc::Hook;

impl Session {
    pub(super) async fn datagram(&mut self, datagram: Bytes, arrived: Instant) -> Option<Exit> {
        match self.meter.take(arrived) {
            Verdict::Allowed => {}
            Verdict::Limited => {
                m::datagram_dropped("rate_limited");
                return None;
            }
            Verdict::Abuse => {
                return Some(Exit::Close(
                    CloseCode::RateAbuse,
                    "datagram rate limit exceeded repeatedly".into(),
                ))
            }
        }
        let Ok(publish) = PublishDatagram::decode(&datagram) else {
            m::datagram_dropped("malformed");
            return None;
        };
        let room = match quiver_proto::RoomName::parse(publish.room) {
            Ok(room) if self.shared.config.latest(&room) => room,
            Ok(_) => {
                m::datagram_dropped("not_latest");
                return None;
            }
            Err(_) => {
                m::datagram_dropped(ErrorCode::InvalidRoom.label());
                return None;
            }
        };
        // The payload shares the datagram's buffer: no copy.
        let offset = datagram.len() - publish.payload.len();
        let payload = datagram.slice(offset..);
        let key = match self.may_publish(room.as_str(), &payload) {
            Ok(key) => key,
            Err(refusal) => {
                m::datagram_dropped(refusal.0.label());
                return None;
            }
        };
        if self.shared.rpc.hook(Hook::Publish, &key.room).is_some() {
            // Its hook is asked in the publish queue, not here: the next command does not wait.
            let publish = self.hooked_datagram(key.clone(), payload);
            match self.datagram_lane.submit_datagram(key, publish) {
                Taken::Queued => {}
                Taken::Superseded => m::datagram_dropped("superseded"),
                Taken::Busy => m::datagram_dropped("busy"),
            }
            return None;
        }
        match self.publish_checked(Reply::Datagram, key, payload).await {
            Ok(_) => None,
            Err(refusal) => {
                m::datagram_dropped(refusal.0.label());
                let over_quota = refusal.0 == ErrorCode::QuotaExceeded;
                (over_quota && self.meter.refused(Instant::now()) == Verdict::Abuse).then(|| {
                    Exit::Close(
                        CloseCode::RateAbuse,
                        "kept publishing over the tenant's quota".into(),
                    )
                })
            }
        }
    }
}
