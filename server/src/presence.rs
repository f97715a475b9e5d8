//! The `Presence` reply, kept within the session's frame limit.
//!
//! A room can hold more members than one frame can list (250 members with 256-byte user ids
//! already pass 65,536 bytes), and a frame over `max_frame` is a protocol error for the client.
//! So the reply lists members in their (sorted) order while they fit, and says `truncated` when
//! it had to stop (PROTOCOL.md §5).

use quiver_proto::{Event, RoomName};

use crate::broker::RoomPresence;

/// The room's namespace does not track presence (a `bad_request`).
#[derive(Debug, thiserror::Error)]
#[error("namespace {0} does not track presence")]
pub struct NotTracked(String);

/// Whether the room's namespace tracks presence.
pub fn tracked(config: &crate::config::Config, room: &RoomName) -> Result<(), NotTracked> {
    if config.presence(room) {
        Ok(())
    } else {
        Err(NotTracked(room.namespace().to_owned()))
    }
}

/// Bytes of a postcard varint holding `n`.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.max(1).leading_zeros();
    (bits as usize).div_ceil(7)
}

fn string_len(s: &str) -> usize {
    varint_len(s.len()) + s.len()
}

/// The envelope of a `Presence` reply around its members: the largest u32 id (5 bytes) and the
/// variant index (1 byte), then the room, the member count (at most a u32 varint) and the
/// trailing `truncated` flag.
fn envelope_len(room: &str) -> usize {
    5 + 1 + string_len(room) + 5 + 1
}

/// The fewest bytes a member can take in a `Presence` reply: an empty user id, and a session
/// id, always 16 hexadecimal digits (`session::session_id`).
const MIN_MEMBER_LEN: usize = 1 + 1 + 16;

/// How many members a `Presence` reply for `room` could list at most in a frame body of
/// `max_frame` bytes: what [`bounded_event`] needs read (and the memory broker copies under
/// its lock), however many the room holds. Never fewer than fit, so the reply is the one the
/// whole list would make.
pub fn most_that_fit(room: &str, max_frame: usize) -> usize {
    max_frame.saturating_sub(envelope_len(room)) / MIN_MEMBER_LEN
}

/// `Event::Presence` for `room` with as many of `present`'s members (in order) as fit in a
/// frame body of at most `max_frame` bytes, whatever the reply's id; `truncated` when some
/// were left out, here or before (`present` lists fewer than its sessions).
pub fn bounded_event(room: String, present: RoomPresence, max_frame: usize) -> Event {
    let mut members = present.members;
    let mut size = envelope_len(&room);
    let fitting = members
        .iter()
        .take_while(|m| {
            size += string_len(&m.user) + string_len(&m.session);
            size <= max_frame
        })
        .count();
    let truncated = fitting < present.sessions;
    members.truncate(fitting);
    if truncated {
        metrics::counter!(crate::metrics::PRESENCE_TRUNCATED).increment(1);
    }
    Event::Presence {
        room,
        members,
        truncated,
    }
}

/// A count as the protocol and the API carry it.
pub fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `Event::PresenceStats` for `room`: its sessions and distinct users.
pub fn stats_event(room: String, present: &RoomPresence) -> Event {
    Event::PresenceStats {
        room,
        sessions: count(present.sessions),
        users: count(present.users),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_proto::{encode_event, Member, ServerFrame, LENGTH_PREFIX};

    /// Every member of a room, as a broker that lists them all answers.
    fn whole(members: Vec<Member>) -> RoomPresence {
        RoomPresence::of(members, usize::MAX)
    }

    fn members(n: usize, user_len: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                user: format!("{i:0>user_len$}"),
                session: format!("{:x}", u64::MAX - i as u64),
            })
            .collect()
    }

    fn body_len(event: Event) -> usize {
        encode_event(&ServerFrame {
            id: u32::MAX,
            event,
        })
        .len()
            - LENGTH_PREFIX
    }

    #[test]
    fn varints() {
        assert_eq!(
            [0, 127, 128, 16_383, 16_384, u32::MAX as usize].map(varint_len),
            [1, 1, 2, 2, 3, 5]
        );
    }

    #[test]
    fn the_issue_case_fits_and_says_truncated() {
        // 250 members with 256-byte ids made a 68,759-byte frame against 65,536.
        let all = members(250, 256);
        let untouched = Event::Presence {
            room: "p.room".into(),
            members: all.clone(),
            truncated: false,
        };
        assert!(body_len(untouched) > 65_536);
        let event = bounded_event("p.room".into(), whole(all.clone()), 65_536);
        let Event::Presence {
            members: kept,
            truncated,
            ..
        } = &event
        else {
            unreachable!()
        };
        assert!(*truncated);
        assert!(kept.len() > 200, "kept only {}", kept.len());
        assert_eq!(kept[..], all[..kept.len()], "the first members, in order");
        assert!(body_len(event) <= 65_536);
    }

    #[test]
    fn never_over_the_limit_and_never_needlessly_short() {
        for max_frame in [300, 1_000, 4_096, 65_536] {
            for (n, user_len) in [(0, 1), (1, 1), (10, 1), (100, 40), (3_000, 5), (40, 256)] {
                let all = members(n, user_len);
                let event = bounded_event("p.r".into(), whole(all.clone()), max_frame);
                // What the session core asks the broker for: the same reply.
                let cut = RoomPresence::of(all.clone(), most_that_fit("p.r", max_frame));
                assert_eq!(
                    bounded_event("p.r".into(), cut, max_frame),
                    event,
                    "{max_frame} {n} {user_len}"
                );
                let Event::Presence {
                    members: kept,
                    truncated,
                    ..
                } = event.clone()
                else {
                    unreachable!()
                };
                assert!(body_len(event) <= max_frame, "{max_frame} {n} {user_len}");
                assert_eq!(truncated, kept.len() < n);
                if truncated {
                    // One more member would not have fitted.
                    let more = Event::Presence {
                        room: "p.r".into(),
                        members: all[..=kept.len()].to_vec(),
                        truncated: true,
                    };
                    assert!(
                        body_len(more) > max_frame - 10,
                        "{max_frame} {n} {user_len}"
                    );
                }
            }
        }
    }

    /// A broker's read cut to [`most_that_fit`] makes the reply the whole list makes, even with
    /// members as small as they come (empty user ids), and one that lists fewer than its
    /// sessions says `truncated` even when what it lists fits.
    #[test]
    fn a_read_cut_to_what_could_fit_answers_the_same() {
        let smallest: Vec<Member> = (0..5_000u64)
            .map(|i| Member {
                user: String::new(),
                session: format!("{i:016x}"),
            })
            .collect();
        for max_frame in [300, 4_096, 65_536] {
            let most = most_that_fit("p.r", max_frame);
            let event = bounded_event("p.r".into(), whole(smallest.clone()), max_frame);
            let Event::Presence { members, .. } = &event else {
                unreachable!()
            };
            assert!(
                members.len() <= most,
                "{max_frame}: {} > {most}",
                members.len()
            );
            let cut = RoomPresence::of(smallest.clone(), most);
            assert_eq!(bounded_event("p.r".into(), cut, max_frame), event);
        }
        let cut = RoomPresence::of(members(3, 1), 2);
        let Event::Presence {
            members, truncated, ..
        } = bounded_event("p.r".into(), cut, 65_536)
        else {
            unreachable!()
        };
        assert_eq!((members.len(), truncated), (2, true));
    }
}
