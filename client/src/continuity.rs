//! What a server claims about a subscription's positions, checked against its stream
//! (PROTOCOL.md §5; outside audit F6: both clients believed a `Recovered { replayed: 1000 }`
//! followed by 2 publications, and delivered positions going backwards, making them the resume
//! point). A publication that does not move forward is dropped; a replay the stream
//! contradicts is reported to the application as a failed recovery, so an application that
//! re-syncs on failed recovery re-syncs here too. Comparisons only: no counting of offsets,
//! which need not be contiguous.

use quiver_proto::Position;

/// What one server subscription's publications must look like (PROTOCOL.md §5): positions
/// strictly increase, in the epoch of `Subscribed.position`; a resume answered `Recovered {
/// replayed }` replays exactly `replayed` publications in (resume point, `Subscribed.position`]
/// before the live ones, which are after `Subscribed.position`. Only compared, never counted
/// (offsets need not be contiguous).
#[derive(Debug, Default)]
pub(crate) struct Continuity {
    /// `Subscribed.position`: replayed publications are at most this, live ones after it.
    pub(crate) head: Option<Position>,
    /// Replayed publications still to come (`Recovered`); `None` when the stream is no replay,
    /// or its recovery was already reported broken.
    pub(crate) replay_left: Option<u32>,
}

/// What to do with one publication.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Give it to the application (and make it the resume point).
    pub(crate) deliver: bool,
    /// The stream contradicts the server's `Recovered`: report a failed recovery first.
    pub(crate) broken: bool,
}

impl Continuity {
    /// Judges a publication at `position`, `last` being the last position delivered.
    pub(crate) fn judge(&mut self, last: Option<Position>, position: Option<Position>) -> Verdict {
        // Rooms without history: nothing to compare.
        let Some(p) = position else {
            return Verdict {
                deliver: true,
                broken: false,
            };
        };
        let epoch = self.head.or(last).map(|h| h.epoch);
        let forward = epoch.is_none_or(|e| e == p.epoch)
            && last.is_none_or(|l| l.epoch != p.epoch || p.offset > l.offset);
        let Some(left) = self.replay_left else {
            return Verdict {
                deliver: forward,
                broken: false,
            };
        };
        // Inside an announced replay: the replayed publications are in (resume point, head],
        // `left` more of them before the first live one (after head).
        let replayed = forward && self.head.is_some_and(|h| p.offset <= h.offset);
        // Once the replay is over (or found broken, reported once) only the forward rule is left.
        self.replay_left = (replayed && left > 0).then(|| left - 1);
        Verdict {
            deliver: forward,
            // Backwards inside the replay, one replayed more than announced, or a live one
            // before every announced replayed one came.
            broken: if replayed {
                left == 0
            } else {
                !forward || left > 0
            },
        }
    }
}

/// Whether a `Recovered { replayed }` answering a resume from `from` with `Subscribed.position`
/// `head` can be true: the replay lies in (`from`, `head`], in one epoch, and holds at most as
/// many publications as there are offsets there.
pub(crate) fn recovery_possible(
    from: Option<Position>,
    head: Option<Position>,
    replayed: u32,
) -> bool {
    match (from, head) {
        (Some(from), Some(head)) => {
            from.epoch == head.epoch
                && head.offset >= from.offset
                && u64::from(replayed) <= head.offset - from.offset
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, offset: u64) -> Option<Position> {
        Some(Position { epoch, offset })
    }

    /// Judges publications at `positions` (epoch, offset) in turn from `last`, the delivered
    /// ones becoming `last`; (delivered, broken) for each.
    fn run(
        mut c: Continuity,
        mut last: Option<Position>,
        positions: &[(u64, u64)],
    ) -> Vec<(bool, bool)> {
        positions
            .iter()
            .map(|&(epoch, offset)| {
                let v = c.judge(last, at(epoch, offset));
                if v.deliver {
                    last = at(epoch, offset);
                }
                (v.deliver, v.broken)
            })
            .collect()
    }

    const OK: (bool, bool) = (true, false);
    const DROP: (bool, bool) = (false, false);

    #[test]
    fn a_replay_as_announced_then_live_is_delivered() {
        let c = Continuity {
            head: at(1, 20),
            replay_left: Some(2),
        };
        assert_eq!(
            run(c, at(1, 11), &[(1, 12), (1, 20), (1, 21), (1, 30)]),
            [OK; 4]
        );
    }

    #[test]
    fn a_replay_the_stream_contradicts_is_broken_once() {
        let replay = |left| Continuity {
            head: at(1, 20),
            replay_left: Some(left),
        };
        // Short: a live one before the third replayed one.
        assert_eq!(
            run(replay(3), at(1, 11), &[(1, 12), (1, 21), (1, 22)]),
            [OK, (true, true), OK]
        );
        // Long: a replayed one more than announced.
        assert_eq!(
            run(replay(1), at(1, 11), &[(1, 12), (1, 13), (1, 21)]),
            [OK, (true, true), OK]
        );
        // A "replayed" one at or before the resume point, or of another epoch.
        assert_eq!(
            run(replay(1), at(1, 11), &[(1, 11), (1, 12)]),
            [(false, true), OK]
        );
        assert_eq!(
            run(replay(1), at(1, 11), &[(2, 12), (1, 12)]),
            [(false, true), OK]
        );
    }

    #[test]
    fn positions_that_do_not_move_forward_are_dropped() {
        let c = Continuity {
            head: at(1, 10),
            replay_left: None,
        };
        let got = run(
            c,
            at(1, 10),
            &[(1, 11), (1, 13), (1, 12), (1, 13), (2, 99), (1, 9), (1, 14)],
        );
        assert_eq!(got, [OK, OK, DROP, DROP, DROP, DROP, OK]);
        // A failed resume continues from `Subscribed.position`, in its (new) epoch.
        let c = Continuity {
            head: at(5, 3),
            replay_left: None,
        };
        assert_eq!(run(c, at(5, 3), &[(5, 4), (1, 12)]), [OK, DROP]);
        // No position at all (rooms without history): nothing to compare.
        assert_eq!(
            Continuity::default().judge(at(1, 4), None),
            Verdict {
                deliver: true,
                broken: false
            }
        );
    }

    #[test]
    fn a_recovered_that_cannot_be_true() {
        assert!(recovery_possible(at(1, 11), at(1, 20), 9));
        assert!(recovery_possible(at(1, 20), at(1, 20), 0));
        assert!(!recovery_possible(at(1, 11), at(1, 20), 10));
        assert!(!recovery_possible(at(1, 11), at(2, 20), 1));
        assert!(!recovery_possible(at(1, 21), at(1, 20), 0));
        assert!(!recovery_possible(None, at(1, 20), 0));
        assert!(!recovery_possible(at(1, 11), None, 0));
    }
}
