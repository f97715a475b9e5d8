//! A drain's end of a session (`Session::finish_for_drain`): what it has read is carried out
//! and answered before `Goodbye 3000`, within bounds a client cannot stretch.

use std::time::Duration;

use quiver_proto::CloseCode;

use super::{inbox, Exit, Session};

/// How long a drain lets a session take commands it has read before its goodbye
/// (`Session::finish_for_drain`); those taken are finished, and answered.
const DRAIN_FINISH: Duration = Duration::from_secs(1);
/// Between a `Call` being taken and its deadline starting (its task's start), at most: so a
/// call taken at the end of a drain's first second is still waited for to its deadline.
const CALL_START: Duration = Duration::from_millis(250);

impl Session {
    /// A drain's end of the session: before `Goodbye 3000`, the commands it has read run (those
    /// queued, and those that arrive meanwhile, for [`DRAIN_FINISH`]), and the publications on
    /// their way to the broker and the calls waiting for the backend are answered; none is cut
    /// off half-way (a publication cut off while being stored would be stored unanswered, a
    /// call cut off may have been carried out by the backend: both were, before). So
    /// a command left unanswered at the goodbye was not carried out (PROTOCOL §7), and a client
    /// sends it again. The goodbye used to come at once: a publisher's whole window went
    /// unanswered, and the one the broker was storing was stored all the same (outside cluster
    /// audit 5, F3: 121 of 150 unanswered, one of them stored).
    pub(super) async fn finish_for_drain(&mut self, inbox: &mut inbox::Inbox) -> Exit {
        let shutdown = || Exit::Close(CloseCode::Shutdown, "server shutting down".into());
        let take_until = tokio::time::Instant::now() + DRAIN_FINISH;
        // How long what is under way is waited for, from the last moment a command is taken: a
        // call ends by its own deadline (`rpc.max_timeout` at most) with an answer, so it is
        // always waited for (review 89, F9: the bound counted from the drain's start, and a
        // call taken in its first second was cut off and told 3000 though the backend had
        // carried it out). A publication ends by the broker's deadline, one after another,
        // which may add up to more: past this bound the session closes with the code alone,
        // which promises nothing of them (review 92, F3). The drain's own deadline
        // (`timeouts.drain`, 5 s by default) usually comes first. Only the waiting is bounded:
        // a command being carried out, or an answer being written, is never cut off here.
        // Datagram publications waiting for their publish hook are not waited for: a drain
        // polls only what answers a command (a datagram has no answer), so the lane would sit
        // unread to the end, its hook request unread at the backend (outside audit 117, F6).
        // Dropped now, counted as the session's end counts them.
        for _ in 0..self.datagram_lane.clear() {
            crate::metrics::datagram_dropped("session_ended");
        }
        // And datagram publications that come meanwhile are not taken either (the inbox drops
        // them: `Inbox::dropped_in_drain`).
        inbox.drain();
        let config = &self.shared.config;
        let give_up_at = take_until + config.rpc.max_timeout + CALL_START;
        // The drain's replies wait for room until then and `timeouts.reply` more at most,
        // together (review 92, F2: each waited `timeouts.reply` of its own, so many replies to a
        // client reading slowly held the session many times that).
        self.drain_until = Some(give_up_at + config.timeouts.reply);
        // Whether the adapter still hands over what the peer sends (it ends with the peer's).
        let mut open = true;
        loop {
            // A reply that found no room: the commands after it would be carried out
            // unanswered, and a `Goodbye 3000` says that what it leaves unanswered was not
            // (PROTOCOL §7), so their publications would be sent twice (outside audit 81, 1).
            if self.stalled {
                return self.not_reading();
            }
            let now = tokio::time::Instant::now();
            if now >= self.expiry() {
                return Exit::Close(CloseCode::TokenExpired, "token expired".into());
            }
            // A full publish queue takes no command until one is answered.
            let taking = open && now < take_until && !self.publishing.is_full();
            let mut item = if taking { inbox.try_recv() } else { None };
            if item.is_none() {
                if self.publishing.is_empty() && self.calls.is_empty() {
                    return shutdown();
                }
                // Waiting for what is under way, commands that arrive meanwhile are taken
                // too, for as long as the window lasts (outside calls audit, F1: those sent
                // while a call waited were never read, and went unanswered).
                tokio::select! {
                    done = self.publishing.next_done(), if !self.publishing.is_empty() => {
                        self.published(done).await;
                    }
                    Some(done) = self.calls.join_next(), if !self.calls.is_empty() => {
                        Box::pin(self.call_done(done)).await;
                    }
                    // Past the first second (not `taking`), Pings at the head of the queue
                    // are still answered (and metered at once), as beside any waiting command:
                    // a call may wait out `rpc.max_timeout` here, and a heartbeat unanswered
                    // for that long gave up on the session, its call reported lost instead of
                    // answered (outside audit 116, F7). Any other command stops the reading:
                    // never taken, it goes unanswered, not carried out (PROTOCOL §7).
                    next = async {
                        if taking {
                            Some(inbox.recv().await)
                        } else {
                            inbox.read_early().await;
                            None
                        }
                    }, if open => match next {
                        Some(Some(next)) => item = Some(next),
                        Some(None) => open = false,
                        None => {
                            if let Some(exit) = self.metre_taken_early(inbox) {
                                return exit;
                            }
                        }
                    },
                    () = tokio::time::sleep_until(take_until), if taking => {}
                    () = tokio::time::sleep_until(give_up_at) => {
                        return Exit::Cut(
                            CloseCode::Shutdown,
                            "server shutting down: what was under way was not waited for".into(),
                        );
                    }
                }
            }
            if let Some(item) = item {
                let exit = Box::pin(self.inbound_beside_pings(inbox, Some(item))).await;
                self.held.flush();
                if let Some(exit) = exit {
                    return exit;
                }
            }
        }
    }
}
