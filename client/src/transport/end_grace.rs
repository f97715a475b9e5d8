//! A subscription reader's grace once its subscription has ended ([`EndGrace`]).

use std::time::Duration;

use quiver_proto::ServerFrame;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::SubStream;
use crate::heartbeat::Liveness;
use crate::subscription::{QueueTx, SubEvent};

/// How long a subscription's reader may still wait on its stream once the subscription has
/// ended (a WebTransport room the server ended with `Unsubscribed`, or one the client ended).
/// Only the reader's own time counts: waiting for the network, reading, checking. The time it
/// waits for the application to make room in the queue does not, so a slow application still
/// gets everything the server sent and finished before the end (outside review 107, F1: the
/// whole reader was aborted `STREAM_END_GRACE` after the end, whatever it was doing, and the
/// frame it held and those still in the stream were lost before `Ended`). A server that ends a
/// room and keeps its stream open, writing or not, still has it end, and `Ended` come, once
/// the grace is spent (outside audit 103, F4).
pub(crate) struct EndGrace {
    /// Fires when the subscription ends; `None` once it has (or its sender went without
    /// firing: no grace then, the stream's own end ends the reader).
    ended: Option<oneshot::Receiver<()>>,
    grace: Duration,
    /// Set at the first wait on the stream after the end; moved later by the time spent
    /// waiting for the application since.
    deadline: Option<Instant>,
}

impl EndGrace {
    /// `ended` fires when the subscription ends; the reader then has `grace` of its own time.
    pub(crate) fn new(ended: oneshot::Receiver<()>, grace: Duration) -> Self {
        EndGrace {
            ended: Some(ended),
            grace,
            deadline: None,
        }
    }

    /// The stream's next frame; `None` when the stream ended, or the grace after the end did.
    pub(super) async fn next(
        &mut self,
        stream: &mut SubStream,
        liveness: &Liveness,
    ) -> Option<ServerFrame> {
        let next = stream.next(liveness);
        tokio::pin!(next);
        if self.deadline.is_none() {
            let Some(ended) = self.ended.as_mut() else {
                return next.await;
            };
            tokio::select! {
                biased;
                frame = &mut next => return frame,
                fired = ended => {
                    self.ended = None;
                    if fired.is_err() {
                        return next.await;
                    }
                    self.deadline = Some(Instant::now() + self.grace);
                }
            }
        }
        let deadline = self.deadline?;
        // Checked first: a stream whose frames are always there would never time out.
        if Instant::now() >= deadline {
            tracing::debug!("the subscription ended and its stream did not; no longer read");
            return None;
        }
        match tokio::time::timeout_at(deadline, next).await {
            Ok(frame) => frame,
            Err(_) => {
                tracing::debug!("the subscription ended and its stream did not; no longer read");
                None
            }
        }
    }

    /// Whether the reader has seen the subscription end (and is within or past its grace).
    pub(super) fn saw_the_end(&self) -> bool {
        self.deadline.is_some()
    }

    /// Hands `ev` to the application; the time it takes does not count against the grace.
    pub(super) async fn hand_off(&mut self, tx: &QueueTx, ev: SubEvent) -> bool {
        let start = Instant::now();
        let sent = tx.send(ev).await;
        if let Some(deadline) = self.deadline.as_mut() {
            *deadline += start.elapsed();
        }
        sent
    }
}
