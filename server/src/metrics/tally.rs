//! One session's traffic, for its closing log line: what the core handed its transport and
//! what the client sent. Relaxed atomics: the writers of its subscriptions add to it from their
//! own tasks, and only the total at the end matters.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct Tally {
    /// Bytes handed to the transport: replies, events and subscription frames.
    pub bytes_out: AtomicU64,
    /// Publications and room events handed to the client (replays included).
    pub messages_out: AtomicU64,
    /// Commands received.
    pub messages_in: AtomicU64,
}

impl Tally {
    pub fn sent(&self, bytes: usize, messages: u64) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn received(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// `(bytes_out, messages_out, messages_in)`.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.bytes_out.load(Ordering::Relaxed),
            self.messages_out.load(Ordering::Relaxed),
            self.messages_in.load(Ordering::Relaxed),
        )
    }
}
