//! Holding a run of publications' direct stream writes, so each subscriber's stream takes the
//! run in one write (issue 14: per-publication cost).
//!
//! A fan-out writes every publication into each subscriber's idle stream at once
//! (`subscription::Direct`). When one task hands the hub several publications in a row (a
//! publisher whose commands queued up, a NATS subscription with messages waiting), those
//! writes can wait for the last of the run: each stream is then locked, written and its
//! connection woken once per run instead of once per publication (nats-server does the same
//! per read buffer). Only the task that holds a run, and only between its own publications,
//! may hold writes; [`Held::flush`] ends the run and must come before that task waits on
//! anything (a backend, a client that does not read): frames another task offers meanwhile to
//! a stream that holds some are written after them, in the hub's order.
//!
//! The run is a thread-local set only while [`Held::during`] runs a synchronous closure, so a
//! task that moves between threads never leaves it behind; what was held stays with the
//! streams (their `Direct`) and in the caller's [`Held`] until it flushes.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use crate::subscription::Direct;

/// How many frames a run may hold in all before its publisher flushes it: the latency a run
/// adds is bounded by the fan-out work of this many deliveries.
pub const MAX_HELD_FRAMES: usize = 4096;

/// How many publications one run takes from a publisher's queued commands.
pub const MAX_RUN: usize = 16;

thread_local! {
    static HOLDING: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// The streams one task holds frames for.
#[derive(Default)]
pub struct Held {
    directs: Vec<Arc<Direct>>,
    frames: usize,
    /// When the run's oldest held publication entered the hub: the flush takes one latency
    /// sample from it, since the hub's pass sample is taken before held frames are written
    /// (outside audit 120, F3).
    oldest: Option<Instant>,
}

impl Held {
    /// Whether some stream holds frames of this run.
    pub fn is_empty(&self) -> bool {
        self.directs.is_empty()
    }

    /// Whether the run has held as many frames as it may: time to flush.
    pub fn is_full(&self) -> bool {
        self.frames >= MAX_HELD_FRAMES
    }

    /// Runs `f` with direct writes into idle streams held for this run. `f` is synchronous:
    /// nothing is held across an await.
    pub fn during<R>(&mut self, f: impl FnOnce() -> R) -> R {
        /// Puts the run back into the caller's hands however `f` ends (a panic included:
        /// the thread must not go on holding writes for nobody).
        struct Restore<'a>(&'a mut Held);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(held) = HOLDING.with(|h| h.borrow_mut().take()) {
                    *self.0 = held;
                }
            }
        }
        let run = std::mem::take(self);
        HOLDING.with(|h| *h.borrow_mut() = Some(run));
        let _restore = Restore(self);
        f()
    }

    /// Writes what every stream of the run holds, then records the run's latency (its oldest
    /// publication's, once per run: one sample per delivery was ~9 % of the CPU of a fan-out).
    pub fn flush(&mut self) {
        let mut written = 0;
        for direct in self.directs.drain(..) {
            written += direct.flush();
        }
        if written > 0 {
            crate::metrics::hot::delivery_bytes().increment(written);
        }
        self.frames = 0;
        if let Some(oldest) = self.oldest.take() {
            crate::metrics::hot::delivery_latency().record(oldest.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Called by a stream's `Direct` about to write a frame: `true` if this thread runs a run
/// with room left, and the frame should be held instead. `first` says the stream held nothing
/// yet (it joins the run, which will flush it); `entered`, when the publication entered the hub.
pub(crate) fn hold(direct: &Arc<Direct>, first: bool, entered: Instant) -> bool {
    HOLDING.with(|h| {
        let mut h = h.borrow_mut();
        let Some(run) = h.as_mut() else {
            return false;
        };
        if run.is_full() {
            return false;
        }
        if first {
            run.directs.push(direct.clone());
        }
        run.frames += 1;
        run.oldest.get_or_insert(entered);
        true
    })
}
