//! The client side of the `latest` lane (PROTOCOL.md §10): per subscription a [`LatestCell`]
//! that keeps only the newest value not yet read by the application, whether it came as a
//! datagram or as a `Latest` frame on the room's stream. A value whose sequence is not above the
//! newest one accepted is dropped, so a late datagram never overwrites a newer value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;

use crate::client::lock;

/// How a subscription's room delivers, as the server said in `Subscribed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Every publication, in order, on the room's stream.
    Reliable,
    /// Only the newest value matters: datagrams where they fit, older values dropped.
    Latest,
}

/// Where each `latest` subscription's values go, by the subscription id of the current
/// connection: the datagram reader looks values up here.
pub(crate) type LatestRoutes = Arc<Mutex<HashMap<u64, Arc<LatestCell>>>>;

/// The newest unread value of one subscription.
#[derive(Default)]
pub(crate) struct LatestCell {
    state: Mutex<CellState>,
    waker: AtomicWaker,
    /// Values accepted from datagrams and from the stream, since the subscription began.
    pub(crate) by_datagram: AtomicU64,
    pub(crate) by_stream: AtomicU64,
    /// Values dropped because a newer one had already been accepted.
    pub(crate) dropped_older: AtomicU64,
}

#[derive(Default)]
struct CellState {
    /// The server's subscription id on the current connection; `None`: reliable (or not yet
    /// confirmed).
    subscription: Option<u64>,
    /// Whether the room was ever `latest` (kept across reconnects, for [`DeliveryMode`]).
    latest: bool,
    /// Whether a subscription was ever confirmed, so that `latest` false means reliable.
    known: bool,
    /// The newest sequence accepted on the current subscription.
    newest: u64,
    pending: Option<Bytes>,
}

impl LatestCell {
    /// A new subscription on the server (first or after a reconnect): sequences restart.
    pub(crate) fn confirmed(&self, subscription: Option<u64>) {
        let mut s = lock(&self.state);
        s.subscription = subscription;
        s.latest |= subscription.is_some();
        s.known = true;
        s.newest = 0;
    }

    /// Whether the server confirmed the room delivers reliably (not `latest`).
    pub(crate) fn known_reliable(&self) -> bool {
        let s = lock(&self.state);
        s.known && !s.latest
    }

    pub(crate) fn subscription(&self) -> Option<u64> {
        lock(&self.state).subscription
    }

    pub(crate) fn mode(&self) -> DeliveryMode {
        if lock(&self.state).latest {
            DeliveryMode::Latest
        } else {
            DeliveryMode::Reliable
        }
    }

    /// Offers a value; `datagram` says how it came (a datagram names its subscription, which
    /// must still be the current one). Accepted only if newer than every value accepted before.
    pub(crate) fn offer(&self, datagram: Option<u64>, sequence: u64, payload: Bytes) -> bool {
        {
            let mut s = lock(&self.state);
            if datagram.is_some() && datagram != s.subscription {
                return false;
            }
            if sequence <= s.newest {
                self.dropped_older.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            s.newest = sequence;
            s.pending = Some(payload);
        }
        let counter = if datagram.is_some() {
            &self.by_datagram
        } else {
            &self.by_stream
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.waker.wake();
        true
    }

    /// The newest unread value, or registers the task to be woken by the next one.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Bytes> {
        if let Some(v) = lock(&self.state).pending.take() {
            return Poll::Ready(v);
        }
        self.waker.register(cx.waker());
        match lock(&self.state).pending.take() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

/// Routes one datagram from the server to its subscription's cell. Malformed ones and ones
/// for unknown subscriptions (not yet confirmed, or already gone) are dropped.
pub(crate) fn route(routes: &LatestRoutes, datagram: &[u8]) {
    let Ok(d) = quiver_proto::datagram::Latest::decode(datagram) else {
        tracing::debug!("malformed datagram dropped");
        return;
    };
    let cell = lock(routes).get(&d.subscription).cloned();
    if let Some(cell) = cell {
        cell.offer(
            Some(d.subscription),
            d.sequence,
            Bytes::copy_from_slice(d.payload),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_values_are_dropped_and_only_the_newest_waits() {
        let cell = LatestCell::default();
        cell.confirmed(Some(7));
        assert_eq!(cell.mode(), DeliveryMode::Latest);
        assert!(cell.offer(Some(7), 2, Bytes::from_static(b"two")));
        assert!(!cell.offer(Some(7), 1, Bytes::from_static(b"one")), "older");
        assert!(
            !cell.offer(Some(8), 9, Bytes::from_static(b"x")),
            "another subscription"
        );
        assert!(
            cell.offer(None, 3, Bytes::from_static(b"three")),
            "from the stream"
        );
        assert!(
            !cell.offer(Some(7), 3, Bytes::from_static(b"dup")),
            "duplicate"
        );
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert_eq!(
            cell.poll_take(&mut cx),
            Poll::Ready(Bytes::from_static(b"three"))
        );
        assert!(cell.poll_take(&mut cx).is_pending());
        // A resubscription restarts the sequence.
        cell.confirmed(Some(9));
        assert!(cell.offer(Some(9), 1, Bytes::from_static(b"again")));
        assert_eq!(cell.by_datagram.load(Ordering::Relaxed), 2);
        assert_eq!(cell.dropped_older.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn datagrams_find_their_subscription() {
        let routes = LatestRoutes::default();
        let cell = Arc::new(LatestCell::default());
        cell.confirmed(Some(300));
        lock(&routes).insert(300, cell.clone());
        let d = quiver_proto::datagram::Latest {
            subscription: 300,
            sequence: 5,
            payload: b"pos",
        }
        .encode();
        route(&routes, &d);
        route(&routes, &[0xff]);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert_eq!(
            cell.poll_take(&mut cx),
            Poll::Ready(Bytes::from_static(b"pos"))
        );
    }
}
