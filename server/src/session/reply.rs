//! How a command is answered: a [`Refusal`] and how it reaches the client, a reply queued
//! (waiting at most `timeouts.reply` for room, `send_or_stall`), and the `not_reading` close.
//! Apart from `mod.rs`, which dispatches the commands, as the one way out for their answers.

use quiver_proto::{encode_event, CloseCode, ErrorCode, Event, ServerFrame};
use tracing::debug;

use super::{log_peer_fault, Exit, Session, GOODBYE_GRACE};
use crate::metrics as m;
use crate::transport::queue;

/// A command refused with an error reply, or cut off by the session's close.
#[derive(Debug)]
pub(super) struct Refusal(pub(super) ErrorCode, pub(super) String, pub(super) Answer);

/// How a [`Refusal`] reaches the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// An `Error` reply.
    Error,
    /// An `Error` reply to a refusal that may not hold later (a hook that could not be
    /// decided), whatever its code: for an SSE session, a room refused for now.
    ErrorForNow,
    /// None: the session is closing, and its `Goodbye` is the command's answer (PROTOCOL §3).
    Goodbye,
}

impl Refusal {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(code, message.into(), Answer::Error)
    }

    /// [`Refusal::new`], for a refusal that may not hold later ([`Answer::ErrorForNow`]).
    pub(super) fn for_now(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(code, message.into(), Answer::ErrorForNow)
    }

    /// A command the session's close overtook while it waited (a hook): not answered.
    pub(super) fn overtaken(message: impl Into<String>) -> Self {
        Self(ErrorCode::PermissionDenied, message.into(), Answer::Goodbye)
    }
}

impl Session {
    pub(super) async fn reply(&mut self, id: u32, event: Event) {
        if self.stalled {
            return;
        }
        let frame = encode_event(&ServerFrame { id, event });
        self.tally.sent(frame.len(), 0);
        self.send_or_stall(frame).await;
    }

    /// Queues a frame the session itself sends (a reply, a subscription stream's header) on
    /// its outgoing queue, waiting at most `timeouts.reply` for room: past that the session is
    /// `stalled`, and closes `not_reading`. While it waits nothing else of the session runs
    /// (expiry, kicks, the drain), so no wait is unbounded (outside audit 66, F5: a header
    /// waited without one).
    pub(super) async fn send_or_stall(&mut self, frame: bytes::Bytes) {
        if self.stalled {
            return;
        }
        let frame = match self.out.try_send(frame) {
            Ok(()) => return,
            Err(queue::TrySendError::Full(frame)) => frame,
            Err(queue::TrySendError::Closed(_)) => return,
        };
        // About to wait on the client: nothing of a run waits with it.
        self.held.flush();
        let deadline = tokio::time::Instant::now() + self.shared.config.timeouts.reply;
        let deadline = self
            .drain_until
            .map_or(deadline, |until| deadline.min(until));
        let send = self.out.send(frame);
        tokio::pin!(send);
        let queued = tokio::select! {
            biased;
            sent = tokio::time::timeout_at(deadline, send.as_mut()) => sent.is_ok(),
            // A drain waits for no client that does not read: from the drain's start (or from
            // now, during the drain), a reply waits while the client takes something of its
            // queue (or writes part of a large frame) at least once per goodbye grace (1 s), up
            // to `timeouts.reply` as always.
            // It held a drain for `timeouts.reply` whether the client read or not, with the
            // drain's deadline raised (outside audit 80, 1: 11 s, where README promises a
            // client that does not read a few seconds); a client that reads slowly is still
            // answered (outside audit 81, 1).
            () = self.shared.shutdown.cancelled() => self
                .out
                .watch()
                .while_moving(send.as_mut(), GOODBYE_GRACE, deadline)
                .await
                .is_some(),
        };
        if !queued {
            self.stalled = true;
        }
    }

    /// The close of a session whose replies could not be queued (`stalled`).
    pub(super) fn not_reading(&self) -> Exit {
        log_peer_fault(
            &self.id,
            &self.grant.tenant,
            "replies not read",
            "client does not read its replies",
        );
        Exit::Close(CloseCode::NotReading, "replies not read".into())
    }

    pub(super) async fn refuse(&mut self, id: u32, Refusal(code, message, answer): Refusal) {
        if answer == Answer::Goodbye {
            debug!(session = %self.id, %message, "command overtaken by the session's close");
            self.command_overtaken();
            return;
        }
        metrics::counter!(m::COMMANDS_REFUSED, "code" => code.label()).increment(1);
        debug!(session = %self.id, %code, %message, "command refused");
        self.command_refused(code, answer == Answer::ErrorForNow);
        self.reply(
            id,
            Event::Error {
                code: code.as_u16(),
                message,
            },
        )
        .await;
    }
}
