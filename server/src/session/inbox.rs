//! The session's incoming queue, and the one exception to "one command after another": a `Ping`
//! that arrives while a command waits (on the broker, a hook's backend, a client that does not
//! read) is answered at once, beside it (PROTOCOL.md §5 "Ping"). A heartbeat that judges by the
//! `Pong` alone (the TypeScript client in a browser sees nothing else) would otherwise take a
//! session paging history through a NATS stall for a dead one, and reconnect for nothing.
//!
//! Only Pings at the head of the queue are answered early (WebSocket pings and pongs between
//! them are taken too: they need no answer): the first other item read while the command waits
//! is kept, reading stops, and it runs next, so commands keep their order. What was taken early
//! is metered once the command is done (`Session::metre_early`).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_proto::{encode_event, Command, Event, ServerFrame};

use super::meter::Verdict;
use super::{Exit, Session};
use crate::metrics as m;
use crate::transport::{queue, Inbound};
use quiver_proto::CloseCode;

/// Pings (and WebSocket pings or pongs) taken beside one waiting command, at most. A heartbeat
/// sends one every second or two and a command waits a few seconds at most; past this the
/// queue is read no further until the command is done, as for any other command, so a Ping
/// flood is not answered unmetered.
pub(super) const EARLY_PONGS: usize = 4;

pub(super) struct Inbox {
    rx: queue::Receiver<Inbound>,
    /// An item read while a command waited that was not an answerable Ping: it comes next.
    next: Option<Inbound>,
    /// The queue ended while a command waited: nothing more to read early.
    finished: bool,
    /// Where early Pongs go: the session's own sender is borrowed by the waiting command.
    out: queue::Sender<Bytes>,
    /// What was taken early and is not yet metered.
    answered: Vec<Early>,
    /// The newest datagram publication read while a command waited (its bytes and arrival):
    /// it runs after it.
    datagram: Option<Box<(Bytes, Instant)>>,
    /// Datagram publications read early and dropped (`superseded` by a newer one), not yet
    /// metered: how many, and when the last arrived. A count, not a
    /// list: they are read for as long as the wait lasts.
    datagrams: (u32, Option<Instant>),
    /// The session drains: a datagram publication read is dropped, not kept to run (one place
    /// for the rule: [`Inbox::dropped_in_drain`]).
    draining: bool,
}

/// What was taken from the queue while a command waited, to be metered once it is done.
pub(super) enum Early {
    /// A `Ping`, answered.
    Pong {
        arrived: Instant,
        /// The `Pong` frame's length, for the session's tally.
        bytes: usize,
        /// From its arrival to its `Pong` being queued.
        took: Duration,
    },
    /// A WebSocket ping or pong from the client: nothing to answer (the WebSocket layer
    /// pongs), only metered. Taken so that a `Ping` command behind it is still answered.
    Control(Instant),
}

impl Inbox {
    pub(super) fn new(rx: queue::Receiver<Inbound>, out: queue::Sender<Bytes>) -> Self {
        Self {
            rx,
            next: None,
            finished: false,
            out,
            answered: Vec::new(),
            datagram: None,
            datagrams: (0, None),
            draining: false,
        }
    }

    /// The next item: the one kept during a wait first. `None` once the adapter is gone.
    pub(super) async fn recv(&mut self) -> Option<Inbound> {
        if let Some(item) = self.held() {
            return Some(item);
        }
        loop {
            let item = self.rx.recv().await;
            if !self.dropped_in_drain(&item) {
                return item;
            }
        }
    }

    /// The next item if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Inbound> {
        if let Some(item) = self.held() {
            return Some(item);
        }
        loop {
            let item = self.rx.try_recv().ok();
            if !self.dropped_in_drain(&item) {
                return item;
            }
        }
    }

    /// What was read while a command waited and runs next: the item that stopped the reading,
    /// then the newest datagram publication.
    fn held(&mut self) -> Option<Inbound> {
        self.next
            .take()
            .or_else(|| self.datagram.take().map(Inbound::Datagram))
    }

    /// The session drains: datagram publications read from now on are dropped
    /// (`session_ended`), and so is one kept to run.
    pub(super) fn drain(&mut self) {
        self.draining = true;
        if self.datagram.take().is_some() {
            m::datagram_dropped("session_ended");
        }
    }

    /// Whether `item` is a datagram publication read in a drain, dropped (`session_ended`): a
    /// drain takes none, whether read early or in turn. Taken, it would go into the session's
    /// datagram lane, which the drain cleared as it began and no longer runs (review 118, F3).
    fn dropped_in_drain(&mut self, item: &Option<Inbound>) -> bool {
        let dropped = self.draining && matches!(item, Some(Inbound::Datagram(_)));
        if dropped {
            m::datagram_dropped("session_ended");
        }
        dropped
    }

    /// A datagram publication read early and dropped, replaced by a newer one; metered later
    /// (towards the rate, as any datagram).
    fn superseded(&mut self, arrived: Instant) {
        m::datagram_dropped("superseded");
        self.datagrams.0 = self.datagrams.0.saturating_add(1);
        self.datagrams.1 = Some(arrived);
    }

    /// Runs `work` (one item's handling) to its end, answering the Pings that reach the head of
    /// the queue while it waits. Work that finishes without waiting
    /// is polled once and returned, the queue untouched.
    ///
    /// `work` comes pinned by the caller: taken by value, the future would be stored twice in
    /// this one's state (once as the argument, once pinned), and this future is allocated for
    /// every command.
    pub(super) async fn beside<T>(&mut self, mut work: Pin<&mut impl Future<Output = T>>) -> T {
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                item = self.rx.recv(), if self.reads_early() => self.take_early(item),
            }
        }
    }

    /// The next item to run (`Some`), or, while the session reads no command because its
    /// publish queue is `full`, `None` once an item was taken early ([`Inbox::read_early`]).
    pub(super) async fn next(&mut self, full: bool) -> Option<Option<Inbound>> {
        if full {
            self.read_early().await;
            None
        } else {
            Some(self.recv().await)
        }
    }

    /// While the session reads no command because its publish queue is full (stored
    /// publications waiting on the broker): takes one item as [`Inbox::beside`] does, so a
    /// heartbeat's Ping is answered through a broker stall here too (outside conformance audit
    /// 3, C3-1). Pending for good once nothing more may be read early; what was taken is
    /// metered when the queue drains.
    pub(super) async fn read_early(&mut self) {
        if !self.reads_early() {
            return std::future::pending().await;
        }
        let item = self.rx.recv().await;
        self.take_early(item);
    }

    /// An item read while the session waits: a Ping answered, a WebSocket control frame taken,
    /// anything else held to run next (and reading stops).
    fn take_early(&mut self, item: Option<Inbound>) {
        if self.dropped_in_drain(&item) {
            return;
        }
        match item {
            Some(Inbound::Frame(frame, arrived)) if matches!(frame.command, Command::Ping) => {
                let pong = encode_event(&ServerFrame {
                    id: frame.id,
                    event: Event::Pong,
                });
                let bytes = pong.len();
                match self.out.try_send(pong) {
                    Ok(()) => self.answered.push(Early::Pong {
                        arrived,
                        bytes,
                        took: arrived.elapsed(),
                    }),
                    // No room: the client is not reading. The Ping waits its turn like any
                    // command (and the session's reply timeout judges).
                    Err(_) => self.next = Some(Inbound::Frame(frame, arrived)),
                }
            }
            Some(Inbound::Control(arrived)) => self.answered.push(Early::Control(arrived)),
            // A datagram publication is no command, so it stops nothing: the newest is kept to
            // run after the waiting command (an older one it replaces is dropped as
            // `superseded`: a `latest` room wants its newest value, and a publisher's last one
            // is not lost; review 118, F4), metered then. Held like a command, it stopped the
            // reading, and a client publishing positions by datagram lost its heartbeat
            // whenever a command waited (outside audit 117, F3), then had its stale values
            // published in a row.
            Some(Inbound::Datagram(datagram)) => {
                if let Some(older) = self.datagram.replace(datagram) {
                    self.superseded(older.1);
                }
            }
            Some(other) => self.next = Some(other),
            None => self.finished = true,
        }
    }

    fn reads_early(&self) -> bool {
        self.next.is_none() && !self.finished && self.answered.len() < EARLY_PONGS
    }

    /// What was taken early since the last call, for metering.
    pub(super) fn take_answered(&mut self) -> Vec<Early> {
        std::mem::take(&mut self.answered)
    }
}

impl Drop for Inbox {
    /// A datagram publication kept to run when the session ended never ran: counted.
    fn drop(&mut self) {
        if self.datagram.is_some() {
            m::datagram_dropped("session_ended");
        }
    }
}

impl Session {
    /// One item from the adapter, with the Pings that arrive while it waits answered beside it
    /// (`inbox.rs`) and metered after it; `Some` ends the session.
    pub(super) async fn inbound_beside_pings(
        &mut self,
        inbox: &mut Inbox,
        item: Option<Inbound>,
    ) -> Option<Exit> {
        let exit = {
            let work = std::pin::pin!(self.inbound(item));
            inbox.beside(work).await
        };
        if let Some(exit) = self.metre_taken_early(inbox) {
            return Some(exit);
        }
        exit
    }

    /// Meters what the inbox took early since the last time; `Some` ends the session.
    pub(super) fn metre_taken_early(&mut self, inbox: &mut Inbox) -> Option<Exit> {
        for early in inbox.take_answered() {
            if let Some(exit) = self.metre_early(early) {
                return Some(exit);
            }
        }
        // The datagrams dropped meanwhile count towards the rate as any datagram does (a
        // flood of them still ends in `rate_abuse`).
        if let (n, Some(arrived)) = std::mem::take(&mut inbox.datagrams) {
            for _ in 0..n {
                if self.meter.take(arrived) == Verdict::Abuse {
                    return Some(Exit::Close(
                        CloseCode::RateAbuse,
                        "datagram rate limit exceeded repeatedly".into(),
                    ));
                }
            }
        }
        None
    }

    /// Meters a `Ping` answered, or a WebSocket control frame taken, while an earlier command
    /// waited, as `command` and `control_frame` would have (a `Pong` is out already: over the
    /// rate it counts towards `rate_abuse` only).
    fn metre_early(&mut self, early: Early) -> Option<Exit> {
        let arrived = match early {
            Early::Pong {
                arrived,
                bytes,
                took,
            } => {
                m::hot::commands().increment(1);
                self.tally.received();
                self.tally.sent(bytes, 0);
                m::hot::command_duration(&Command::Ping).record(took.as_secs_f64());
                arrived
            }
            Early::Control(arrived) => return self.control_frame(arrived),
        };
        match self.meter.take(arrived) {
            Verdict::Allowed | Verdict::Limited => None,
            Verdict::Abuse => Some(Exit::Close(
                CloseCode::RateAbuse,
                "command rate limit exceeded repeatedly".into(),
            )),
        }
    }
}
